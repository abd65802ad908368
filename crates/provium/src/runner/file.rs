//! Running one test file to completion: its watchdogs, its chunk, each test
//! in order in a scope of its own (skips, per-test time limits, the
//! `reset_between_tests` baseline), and the report, emitted as it goes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::discover::TestFile;
use super::dispatch::RunConfig;
use super::watchdog::Watchdog;
use crate::events::{Event, FileReport, MetaMap, MetaValue, Outcome, TestReport};
use crate::lab::VmContext;
use crate::lua::{FileContext, Interrupts, LuaFile};
use crate::pool::Account;
use crate::vm::badness::{self, Checks};
use crate::vm::KillSwitch;

/// How many console lines a failure report quotes per VM.
pub const CONSOLE_EXCERPT_LINES: usize = 20;

/// What `meta.console_checks` asks: `false` turns the checks off, a list
/// of strings allows the reports that contain one.
fn console_checks(meta: &MetaMap) -> Checks {
    match meta.get("console_checks") {
        Some(MetaValue::Bool(false)) => Checks::Off,
        Some(v @ MetaValue::Array(_)) => Checks::Allow(v.strings().into_iter().map(String::from).collect()),
        _ => Checks::On,
    }
}

/// A test's outcome after the console checks: failing reports fail a test
/// that passed, and are added to the message of one that failed.
fn console_checked(outcome: Outcome, failing: Vec<(String, badness::Finding)>) -> Outcome {
    if failing.is_empty() {
        return outcome;
    }
    let found = badness::message(&failing);
    match outcome {
        Outcome::Failed(m) => Outcome::Failed(format!("{m}\n{found}")),
        Outcome::Passed => Outcome::Failed(found),
        skipped @ Outcome::Skipped(_) => skipped,
    }
}

/// Runs `file` and reports how it went (also emitted as events); its VMs
/// reserve through `account`, whose waits its watchdogs do not count.
pub fn run_file(file: &TestFile, cfg: &RunConfig, account: &Account) -> FileReport {
    let started = Instant::now();
    let shown = file.shown.as_str();
    let events = cfg.events.for_file(shown);
    events.emit(Event::FileStarted { file: shown.to_string() });
    let mut report = FileReport::new(shown);
    let kills: Arc<Mutex<Vec<KillSwitch>>> = Arc::default();
    let file_limit = cfg.timeout.unwrap_or_default();
    let watchdog = Watchdog::start(
        cfg.timeout,
        kills.clone(),
        Arc::default(),
        format!("the file timeout ({file_limit:?})"),
        account.waits(),
    );
    let test_fired: Arc<AtomicBool> = Arc::default();
    let interrupts = Interrupts { file: watchdog.flag(), file_limit, test: test_fired.clone() };
    let ctx = FileContext {
        vms: VmContext {
            images: cfg.images.clone(),
            accel: cfg.accel,
            kill_switches: kills.clone(),
            events,
            net: crate::net::NetContext::new(cfg.seed),
            pool: account.clone(),
        },
        fixtures: cfg.fixtures.clone(),
    };
    let lua = match LuaFile::new(&file.path, shown, ctx, interrupts) {
        Ok(l) => l,
        Err(e) => {
            report.chunk_error = Some(e);
            return report;
        }
    };
    let finish = |mut report: FileReport, lua: &LuaFile| {
        lua.end();
        report.timed_out = watchdog.fired();
        report.duration = started.elapsed();
        report
    };

    if let Err(e) = lua.run_chunk() {
        report.chunk_error = Some(e);
        return finish(report, &lua);
    }
    let baseline = match lua.take_baseline() {
        Ok(b) => b,
        Err(e) => {
            report.chunk_error = Some(e);
            return finish(report, &lua);
        }
    };

    for mut test in lua.take_tests() {
        let t0 = Instant::now();
        if test.meta.skip.is_none() {
            test.meta.skip = cfg.selection.skip_reason(&test.meta.data);
        }
        let mut log = Vec::new();
        // A test skipped before it runs only finishes (as skipped).
        if test.meta.skip.is_none() {
            let meta = test.meta.data.clone();
            cfg.events.emit(Event::TestStarted { file: shown.to_string(), name: test.name.clone(), meta });
        }
        let outcome = if watchdog.fired() {
            Outcome::Failed(format!("not run: the file timeout ({file_limit:?}) was exceeded"))
        } else if let Some(reason) = &test.meta.skip {
            Outcome::Skipped(reason.clone())
        } else {
            // A bad meta.timeout fails its own test, before the body runs.
            let limit = match &test.meta.timeout {
                Ok(Some(d)) => Ok(Some(*d)),
                Ok(None) => Ok(lua.config().timeout),
                Err(why) => Err(why.clone()),
            };
            test_fired.store(false, Ordering::SeqCst);
            let test_dog = Watchdog::start(
                limit.clone().unwrap_or(None),
                kills.clone(),
                test_fired.clone(),
                format!("the timeout of test \"{}\"", test.name),
                account.waits(),
            );
            let mut outcome = match &limit {
                Err(why) => Outcome::Failed(format!("test `{}`: {why}", test.name)),
                Ok(_) => {
                    lua.mark_consoles();
                    let (o, l) = lua.run_test(&test);
                    log = l;
                    console_checked(o, console_checks(&test.meta.data).failing(lua.console_findings()))
                }
            };
            drop(test_dog);
            if let (true, Outcome::Failed(m)) = (test_fired.load(Ordering::SeqCst), &outcome) {
                outcome = Outcome::Failed(format!(
                    "test timeout exceeded ({:?}); every VM of the file was stopped; op error: {m}",
                    limit.clone().ok().flatten().unwrap_or_default()
                ));
            }
            if watchdog.fired() {
                if let Outcome::Failed(m) = &outcome {
                    outcome = Outcome::Failed(format!("file timeout ({file_limit:?}) exceeded; VMs were stopped\n{m}"));
                }
            }
            outcome
        };
        let console = match &outcome {
            Outcome::Failed(_) => lua.console_excerpts(CONSOLE_EXCERPT_LINES),
            _ => Vec::new(),
        };
        lua.end_test();
        // After the file's time is up, no test runs again: nothing to reset.
        if let (Some(b), false) = (&baseline, watchdog.fired()) {
            if let Err(e) = lua.restore_baseline(b) {
                cfg.events.for_file(shown).warn(format!(
                    "reset_between_tests restore failed: {}\n  Subsequent tests in this file may see leaked state.",
                    crate::errors::chain(&e)
                ));
            }
        }
        let t = TestReport {
            name: test.name.clone(),
            outcome,
            log,
            duration: t0.elapsed(),
            console,
            meta: test.meta.data.clone(),
        };
        cfg.events.emit(Event::TestFinished { file: shown.to_string(), test: t.clone() });
        report.tests.push(t);
    }
    finish(report, &lua)
}
