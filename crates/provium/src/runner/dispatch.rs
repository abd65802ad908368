//! Dispatch: files on worker threads (each file on its own OS thread with
//! its own Lua state), several at once within the run's resource pool
//! (`crate::pool`).
//!
//! Files are admitted one by one in discovery order. Before a file starts it
//! needs a free `-j` slot (an upper bound on files at once), a host not
//! under PSI pressure (unless nothing of this run is running: pressure from
//! outside must not stall a run forever), and its [`PER_FILE_OVERHEAD`]
//! reserved from the pool; each wait is announced by a `file_blocked` event,
//! then `file_dispatched` carries what it holds. Its VMs reserve more as
//! they boot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::discover::TestFile;
use crate::events::{BlockReason, Event, Events, FileReport, ResourceAmount};
use crate::image::Images;
use crate::pool::{monitor, Account, Pool, PoolError};
use crate::sync::lock;
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
    /// At most this many files at once.
    pub jobs: usize,
    pub events: Events,
    /// Seeds every bridge's loss draws (`--seed`), so a run repeats.
    pub seed: u64,
    /// Which tests run (tags, meta, slow).
    pub selection: super::select::Selection,
    /// `--fail-fast`: once a file failed, files not yet started are not run.
    pub fail_fast: bool,
    /// The memory and vCPUs files and VMs reserve from.
    pub pool: Arc<Pool>,
    /// Whether new files wait while the host is under PSI pressure.
    pub psi: bool,
}

/// A file's per-file overhead did not fit in the pool at all.
#[derive(Debug, thiserror::Error)]
#[error("file `{file}`: cannot reserve its per-file overhead")]
pub struct OverheadError {
    file: String,
    #[source]
    source: PoolError,
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
    let ticker = monitor::Ticker::start(cfg.pool.clone(), cfg.events.clone(), Duration::from_secs(1));
    let psi = if cfg.psi { monitor::Psi::start() } else { None };
    let slots = Arc::new(Slots::new(cfg.jobs.max(1)));
    let mut threads = Vec::new();
    let failed = Arc::new(AtomicBool::new(false));
    for file in files {
        slots.take();
        if cfg.fail_fast && failed.load(Ordering::SeqCst) {
            let mut report = FileReport::new(&file.shown);
            report.chunk_error = Some(FAIL_FAST_SKIP.into());
            cfg.events.emit(Event::FileFinished { report });
            slots.give_back();
            continue;
        }
        if let Some(psi) = &psi {
            wait_out_pressure(psi, &slots, &file.shown, &cfg.events);
        }
        let account = Account::new(&cfg.pool, &file.shown, cfg.events.for_file(&file.shown));
        let overhead = match account.reserve(PER_FILE_OVERHEAD) {
            Ok(r) => r,
            Err(source) => {
                let mut report = FileReport::new(&file.shown);
                let e = OverheadError { file: file.shown.clone(), source };
                report.chunk_error = Some(crate::errors::chain(&e));
                cfg.events.emit(Event::FileFinished { report });
                slots.give_back();
                continue;
            }
        };
        cfg.events.emit(Event::FileDispatched { file: file.shown.clone(), reservation: overhead.amount() });
        let (cfg, slots, failed) = (cfg.clone(), slots.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name(format!("file-{}", threads.len()))
            .stack_size(16 << 20)
            .spawn(move || {
                let report = run_one(&file, &cfg, &account);
                // The file is over, its VMs down: its claim goes back.
                account.end();
                drop(overhead);
                if !report.passed() {
                    failed.store(true, Ordering::SeqCst);
                }
                cfg.events.emit(Event::FileFinished { report });
                slots.give_back();
            })
            .expect("spawn runner thread");
        threads.push(thread);
    }
    for t in threads {
        let _ = t.join();
    }
    drop(ticker);
    cfg.events.emit(Event::RunFinished { duration: started.elapsed() });
}

/// While the host is under pressure and some file of this run runs, the
/// next file waits (one `file_blocked` says so).
fn wait_out_pressure(psi: &monitor::Psi, slots: &Slots, file: &str, events: &Events) {
    let mut told = false;
    while psi.pressure() && slots.running() > 1 {
        if !told {
            let (file, waiting_for) = (file.to_string(), PER_FILE_OVERHEAD);
            events.emit(Event::FileBlocked { file, waiting_for, reason: BlockReason::PsiPressure });
            told = true;
        }
        slots.changed_within(Duration::from_millis(250));
    }
}

/// The `-j` bound: how many files run (or are being admitted) at once.
struct Slots {
    max: usize,
    taken: Mutex<usize>,
    changed: Condvar,
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots { max, taken: Mutex::new(0), changed: Condvar::new() }
    }

    /// Waits for a free slot and takes it.
    fn take(&self) {
        let mut n = lock(&self.taken);
        while *n >= self.max {
            n = self.changed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
    }

    fn give_back(&self) {
        *lock(&self.taken) -= 1;
        self.changed.notify_all();
    }

    /// Slots taken (the file being admitted included).
    fn running(&self) -> usize {
        *lock(&self.taken)
    }

    /// Returns when a slot is given back, or after `within`.
    fn changed_within(&self, within: Duration) {
        let n = lock(&self.taken);
        let _ = self.changed.wait_timeout(n, within);
    }
}

fn run_one(file: &TestFile, cfg: &RunConfig, account: &Account) -> FileReport {
    // A panic in provium itself fails this file only.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| super::file::run_file(file, cfg, account))) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Collect;

    fn psi_files(dir: &std::path::Path, memory_avg10: &str) {
        let line = format!("some avg10={memory_avg10} avg60=0.00 avg300=0.00 total=0\n");
        std::fs::write(dir.join("memory"), line).unwrap();
    }

    #[test]
    fn pool_psi_pressure_holds_back_new_files_only_while_others_run() {
        let dir = tempfile::tempdir().unwrap();
        psi_files(dir.path(), "55.00");
        let psi = monitor::Psi::watch(dir.path().to_path_buf(), Duration::from_millis(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !psi.pressure() {
            assert!(Instant::now() < deadline, "the monitor never read the pressure");
            std::thread::sleep(Duration::from_millis(5));
        }
        let sink = Arc::new(Collect::default());
        let events = Events::new(sink.clone());
        let slots = Slots::new(4);
        // Nothing else runs: pressure from outside must not stall the run.
        slots.take();
        let t0 = Instant::now();
        wait_out_pressure(&psi, &slots, "first.test.lua", &events);
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(sink.events().is_empty());
        // One file runs: the next waits until the pressure goes.
        slots.take();
        let calm = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                psi_files(&dir, "0.50");
            })
        };
        let t0 = Instant::now();
        wait_out_pressure(&psi, &slots, "second.test.lua", &events);
        assert!(t0.elapsed() >= Duration::from_millis(350), "did not wait: {:?}", t0.elapsed());
        calm.join().unwrap();
        let blocked: Vec<_> = sink
            .events()
            .into_iter()
            .map(|e| match e {
                Event::FileBlocked { file, reason, .. } => (file, reason),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(blocked, [("second.test.lua".to_string(), BlockReason::PsiPressure)], "once per file");
    }
}
