//! The command line: arguments, sub-commands, and the mapping of outcomes to
//! exit codes (0 all passed, 1 something failed, 2 provium could not run).
//! Running the tests themselves (once, or again and again under `--watch`)
//! is [`run`]'s.

mod run;

use run::Run;

use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::events::{ChannelSink, Event, Events};
use crate::fixture::{Fixtures, Store};
use crate::image::Images;
use crate::report::{exit_code, human, junit, junit_merge, wire, RunEnd};
use crate::runner;
use crate::runner::select::{MetaTag, Selection};
use crate::{cleanup, doctor, units, vmm};

#[derive(Debug, Parser)]
#[command(name = "provium", version, about = "Run *.test.lua suites against real Linux guests under QEMU")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Files or directories to scan for *.test.lua (default: the config's
    /// roots, else the current directory).
    pub paths: Vec<PathBuf>,
    /// Config file (default: ./provium.toml if present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Keep files whose path contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Run one shard of the files: `hash:K/N` (by path) or `count:K/N` (by
    /// position), K from 1 to N; the N shards together run every file once.
    #[arg(long, global = true)]
    pub partition: Option<runner::partition::Partition>,
    /// Run tests whose `meta.slow` is true too.
    #[arg(long)]
    pub include_slow: bool,
    /// Run only tests with one of these tags (`meta.tags`); repeatable.
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Skip tests with any of these tags; wins over --tag; repeatable.
    #[arg(long, value_name = "TAG")]
    pub no_tag: Vec<String>,
    /// Run only tests whose `meta[KEY]` (a string or strings) holds VALUE;
    /// one KEY repeated: any of its values; different KEYs: all of them.
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag_meta: Vec<MetaTag>,
    /// Skip tests whose `meta[KEY]` holds VALUE; wins over --tag-meta.
    #[arg(long, value_name = "KEY=VALUE")]
    pub no_tag_meta: Vec<MetaTag>,
    /// After the first failing file, do not start the others (they are
    /// reported as `skipped: --fail-fast` and count as failed).
    #[arg(long)]
    pub fail_fast: bool,
    /// Run only the files that failed in the last run that had a failure
    /// (the rerun state: $PROVIUM_RERUN_STATE or ~/.cache/provium/rerun.json).
    #[arg(long)]
    pub rerun_failed: bool,
    /// Run only files modified after PATH was.
    #[arg(long, value_name = "PATH")]
    pub since: Option<PathBuf>,
    /// Run, then run again whenever a test file is added, removed or
    /// changed (polled every 500 ms) until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Per-file wall-clock timeout ("300", "90s", "5m"; 0 disables).
    #[arg(long, default_value = "300")]
    pub timeout: String,
    /// Files to run at once, at most (default: CPUs, bounded by memory);
    /// the pool (--mem, --cpus) decides how many fit.
    #[arg(short = 'j', long)]
    pub jobs: Option<usize>,
    /// Memory of the pool files and VMs reserve from: bytes or a number
    /// with K/M/G/T (default: 80 % of the host's memory).
    #[arg(long, value_name = "BYTES")]
    pub mem: Option<String>,
    /// vCPUs of the pool, before --cpu-overcommit (default: online CPUs).
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Multiplier on --cpus, from 0.5 to 8.0 (default 4: a vCPU is a host
    /// thread that is mostly idle; memory is what runs out).
    #[arg(long, value_name = "F", default_value_t = crate::pool::budget::DEFAULT_OVERCOMMIT)]
    pub cpu_overcommit: f64,
    /// Start new files even while the host is under memory pressure (by
    /// default they wait while /proc/pressure/memory says so).
    #[arg(long)]
    pub no_psi: bool,
    /// One JSON object per event line on stdout.
    #[arg(long, conflicts_with = "events_stdout")]
    pub json: bool,
    /// Write the msgpack event stream to PATH.
    #[arg(long, value_name = "PATH")]
    pub save_events: Option<PathBuf>,
    /// Write the msgpack event stream to stdout (the human output moves to
    /// stderr).
    #[arg(long)]
    pub events_stdout: bool,
    /// Serve the msgpack event stream on a Unix socket at PATH, to every
    /// client that connects.
    #[arg(long, value_name = "PATH")]
    pub events_socket: Option<PathBuf>,
    /// Write a JUnit XML report to PATH when the run ends (one testsuite
    /// per file); shards' reports merge with `provium merge-junit`.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// No live progress bar (it is shown only on an interactive stderr,
    /// and never with --json, --events-stdout, -v, -q, or when CI is set).
    #[arg(long)]
    pub no_progress: bool,
    /// Seed for the run's random choices (bridge loss); printed at the start
    /// and after a failure, so a run can be repeated (also PROVIUM_SEED)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not run dynamic profiles' `build` commands; boot what their
    /// `{out}` directories already hold.
    #[arg(long, global = true)]
    pub no_build: bool,
    /// Show every test, and VM diagnostics on stderr.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Show only failing files and the summary.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the test files that would run.
    List { paths: Vec<PathBuf> },
    /// Check QEMU, the accelerator and the default guest.
    Doctor,
    /// Inspect and manage the fixture cache.
    Fixture {
        #[command(subcommand)]
        action: crate::fixture_cli::FixtureAction,
    },
    /// Get profiles ready without booting anything: run dynamic profiles'
    /// `build` commands and build Debian profiles' userlands (all profiles
    /// that need it, or PROFILE).
    Prepare {
        profile: Option<String>,
        /// Fetch the Debian package lists again even if they are recent.
        #[arg(long)]
        refresh: bool,
    },
    /// Merge JUnit reports (of `--partition` shards) into one: suites
    /// concatenated, totals recomputed.
    MergeJunit {
        /// The merged report to write.
        out: PathBuf,
        /// The reports to merge, in order.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
}

/// Errors that stop provium before or outside running tests (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Discover(#[from] runner::DiscoverError),
    #[error("--timeout: {0}")]
    Timeout(units::UnitError),
    #[error(transparent)]
    Pool(#[from] crate::pool::BudgetError),
    #[error(transparent)]
    FixtureCache(#[from] crate::fixture::StoreError),
    #[error("--save-events `{path}`: cannot create the file")]
    SaveEvents {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--events-socket `{path}`: cannot listen there")]
    EventsSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Junit(#[from] junit::JunitError),
    #[error(transparent)]
    MergeJunit(#[from] junit_merge::MergeError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[error(transparent)]
    Prepare(#[from] Box<crate::image::PrepareError>),
    #[error("prepare: profile `{name}` not found in {where_} (profiles: {known})")]
    UnknownProfile { name: String, where_: String, known: String },
}

/// Where fixture names are looked up: the config's roots, else the
/// directories being run (a file's own directory), else `.`.
fn fixture_roots(cli_paths: &[PathBuf], config: &Config) -> Vec<PathBuf> {
    if !config.roots.is_empty() {
        return config.roots.clone();
    }
    let mut roots: Vec<PathBuf> = cli_paths
        .iter()
        .map(|p| if p.is_dir() { p.clone() } else { p.parent().map(Path::to_path_buf).unwrap_or_default() })
        .map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p })
        .collect();
    roots.dedup();
    if roots.is_empty() {
        roots.push(PathBuf::from("."));
    }
    roots
}

/// The run's fixture cache; entries beyond the size cap are evicted first.
/// A snapshot only restores under the accelerator that took it, so the
/// accelerator is part of every key.
pub(super) fn open_fixtures(
    cli_paths: &[PathBuf],
    config: &Config,
    images: &Images,
    accel: vmm::Accel,
    events: &Events,
) -> Result<Arc<Fixtures>, CliError> {
    let store = Store::open(crate::fixture::cache_dir(config.cache_dir.as_deref()))?;
    for key in store.shrink_to(FIXTURE_CACHE_MAX_BYTES) {
        let reason = format!("is beyond the cache's {} GiB cap (least recently used)", FIXTURE_CACHE_MAX_BYTES >> 30);
        events.emit(Event::FixtureEvicted { file: None, key, reason, rebuilding: false });
    }
    let mut environment = images.identity();
    environment.push(format!("snapshot_format={}", crate::vmm::snapshot::FORMAT));
    environment.push(format!("accel={}", accel.as_str()));
    environment.push(format!("cache_entry_format={}", crate::fixture::entry_format()));
    Ok(Arc::new(Fixtures::new(store, fixture_roots(cli_paths, config), environment)))
}

/// Least recently used fixture entries go beyond this.
const FIXTURE_CACHE_MAX_BYTES: u64 = 20 << 30;

pub(super) fn scan_paths(cli_paths: &[PathBuf], config: &Config) -> Vec<PathBuf> {
    if !cli_paths.is_empty() {
        cli_paths.to_vec()
    } else if !config.roots.is_empty() {
        config.roots.clone()
    } else {
        vec![PathBuf::from(".")]
    }
}

/// Parses arguments, runs, and returns the process exit code.
pub fn main_with(cli: Cli) -> i32 {
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("provium: {}", crate::errors::chain(&e));
            exit_code(RunEnd::CouldNotRun)
        }
    }
}

/// A renderer thread's end of the event stream: notes on stderr as they
/// come, for the commands that run no tests.
fn notes_printer() -> (Events, std::thread::JoinHandle<()>) {
    let (tx, rx) = channel::<Event>();
    let printer = std::thread::spawn(move || {
        for e in rx {
            if let Some(line) = human::note(&e) {
                eprintln!("{line}");
            }
        }
    });
    (Events::new(Arc::new(ChannelSink::new(tx))), printer)
}

fn run(cli: Cli) -> Result<i32, CliError> {
    // Merging reports needs no config (nor a machine that can run tests).
    if let Some(Command::MergeJunit { out, inputs }) = &cli.command {
        let m = junit_merge::merge_files(out, inputs)?;
        let t = m.totals;
        println!(
            "provium: merged {} suite(s) from {} file(s) into {}: {} tests, {} failures, {} errors, {} skipped",
            m.suites,
            m.inputs,
            out.display(),
            t.tests,
            t.failures,
            t.errors,
            t.skipped
        );
        return Ok(0);
    }
    let config = Config::load(cli.config.as_deref())?;
    match &cli.command {
        Some(Command::Doctor) => {
            // A killed run's scratch and guest RAM files go, as on a run.
            cleanup::sweep_stale();
            return Ok(doctor::run(&config));
        }
        Some(Command::Fixture { action }) => {
            cleanup::install_signal_handler();
            let images = Arc::new(Images::new(Arc::new(config.clone())));
            let accel = choose_accel(&images, cli.verbose);
            let (events, printer) = notes_printer();
            let code = open_fixtures(&[], &config, &images, accel.accel, &events)
                .map(|fixtures| crate::fixture_cli::run(action, fixtures, images, accel.accel, events));
            let _ = printer.join();
            return code;
        }
        Some(Command::Prepare { profile, refresh }) => {
            cleanup::install_signal_handler();
            let names: Vec<String> = match profile {
                Some(name) if config.profiles.contains_key(name) => vec![name.clone()],
                Some(name) => {
                    return Err(CliError::UnknownProfile {
                        name: name.clone(),
                        where_: config
                            .path
                            .as_ref()
                            .map_or("provium.toml (there is none here)".into(), |p| format!("`{}`", p.display())),
                        known: config.profiles.keys().cloned().collect::<Vec<_>>().join(", "),
                    })
                }
                None => config.profiles.keys().cloned().collect(),
            };
            let images = Images::new(Arc::new(config.clone()));
            let builds = if cli.no_build { crate::image::Builds::Skip } else { crate::image::Builds::Run };
            images.prepare_profiles(&names, builds, *refresh, &mut |line| eprintln!("{line}")).map_err(Box::new)?;
            let ready: Vec<&String> = names
                .iter()
                .filter(|n| {
                    config.profiles[*n].build.is_some()
                        || matches!(config.profiles[*n].guest, crate::config::Guest::Debian(_))
                })
                .collect();
            println!("provium prepare: {} profile(s) ready", ready.len());
            return Ok(0);
        }
        Some(Command::List { paths }) => {
            cleanup::sweep_stale();
            let mut files = runner::discover(&scan_paths(paths, &config))?;
            if let Some(p) = &cli.partition {
                files = p.select(files);
            }
            for f in &files {
                println!("  {}", f.shown);
            }
            println!("\n{} test file(s) found", files.len());
            return Ok(0);
        }
        Some(Command::MergeJunit { .. }) | None => {}
    }
    let timeout = units::parse_duration(&cli.timeout).map_err(CliError::Timeout)?;
    let timeout = (timeout > Duration::ZERO).then_some(timeout);
    let budget = crate::pool::budget::budget(cli.mem.as_deref(), cli.cpus, cli.cpu_overcommit)?;
    for note in &budget.notes {
        eprintln!("{note}");
    }
    let selection = Selection {
        include_slow: cli.include_slow,
        tag: cli.tag.clone(),
        no_tag: cli.no_tag.clone(),
        tag_meta: cli.tag_meta.clone(),
        no_tag_meta: cli.no_tag_meta.clone(),
    };
    // The handshake: build commands and fixture builders started from here
    // see the selection too. Set before any thread of the run starts.
    std::env::set_var(runner::select::ENV, selection.to_env());
    let socket = match &cli.events_socket {
        Some(path) => Some(Arc::new(Mutex::new(
            wire::SocketFanout::bind(path).map_err(|source| CliError::EventsSocket { path: path.clone(), source })?,
        ))),
        None => None,
    };
    let run = Run { cli: &cli, config: &config, timeout, selection, socket, pool: budget.total };
    if cli.watch {
        return run::watch(&run);
    }
    run.once(cli.rerun_failed)
}

/// KVM only if the probe says so; the probe needs the default guest, and if
/// that is missing the run uses TCG (a boot will then explain what is missing).
pub(super) fn choose_accel(images: &Images, verbose: bool) -> vmm::accel::AccelChoice {
    let qemu = vmm::process::qemu_binary();
    match images.default_guest() {
        Ok(g) => vmm::accel::choose(&qemu, &g.vmlinux, &g.initrd),
        Err(e) => {
            if verbose {
                eprintln!("provium: default guest unavailable: {}", crate::errors::chain(&e));
            }
            vmm::accel::AccelChoice {
                accel: vmm::Accel::Tcg,
                reason: "default guest unavailable for the KVM probe".into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("provium").chain(args.iter().copied()))
    }

    #[test]
    fn report_flags_and_merge_junit_parse() {
        let cli = parse(&["--junit", "r.xml", "--no-progress", "suite"]).unwrap();
        assert_eq!((cli.junit.as_deref(), cli.no_progress), (Some(Path::new("r.xml")), true));
        match parse(&["merge-junit", "all.xml", "a.xml", "b.xml"]).unwrap().command {
            Some(Command::MergeJunit { out, inputs }) => {
                assert_eq!(out, Path::new("all.xml"));
                assert_eq!(inputs, [Path::new("a.xml"), Path::new("b.xml")]);
            }
            other => panic!("{other:?}"),
        }
        let e = parse(&["merge-junit", "all.xml"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument, "at least one input: {e}");
    }
}
