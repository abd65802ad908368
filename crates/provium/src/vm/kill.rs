//! [`KillSwitch`]: stops a VM's QEMU from another thread (a watchdog)
//! without the VM's lock, which the blocked operation holds. It remembers
//! why, so the VM can say it was stopped (by a timeout) rather than died.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Inner {
    pid: AtomicU32,
    /// Why it was pulled (`the timeout of test "x"`), since the last arm.
    reason: Mutex<Option<String>>,
}

/// A handle the watchdog can use to kill a VM's QEMU without taking the
/// VM's lock (which a blocked operation may hold).
#[derive(Debug, Clone, Default)]
pub struct KillSwitch(Arc<Inner>);

impl KillSwitch {
    pub(super) fn arm(&self, pid: u32) {
        *crate::sync::lock(&self.0.reason) = None;
        self.0.pid.store(pid, Ordering::SeqCst);
    }

    pub(super) fn disarm(&self) {
        self.0.pid.store(0, Ordering::SeqCst);
    }

    /// The pid it would signal, if armed.
    pub fn armed(&self) -> Option<u32> {
        Some(self.0.pid.load(Ordering::SeqCst)).filter(|&p| p != 0)
    }

    /// SIGKILLs the QEMU process, if one runs, recording `reason` (what
    /// stopped it, as in "stopped by the timeout of test \"x\"").
    pub fn kill(&self, reason: &str) {
        let pid = self.0.pid.load(Ordering::SeqCst);
        if pid != 0 {
            crate::sync::lock(&self.0.reason).get_or_insert_with(|| reason.to_string());
            // SAFETY: signalling a QEMU child of this process.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }

    /// Why it was pulled since the VM last started, if it was.
    pub fn reason(&self) -> Option<String> {
        crate::sync::lock(&self.0.reason).clone()
    }
}
