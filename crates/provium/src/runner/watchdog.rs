//! [`Watchdog`]: when a file's (or a test's) time is up, it sets a flag the
//! Lua state checks and kills every VM of the file, so that whatever the
//! file's thread is blocked on returns.
//!
//! Time the file spent waiting for the pool (its [`WaitClock`]: boots and
//! claims waiting for room) does not count: the deadline moves out by as
//! much, so a file parked behind others is not timed out for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pool::WaitClock;
use crate::vm::KillSwitch;

/// Armed for a duration; disarmed by dropping it.
pub struct Watchdog {
    fired: Arc<AtomicBool>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog that sets `fired` and kills every VM in `kills`
    /// when `timeout` passes before it drops, not counting the time `waits`
    /// runs from now on; `None` never fires. `what` names the timeout for
    /// the VMs' errors (`the timeout of test "x"`).
    pub fn start(
        timeout: Option<Duration>,
        kills: Arc<Mutex<Vec<KillSwitch>>>,
        fired: Arc<AtomicBool>,
        what: String,
        waits: WaitClock,
    ) -> Watchdog {
        let Some(timeout) = timeout else {
            return Watchdog { fired, stop: None, thread: None };
        };
        let (tx, rx) = channel::<()>();
        let f = fired.clone();
        let (started, waited_before) = (Instant::now(), waits.waited());
        let thread = std::thread::spawn(move || loop {
            // Time counted so far: the wall time, less the pool waits.
            let counted = started.elapsed().saturating_sub(waits.waited().saturating_sub(waited_before));
            let left = timeout.saturating_sub(counted);
            // Sleeping `left` never overshoots: the counted time grows at
            // most as fast as the wall clock (during a wait, by at most the
            // 100 ms look-again). Out of time in the middle of a wait: fire
            // when the wait ends.
            let sleep = match (left.is_zero(), waits.waiting()) {
                (false, false) => left,
                // Waiting: the budget stands still; look again now and then.
                (false, true) => left.max(Duration::from_millis(100)),
                (true, true) => Duration::from_millis(100),
                (true, false) => {
                    f.store(true, Ordering::SeqCst);
                    for k in crate::sync::lock(&kills).iter() {
                        k.kill(&what);
                    }
                    return;
                }
            };
            if !matches!(rx.recv_timeout(sleep), Err(RecvTimeoutError::Timeout)) {
                return;
            }
        });
        Watchdog { fired, stop: Some(tx), thread: Some(thread) }
    }

    /// The flag it sets when the time runs out.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.fired.clone()
    }

    /// Whether the time ran out.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_after_its_time_and_not_when_dropped_before() {
        let early = Watchdog::start(Some(Duration::from_secs(60)), Arc::default(), Arc::default(), "t".into(), w());
        assert!(!early.fired());
        drop(early);
        let dog = Watchdog::start(Some(Duration::from_millis(1)), Arc::default(), Arc::default(), "t".into(), w());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dog.fired() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(dog.fired());
        let never = Watchdog::start(None, Arc::default(), Arc::default(), "t".into(), w());
        assert!(!never.fired());
    }

    fn w() -> WaitClock {
        WaitClock::default()
    }

    #[test]
    fn pool_waits_move_the_deadline_out() {
        let waits = WaitClock::default();
        // 300 ms of budget; the file waits for the pool from 100 ms to 1.1 s.
        let dog = Watchdog::start(
            Some(Duration::from_millis(300)),
            Arc::default(),
            Arc::default(),
            "t".into(),
            waits.clone(),
        );
        std::thread::sleep(Duration::from_millis(100));
        let wait = waits.start();
        std::thread::sleep(Duration::from_millis(1000));
        assert!(!dog.fired(), "fired while the file waited for the pool");
        drop(wait);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!dog.fired(), "fired with ~150 ms of its budget left");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dog.fired() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(dog.fired(), "never fired after the wait");
    }

    #[test]
    fn pool_wait_past_the_deadline_fires_when_it_ends() {
        let waits = WaitClock::default();
        let wait = waits.start();
        let dog =
            Watchdog::start(Some(Duration::from_millis(1)), Arc::default(), Arc::default(), "t".into(), waits.clone());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!dog.fired(), "a wait begun before the watchdog still does not count");
        drop(wait);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dog.fired() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(dog.fired());
    }
}
