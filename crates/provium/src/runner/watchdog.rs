//! [`Watchdog`]: when a file's (or a test's) time is up, it sets a flag the
//! Lua state checks and kills every VM of the file, so that whatever the
//! file's thread is blocked on returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::vm::KillSwitch;

/// Armed for a duration; disarmed by dropping it.
pub struct Watchdog {
    fired: Arc<AtomicBool>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog that sets `fired` and kills every VM in `kills`
    /// when `timeout` passes before it drops; `None` never fires. `what`
    /// names the timeout for the VMs' errors (`the timeout of test "x"`).
    pub fn start(
        timeout: Option<Duration>,
        kills: Arc<Mutex<Vec<KillSwitch>>>,
        fired: Arc<AtomicBool>,
        what: String,
    ) -> Watchdog {
        let Some(timeout) = timeout else {
            return Watchdog { fired, stop: None, thread: None };
        };
        let (tx, rx) = channel::<()>();
        let f = fired.clone();
        let thread = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                f.store(true, Ordering::SeqCst);
                for k in crate::sync::lock(&kills).iter() {
                    k.kill(&what);
                }
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
        let early = Watchdog::start(Some(Duration::from_secs(60)), Arc::default(), Arc::default(), "t".into());
        assert!(!early.fired());
        drop(early);
        let dog = Watchdog::start(Some(Duration::from_millis(1)), Arc::default(), Arc::default(), "t".into());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dog.fired() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(dog.fired());
        let never = Watchdog::start(None, Arc::default(), Arc::default(), "t".into());
        assert!(!never.fired());
    }
}
