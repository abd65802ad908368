//! [`KillSwitch`]: stops a VM's QEMU from another thread (a watchdog)
//! without the VM's lock, which the blocked operation holds.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A handle the watchdog can use to kill a VM's QEMU without taking the
/// VM's lock (which a blocked operation may hold).
#[derive(Debug, Clone, Default)]
pub struct KillSwitch(Arc<AtomicU32>);

impl KillSwitch {
    pub(super) fn arm(&self, pid: u32) {
        self.0.store(pid, Ordering::SeqCst);
    }

    pub(super) fn disarm(&self) {
        self.0.store(0, Ordering::SeqCst);
    }

    /// The pid it would signal, if armed.
    pub fn armed(&self) -> Option<u32> {
        Some(self.0.load(Ordering::SeqCst)).filter(|&p| p != 0)
    }

    /// SIGKILLs the QEMU process, if one runs.
    pub fn kill(&self) {
        let pid = self.0.load(Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: signalling a QEMU child of this process.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}
