//! Running the selected test files: which files (filter, partition, rerun
//! state, `--since`), the run's reporters, one run to its exit code, and
//! `--watch`'s loop of runs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{choose_accel, open_fixtures, scan_paths, Cli, CliError};
use crate::cleanup;
use crate::config::Config;
use crate::events::{ChannelSink, Event, Events};
use crate::image::Images;
use crate::report::{exit_code, human, json, junit, progress, wire, Reporter, RunEnd, RunSummary};
use crate::runner::select::Selection;
use crate::runner::{self, rerun, RunConfig};

/// One invocation's settings, for one run or each `--watch` iteration.
pub(super) struct Run<'a> {
    pub cli: &'a Cli,
    pub config: &'a Config,
    pub timeout: Option<Duration>,
    pub selection: Selection,
    /// `--events-socket`: one listener for every iteration.
    pub socket: Option<Arc<Mutex<wire::SocketFanout>>>,
    /// The pool's size (`--mem`, `--cpus`, `--cpu-overcommit`).
    pub pool: crate::events::ResourceAmount,
}

impl Run<'_> {
    /// The files to run: discovery, then `--filter`, `--partition`,
    /// `--rerun-failed` (when `rerun_failed`), `--since`.
    fn files(&self, rerun_failed: bool) -> Result<Selected, CliError> {
        let cli = self.cli;
        let mut files = runner::discover(&scan_paths(&cli.paths, self.config))?;
        if let Some(f) = &cli.filter {
            files.retain(|t| t.shown.contains(f.as_str()));
        }
        if let Some(p) = &cli.partition {
            files = p.select(files);
        }
        if rerun_failed {
            let path = rerun::state_path();
            let state = rerun::read_state(&path);
            if state.is_empty() {
                return Ok(Selected::NoRerunState(path));
            }
            files = rerun::only_failed(files, &state);
        }
        if let Some(since) = &cli.since {
            files = rerun::changed_since(files, since);
        }
        Ok(Selected::Files(files))
    }

    /// Runs the selected files once; the exit code.
    pub fn once(&self, rerun_failed: bool) -> Result<i32, CliError> {
        let cli = self.cli;
        let files = match self.files(rerun_failed)? {
            Selected::Files(f) => f,
            Selected::NoRerunState(path) => {
                empty_junit(cli)?;
                println!(
                    "provium --rerun-failed: no prior failure state at `{}` — nothing to re-run. \
                     (A run in which a file fails records it.)",
                    path.display()
                );
                return Ok(exit_code(RunEnd::NothingToRun));
            }
        };
        if files.is_empty() {
            empty_junit(cli)?;
            if cli.json {
                println!("{}", crate::report::json::no_files_json());
            } else {
                println!("provium: no *.test.lua files found");
            }
            return Ok(exit_code(RunEnd::NothingToRun));
        }
        // The profiles these files use are built now (dynamic builds, Debian
        // userlands), and a missing kernel of one is a config error reported
        // now rather than by the first boot.
        let config = self.config;
        let used = runner::profiles_used(&files, &config.profiles.keys().cloned().collect::<Vec<_>>());
        cleanup::install_signal_handler();
        cleanup::sweep_stale();
        let images = Arc::new(Images::new(Arc::new(config.clone())));
        let builds = if cli.no_build { crate::image::Builds::Skip } else { crate::image::Builds::Run };
        // What a file picks at run time (a profile name in a variable) is
        // prepared at its first boot instead.
        let names: Vec<String> = used.iter().map(|(n, _)| n.clone()).collect();
        images.prepare_profiles(&names, builds, false, &mut |line| eprintln!("{line}")).map_err(Box::new)?;
        config.check_files(&used)?;
        let accel = choose_accel(&images, cli.verbose);
        let jobs = cli.jobs.unwrap_or_else(runner::default_jobs).min(files.len()).max(1);
        let (tx, rx) = channel();
        let events = Events::new(Arc::new(ChannelSink::new(tx)));
        let env_seed = std::env::var("PROVIUM_SEED").ok().and_then(|s| s.trim().parse().ok());
        let seed = cli.seed.or(env_seed).unwrap_or_else(random_seed);
        events.emit(Event::RunStarted {
            files: files.len(),
            jobs,
            accel: accel.accel.as_str().to_string(),
            accel_reason: accel.reason.clone(),
            seed,
        });
        let fixtures = open_fixtures(&cli.paths, config, &images, accel.accel, &events)?;
        let mut reporters = reporters(cli, self.socket.clone())?;
        let paths: Vec<(String, PathBuf)> = files.iter().map(|f| (f.shown.clone(), f.path.clone())).collect();
        let run_cfg = Arc::new(RunConfig {
            images,
            accel: accel.accel,
            fixtures,
            timeout: self.timeout,
            jobs,
            events,
            seed,
            selection: self.selection.clone(),
            fail_fast: cli.fail_fast,
            pool: crate::pool::Pool::new(self.pool),
            psi: !cli.no_psi,
        });
        let runner_thread = std::thread::spawn(move || runner::run(files, run_cfg));
        let mut summary = RunSummary::default();
        let mut failed: Vec<PathBuf> = Vec::new();
        for event in rx {
            summary.record(&event);
            if let Event::FileFinished { report } = &event {
                if !report.passed() {
                    failed.extend(paths.iter().filter(|(shown, _)| *shown == report.path).map(|(_, p)| p.clone()));
                }
            }
            for r in reporters.iter_mut() {
                r.event(&event);
            }
            if matches!(event, Event::RunFinished { .. }) {
                break;
            }
        }
        let _ = runner_thread.join();
        let mut unwritten = false;
        for r in reporters.iter_mut() {
            if let Err(e) = r.finish() {
                eprintln!("provium: {}", crate::errors::chain(&e));
                unwritten = true;
            }
        }
        drop(reporters);
        if let Err(e) = rerun::write_state(&rerun::state_path(), &failed) {
            eprintln!("provium: {}", crate::errors::chain(&e));
        }
        if unwritten {
            // The run's report is lost: CI must not read that as a clean run.
            return Ok(exit_code(RunEnd::CouldNotRun));
        }
        Ok(exit_code(RunEnd::Ran(&summary)))
    }
}

/// `--junit` on a run with nothing to run: an empty report, so that every
/// shard leaves one for `provium merge-junit`.
fn empty_junit(cli: &Cli) -> Result<(), CliError> {
    if let Some(path) = &cli.junit {
        let mut r = junit::JunitReporter::new(path)?;
        r.event(&Event::RunFinished { duration: Duration::ZERO });
        r.finish()?;
    }
    Ok(())
}

/// What [`Run::files`] found.
enum Selected {
    Files(Vec<runner::TestFile>),
    /// `--rerun-failed` with no recorded failures (at this path).
    NoRerunState(PathBuf),
}

/// `--watch`: runs, then polls every 500 ms and runs again whenever the
/// discovered files or their modification times change. `--rerun-failed`
/// is dropped (every iteration runs the whole selection). Ends with Ctrl-C:
/// the signal handler stops every VM and removes every scratch directory.
pub(super) fn watch(run: &Run) -> Result<i32, CliError> {
    let mut last: Option<Vec<(PathBuf, Option<std::time::SystemTime>)>> = None;
    loop {
        let now = match run.files(false) {
            Ok(Selected::Files(files)) => runner::watch::fingerprint(&files),
            Ok(Selected::NoRerunState(_)) => unreachable!("watch never reads the rerun state"),
            Err(e) => {
                eprintln!("provium --watch: iteration failed: {}", crate::errors::chain(&e));
                Vec::new()
            }
        };
        if last.as_ref() != Some(&now) {
            if now.is_empty() {
                eprintln!("provium --watch: no *.test.lua files yet; watching for new files");
            } else if let Err(e) = run.once(false) {
                eprintln!("provium --watch: iteration failed: {}", crate::errors::chain(&e));
            }
            eprintln!("provium --watch: watching {} file(s) for changes (Ctrl-C to stop)", now.len());
            last = Some(now);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The run's consumers of events: the human or JSON renderer (on stderr
/// when stdout carries the msgpack stream), each msgpack sink asked for,
/// and the JUnit report.
fn reporters(cli: &Cli, socket: Option<Arc<Mutex<wire::SocketFanout>>>) -> Result<Vec<Box<dyn Reporter>>, CliError> {
    let verbosity = if cli.verbose {
        human::Verbosity::Verbose
    } else if cli.quiet {
        human::Verbosity::Quiet
    } else {
        human::Verbosity::Normal
    };
    let mut out: Vec<Box<dyn Reporter>> = Vec::new();
    if cli.json {
        out.push(Box::new(json::JsonReporter::new(std::io::stdout(), std::io::stderr())));
    } else {
        let live = progress::wanted(&progress::Conditions {
            stderr_is_terminal: std::io::stderr().is_terminal(),
            json: cli.json,
            events_stdout: cli.events_stdout,
            verbose: cli.verbose,
            quiet: cli.quiet,
            no_progress: cli.no_progress,
            ci: progress::is_ci(std::env::var_os("CI").as_deref()),
        });
        let live = || live.then(progress::Progress::stderr);
        let human: Box<dyn Reporter> = if cli.events_stdout {
            Box::new(human::HumanReporter::new(verbosity, live(), std::io::stderr(), std::io::stderr()))
        } else {
            Box::new(human::HumanReporter::new(verbosity, live(), std::io::stdout(), std::io::stderr()))
        };
        out.push(human);
    }
    if cli.events_stdout {
        out.push(Box::new(wire::FrameWriter::new(std::io::stdout())));
    }
    if let Some(path) = &cli.save_events {
        let file = std::fs::File::create(path).map_err(|source| CliError::SaveEvents { path: path.clone(), source })?;
        out.push(Box::new(wire::FrameWriter::new(std::io::BufWriter::new(file))));
    }
    if let Some(fan) = socket {
        out.push(Box::new(fan));
    }
    if let Some(path) = &cli.junit {
        out.push(Box::new(junit::JunitReporter::new(path)?));
    }
    Ok(out)
}

/// A seed for a run that was not given one: the clock and the process id.
fn random_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    // Small enough to type back.
    (now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
}
