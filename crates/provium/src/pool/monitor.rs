//! The run's background threads around the pool:
//!
//! - [`Psi`] (`provium-psi`): reads `/proc/pressure/memory` every second;
//!   the host is under pressure when its `some avg10` is above
//!   [`PSI_THRESHOLD`]. The dispatcher then holds back new files (running
//!   ones go on). CPU pressure is not looked at, unlike the reference's
//!   code (memory or CPU above 10 %): a run's own TCG vCPUs keep CPU
//!   pressure above any such threshold on a small host, so the run would
//!   throttle itself to one file at a time (seen in CI: every file waited).
//!   CPU is what `--cpus` and `-j` bound; memory pressure means the host
//!   is about to reclaim or swap, which slows every guest.
//! - [`Ticker`] (`provium-pool`): a `pool_state` event every second.
//!
//! Both stop when dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::ledger::Pool;
use crate::events::{Event, Events};

/// `some avg10` above this (percent) is pressure.
pub const PSI_THRESHOLD: f64 = 10.0;

/// The `avg10` of the `some` line of a `/proc/pressure/*` file.
pub fn some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace().find_map(|f| f.strip_prefix("avg10="))?.parse().ok()
}

/// Whether the text of the memory pressure file says the host is under
/// pressure.
pub fn under_pressure(memory: Option<&str>) -> bool {
    memory.and_then(some_avg10).is_some_and(|avg| avg > PSI_THRESHOLD)
}

/// A stoppable thread that runs `tick` every `every` until dropped.
struct Every {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Every {
    fn start(name: &str, every: Duration, mut tick: impl FnMut() + Send + 'static) -> Every {
        let (tx, rx) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || loop {
                tick();
                match rx.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            })
            .expect("spawn a pool monitor thread");
        Every { stop: Some(tx), thread: Some(thread) }
    }
}

impl Drop for Every {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The PSI monitor.
pub struct Psi {
    pressure: Arc<AtomicBool>,
    _thread: Every,
}

impl Psi {
    /// Watches `/proc/pressure`, if this kernel has it.
    pub fn start() -> Option<Psi> {
        Psi::watch(PathBuf::from("/proc/pressure"), Duration::from_secs(1))
    }

    /// Watches `dir/memory` every `every`; `None` when it cannot be read.
    pub fn watch(dir: PathBuf, every: Duration) -> Option<Psi> {
        std::fs::read_to_string(dir.join("memory")).ok()?;
        let pressure = Arc::new(AtomicBool::new(false));
        let flag = pressure.clone();
        let thread = Every::start("provium-psi", every, move || {
            let memory = std::fs::read_to_string(dir.join("memory")).ok();
            flag.store(under_pressure(memory.as_deref()), Ordering::SeqCst);
        });
        Some(Psi { pressure, _thread: thread })
    }

    /// Whether the host was under pressure at the last reading.
    pub fn pressure(&self) -> bool {
        self.pressure.load(Ordering::SeqCst)
    }
}

/// Emits `pool_state` every `every` while it lives.
pub struct Ticker {
    _thread: Every,
}

impl Ticker {
    pub fn start(pool: Arc<Pool>, events: Events, every: Duration) -> Ticker {
        let thread = Every::start("provium-pool", every, move || {
            let u = pool.usage();
            events.emit(Event::PoolState { used: u.used, available: u.free });
        });
        Ticker { _thread: thread }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Collect, ResourceAmount};

    const CALM: &str = "some avg10=0.76 avg60=2.31 avg300=8.43 total=117187741\n\
                        full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
    const BUSY: &str = "some avg10=42.50 avg60=12.00 avg300=3.00 total=9999\n\
                        full avg10=30.00 avg60=0.00 avg300=0.00 total=0\n";

    #[test]
    fn pool_psi_text_is_parsed() {
        assert_eq!(some_avg10(CALM), Some(0.76));
        assert_eq!(some_avg10(BUSY), Some(42.5));
        assert_eq!(some_avg10("full avg10=99.00\n"), None, "only the `some` line counts");
        assert_eq!(some_avg10("garbage"), None);
        assert!(!under_pressure(Some(CALM)));
        assert!(under_pressure(Some(BUSY)));
        assert!(!under_pressure(None));
        assert!(!under_pressure(Some("some avg10=10.00 avg60=0 avg300=0 total=0")), "above 10, not at");
    }

    #[test]
    fn pool_psi_monitor_follows_the_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Psi::watch(dir.path().to_path_buf(), Duration::from_millis(10)).is_none(), "no memory file");
        std::fs::write(dir.path().join("memory"), BUSY).unwrap();
        // CPU pressure (the run's own vCPUs, mostly) holds nothing back.
        std::fs::write(dir.path().join("cpu"), BUSY).unwrap();
        let psi = Psi::watch(dir.path().to_path_buf(), Duration::from_millis(10)).unwrap();
        let until = |want: bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while psi.pressure() != want {
                assert!(std::time::Instant::now() < deadline, "pressure never became {want}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        until(true);
        std::fs::write(dir.path().join("memory"), CALM).unwrap();
        until(false);
    }

    #[test]
    fn pool_ticker_reports_use_until_dropped() {
        let pool = Pool::new(ResourceAmount { memory_bytes: 100 << 20, cpus: 2 });
        let _held = pool.holder().acquire(ResourceAmount { memory_bytes: 30 << 20, cpus: 1 }, || ()).unwrap();
        let sink = Arc::new(Collect::default());
        let ticker = Ticker::start(pool.clone(), Events::new(sink.clone()), Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(100));
        drop(ticker);
        let n = sink.events().len();
        assert!(n >= 2, "{n} ticks");
        match &sink.events()[0] {
            Event::PoolState { used, available } => {
                assert_eq!(*used, ResourceAmount { memory_bytes: 30 << 20, cpus: 1 });
                assert_eq!(*available, ResourceAmount { memory_bytes: 70 << 20, cpus: 1 });
            }
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(sink.events().len(), n, "no tick after the drop");
    }
}
