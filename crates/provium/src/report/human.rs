//! The terminal format: one line per file, failures with their messages and
//! console excerpts indented beneath, and a summary line. On an interactive
//! terminal, with the live bar of [`super::progress`], each file's line
//! starts with its position (`[2/5] PASS …`).
//!
//! ```text
//! PASS examples/basics.test.lua (3 passed, 0 failed, 0 skipped)
//! FAIL examples/broken.test.lua (1 passed, 1 failed, 0 skipped)
//!     FAIL reads a file
//!         examples/broken.test.lua:9: vm `v`: read_file: …
//!         ---- vm v (console, last lines) ----
//!         …
//! 2 file(s); 4 passed, 1 failed, 0 skipped; 12.34s
//! ```

use std::fmt::Write;

use super::progress::Progress;
use super::{Event, FileReport, Outcome, Reporter, RunSummary};
use crate::events::BlockReason;

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

fn indent(out: &mut String, text: &str, by: usize) {
    for line in text.lines() {
        let _ = writeln!(out, "{:by$}{line}", "");
    }
}

/// The human-readable line for an event that is not a result (fixture
/// builds, warnings, the run header), or `None`.
pub fn note(e: &Event) -> Option<String> {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    Some(match e {
        Event::RunStarted { files, jobs, accel, accel_reason, seed } => {
            format!("provium: {files} file(s), {jobs} at a time, accelerator {accel} ({accel_reason}), seed {seed}")
        }
        Event::FixtureBuilding { name, path, .. } => format!("provium: building fixture `{name}` ({})", path.display()),
        Event::FixtureWaiting { name, holder, .. } => {
            format!("provium: fixture `{name}` is being built by {holder}; waiting for it")
        }
        Event::FixtureBuilt { name, took, cache_bytes, .. } => format!(
            "provium: built fixture `{name}` in {:.1}s ({:.1} MiB in the cache)",
            took.as_secs_f64(),
            mib(*cache_bytes)
        ),
        Event::FixtureEvicted { key, reason, rebuilding, .. } => {
            let then = if *rebuilding { "evicting and rebuilding" } else { "evicted" };
            format!("provium: fixture cache entry `{key}` {reason}; {then}")
        }
        Event::FileBlocked { file, waiting_for, reason } => {
            let why = match reason {
                BlockReason::PoolFull => "not enough of the pool is free (see --mem, --cpus)",
                BlockReason::PsiPressure => "the host is under memory pressure (see --no-psi)",
            };
            format!(
                "provium: {file}: waiting for {:.0} MiB and {} vCPU(s): {why}",
                mib(waiting_for.memory_bytes),
                waiting_for.cpus
            )
        }
        Event::Warning { file: Some(file), message } => format!("provium: {file}: {message}"),
        Event::Warning { file: None, message } => format!("provium: {message}"),
        _ => return None,
    })
}

/// The terminal reporter: results on `out`, notes on `err`, the summary
/// at the end. With a live [`Progress`] bar, everything is written with the
/// bar cleared, and each file's result line starts with its position
/// `[i/N] ` (files stream as they finish, either way).
pub struct HumanReporter<O: std::io::Write, E: std::io::Write> {
    pub verbosity: Verbosity,
    out: O,
    err: E,
    progress: Option<Progress>,
    summary: RunSummary,
}

/// Writes `text` on `to`, with the bar (if any) cleared meanwhile.
fn write_on(progress: &Option<Progress>, to: &mut dyn std::io::Write, text: &str) {
    let mut write = || {
        let _ = to.write_all(text.as_bytes());
        let _ = to.flush();
    };
    match progress {
        Some(p) => p.suspend(write),
        None => write(),
    }
}

impl<O: std::io::Write, E: std::io::Write> HumanReporter<O, E> {
    pub fn new(verbosity: Verbosity, progress: Option<Progress>, out: O, err: E) -> Self {
        HumanReporter { verbosity, out, err, progress, summary: RunSummary::default() }
    }
}

impl<O: std::io::Write, E: std::io::Write> Reporter for HumanReporter<O, E> {
    fn event(&mut self, e: &Event) {
        self.summary.record(e);
        // The bar counts the event before its result is written (a file's
        // position), except the run's start: its header comes first.
        let header = matches!(e, Event::RunStarted { .. });
        if let (Some(p), false) = (&mut self.progress, header) {
            p.event(e);
        }
        match e {
            Event::FileFinished { report } => {
                let mut text = render_file(report, self.verbosity);
                if let (Some(p), false) = (&self.progress, text.is_empty()) {
                    text.insert_str(0, &p.tally().position());
                }
                write_on(&self.progress, &mut self.out, &text);
            }
            Event::RunFinished { .. } => {
                if let Some(p) = &self.progress {
                    p.finish();
                }
                write_on(&None, &mut self.out, &format!("\n{}", render_summary(&self.summary)));
            }
            Event::RunStarted { .. } if self.verbosity == Verbosity::Quiet => {}
            other => {
                if let Some(line) = note(other) {
                    // Before the run's start the bar is not up (suspending
                    // it would draw it).
                    let bar = if header { &None } else { &self.progress };
                    write_on(bar, &mut self.err, &format!("{line}\n"));
                }
            }
        }
        if let (Some(p), true) = (&mut self.progress, header) {
            p.event(e);
        }
    }
}

/// Renders one finished file.
pub fn render_file(f: &FileReport, v: Verbosity) -> String {
    let mut out = String::new();
    if f.passed() && v == Verbosity::Quiet {
        return out;
    }
    let c = f.counts();
    let tag = if f.timed_out {
        "TIME"
    } else if f.passed() {
        "PASS"
    } else {
        "FAIL"
    };
    if let Some(err) = &f.chunk_error {
        let _ = writeln!(out, "{tag} {}", f.path);
        let _ = writeln!(out, "  chunk_error:");
        indent(&mut out, err, 4);
        return out;
    }
    let _ = writeln!(out, "{tag} {} ({} passed, {} failed, {} skipped)", f.path, c.passed, c.failed, c.skipped);
    for t in &f.tests {
        match &t.outcome {
            Outcome::Failed(msg) => {
                let _ = writeln!(out, "    FAIL {}", t.name);
                indent(&mut out, msg, 8);
                for line in &t.log {
                    let _ = writeln!(out, "        log: {line}");
                }
                for (vm, tail) in &t.console {
                    let _ = writeln!(out, "        ---- vm {vm} (console, last lines) ----");
                    indent(&mut out, tail, 8);
                }
            }
            Outcome::Passed if v == Verbosity::Verbose => {
                let _ = writeln!(out, "    PASS {} ({:.2}s)", t.name, t.duration.as_secs_f64());
            }
            Outcome::Skipped(reason) if v == Verbosity::Verbose => {
                let _ = writeln!(out, "    SKIP {} ({reason})", t.name);
            }
            _ => {}
        }
    }
    out
}

/// The final line.
pub fn render_summary(s: &RunSummary) -> String {
    let errored = if s.errored_files > 0 { format!(", {} file(s) errored", s.errored_files) } else { String::new() };
    let mut out = format!(
        "{} file(s); {} passed, {} failed, {} skipped{errored}; {:.2}s\n",
        s.files,
        s.counts.passed,
        s.counts.failed,
        s.counts.skipped,
        s.duration.as_secs_f64()
    );
    if let (Some(seed), true) = (s.seed, s.failed_files > 0) {
        out.push_str(&format!("seed {seed}: `--seed {seed}` repeats this run's random choices (bridge loss)\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::TestReport;

    #[test]
    fn a_file_waiting_for_the_pool_says_for_what_and_why() {
        let waiting_for = crate::events::ResourceAmount { memory_bytes: 356 << 20, cpus: 1 };
        let e = Event::FileBlocked { file: "b.test.lua".into(), waiting_for, reason: BlockReason::PoolFull };
        assert_eq!(
            note(&e).unwrap(),
            "provium: b.test.lua: waiting for 356 MiB and 1 vCPU(s): not enough of the pool is free (see --mem, --cpus)"
        );
        let e = Event::FileBlocked { file: "b".into(), waiting_for, reason: BlockReason::PsiPressure };
        assert!(note(&e).unwrap().ends_with("under memory pressure (see --no-psi)"));
    }

    fn sample() -> FileReport {
        let t = |name: &str, outcome| TestReport {
            name: name.into(),
            outcome,
            log: vec![],
            duration: Duration::from_millis(1500),
            console: vec![],
            meta: Default::default(),
        };
        let mut f = FileReport::new("suite/a.test.lua");
        f.tests.push(t("boots", Outcome::Passed));
        let mut failed = t("reads", Outcome::Failed("suite/a.test.lua:9: assert_eq failed: \"a\" ~= \"b\"".into()));
        failed.console = vec![("v".into(), "Run /sbin/provium-agent as init process\nok".into())];
        failed.log = vec!["about to read".into()];
        f.tests.push(failed);
        f.tests.push(t("later", Outcome::Skipped("skipped (meta.skip)".into())));
        f
    }

    #[test]
    fn failing_file_normal() {
        insta::assert_snapshot!(render_file(&sample(), Verbosity::Normal));
    }

    #[test]
    fn failing_file_verbose() {
        insta::assert_snapshot!(render_file(&sample(), Verbosity::Verbose));
    }

    #[test]
    fn chunk_error_and_summary() {
        let mut f = FileReport::new("suite/bad.test.lua");
        f.chunk_error = Some("suite/bad.test.lua:3: unexpected symbol near 'end'".into());
        let mut s = RunSummary { duration: Duration::from_millis(12340), ..Default::default() };
        s.add(&sample());
        s.add(&f);
        insta::assert_snapshot!(format!("{}{}", render_file(&f, Verbosity::Quiet), render_summary(&s)));
    }

    #[test]
    fn with_a_live_bar_results_carry_their_position_and_never_meet_the_bar() {
        use crate::report::progress::tests::Screen;
        let screen = Screen::default();
        let bar = Progress::new(indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone())));
        let mut r = HumanReporter::new(Verbosity::Normal, Some(bar), screen.clone(), screen.clone());
        r.event(&Event::RunStarted { files: 2, jobs: 1, accel: "tcg".into(), accel_reason: "why".into(), seed: 7 });
        let mut pass = FileReport::new("suite/b.test.lua");
        pass.tests.push(sample().tests.remove(0));
        r.event(&Event::FileFinished { report: pass });
        r.event(&Event::FileFinished { report: sample() });
        r.event(&Event::RunFinished { duration: Duration::from_secs(1) });
        let text = screen.text();
        for line in ["[1/2] PASS suite/b.test.lua (1 passed", "[2/2] FAIL suite/a.test.lua (1 passed, 1 failed"] {
            let at = text.find(line).unwrap_or_else(|| panic!("{line:?} in {text:?}"));
            assert!(text[..at].ends_with('⌫'), "the bar is cleared before {line:?}: {text:?}");
        }
        assert!(text.find("0/2 files · booting").is_some_and(|at| at < text.find("[1/2]").unwrap()), "{text:?}");
        assert!(text.ends_with("⌫\n2 file(s); 2 passed, 1 failed, 1 skipped; 1.00s\nseed 7: `--seed 7` repeats this run's random choices (bridge loss)\n"), "{text:?}");
    }
}
