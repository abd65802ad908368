//! Dispatch: files on worker threads (each file on its own OS thread with
//! its own Lua state), several at once within a CPU and memory budget.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::discover::TestFile;
use crate::events::{Event, Events, FileReport, ResourceAmount};
use crate::image::Images;
use crate::vmm::Accel;

/// How many files may run at once: one per CPU, and no more than the
/// available memory allows at ~1 GiB per file.
pub fn default_jobs() -> usize {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kib| (kib >> 20) as usize)
        .unwrap_or(1);
    cpus.min(mem_gib).max(1)
}

/// What a file holds of the pool while it runs, besides its VMs: its Lua
/// state and the host side of its connections.
pub const PER_FILE_OVERHEAD: ResourceAmount = ResourceAmount { memory_bytes: 50 << 20, cpus: 0 };

/// The chunk error of a file `--fail-fast` did not start.
pub const FAIL_FAST_SKIP: &str = "skipped: --fail-fast";

/// What a run shares across files.
pub struct RunConfig {
    pub images: Arc<Images>,
    pub accel: Accel,
    pub fixtures: Arc<crate::fixture::Fixtures>,
    /// Per-file wall-clock limit.
    pub timeout: Option<Duration>,
    pub jobs: usize,
    pub events: Events,
    /// Seeds every bridge's loss draws (`--seed`), so a run repeats.
    pub seed: u64,
    /// Which tests run (tags, meta, slow).
    pub selection: super::select::Selection,
    /// `--fail-fast`: once a file failed, files not yet started are not run.
    pub fail_fast: bool,
}

/// Runs every file, emitting what happens; returns when all are done,
/// after `RunFinished`.
pub fn run(files: Vec<TestFile>, cfg: Arc<RunConfig>) {
    let started = Instant::now();
    for f in &files {
        let source = std::fs::read_to_string(&f.path).unwrap_or_default();
        let fixture_refs = crate::fixture::key::scan(&source).fixtures;
        cfg.events.emit(Event::FileDiscovered { file: f.shown.clone(), fixture_refs });
    }
    let queue = Arc::new(Mutex::new(files.into_iter().collect::<VecDeque<_>>()));
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..cfg.jobs.max(1))
        .map(|i| {
            let queue = queue.clone();
            let cfg = cfg.clone();
            let failed = failed.clone();
            std::thread::Builder::new()
                .name(format!("file-runner-{i}"))
                .stack_size(16 << 20)
                .spawn(move || loop {
                    let Some(file) = crate::sync::lock(&queue).pop_front() else {
                        break;
                    };
                    if cfg.fail_fast && failed.load(std::sync::atomic::Ordering::SeqCst) {
                        let mut report = FileReport::new(&file.shown);
                        report.chunk_error = Some(FAIL_FAST_SKIP.into());
                        cfg.events.emit(Event::FileFinished { report });
                        continue;
                    }
                    cfg.events.emit(Event::FileDispatched { file: file.shown.clone(), reservation: PER_FILE_OVERHEAD });
                    let report = run_one(&file, &cfg);
                    if !report.passed() {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    cfg.events.emit(Event::FileFinished { report });
                })
                .expect("spawn runner thread")
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    cfg.events.emit(Event::RunFinished { duration: started.elapsed() });
}

fn run_one(file: &TestFile, cfg: &RunConfig) -> FileReport {
    // A panic in provium itself fails this file only.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| super::file::run_file(file, cfg))) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let mut r = FileReport::new(&file.shown);
            r.chunk_error = Some(format!("internal error: provium panicked: {what}"));
            r
        }
    }
}
