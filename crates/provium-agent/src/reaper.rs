//! The one place that reaps child processes.
//!
//! As a standalone init the agent inherits every orphan, so it must reap
//! with `waitid(P_ALL)`; that would steal exit statuses from anyone waiting
//! on a specific child. So all waiting goes through here: a spawner holds
//! the registry lock across `spawn` + [`Registry::insert`], and the reaper
//! thread delivers each status to the registered [`ExitSlot`]. Orphans'
//! statuses are dropped.
//!
//! The registry also knows which registered children still run and the
//! worst status of those that ended: a worker agent signals the ones that
//! run ([`live`]) and joins them ([`wait_none_live`], [`worst_status`]).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// Where the reaper puts one child's wait status and how it wakes the waiter.
pub struct ExitSlot {
    status: Mutex<Option<i32>>,
    event: OwnedFd,
}

impl ExitSlot {
    fn new() -> Arc<ExitSlot> {
        // SAFETY: eventfd(2) takes only integers and touches no memory of
        // ours; it returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is non-negative (asserted above), so it is the open
        // descriptor eventfd just created; nothing else holds it, so the
        // OwnedFd becomes its only owner and closes it exactly once.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        Arc::new(ExitSlot { status: Mutex::new(None), event })
    }

    /// Readable (for `poll`) once the child has exited.
    pub fn fd(&self) -> i32 {
        self.event.as_raw_fd()
    }

    /// The raw wait status, once the child has exited.
    pub fn status(&self) -> Option<i32> {
        *self.status.lock().unwrap()
    }

    fn deliver(&self, status: i32) {
        *self.status.lock().unwrap() = Some(status);
        let one: u64 = 1;
        // SAFETY: write(2) reads 8 bytes at the pointer, which points at
        // `one`, a live local u64 (exactly 8 bytes); the descriptor stays
        // open because `self` owns it.
        unsafe { libc::write(self.event.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// A registered child: where its status goes, and whether it counts among
/// the processes this agent started (a worker agent does not).
struct Waiter {
    slot: Arc<ExitSlot>,
    counted: bool,
}

#[derive(Default)]
pub struct Registry {
    waiting: HashMap<i32, Waiter>,
    spawned: u64,
    /// The worst [`shell_status`] of the registered children reaped so far.
    worst: i32,
}

impl Registry {
    /// Registers a just-spawned child; call with the lock held since before
    /// the spawn.
    pub fn insert(&mut self, pid: i32) -> Arc<ExitSlot> {
        self.register(pid, true)
    }

    /// Like [`Registry::insert`], for a child that is not one of the
    /// processes [`live`] and [`worst_status`] account for (a worker).
    pub fn insert_uncounted(&mut self, pid: i32) -> Arc<ExitSlot> {
        self.register(pid, false)
    }

    fn register(&mut self, pid: i32, counted: bool) -> Arc<ExitSlot> {
        let slot = ExitSlot::new();
        self.waiting.insert(pid, Waiter { slot: slot.clone(), counted });
        self.spawned += 1;
        SPAWNED.notify_all();
        slot
    }
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
static SPAWNED: Condvar = Condvar::new();
/// Notified whenever a registered child is reaped.
static REAPED: Condvar = Condvar::new();

/// A wait status as a shell reports it: the exit code, or `128 + n` for
/// signal `n`.
pub fn shell_status(raw: i32) -> i32 {
    if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        libc::WEXITSTATUS(raw)
    }
}

/// The registered children that have not exited yet (each leads its own
/// process group).
pub fn live() -> Vec<i32> {
    let mut pids: Vec<i32> = lock().waiting.iter().filter(|(_, w)| w.counted).map(|(&pid, _)| pid).collect();
    pids.sort_unstable();
    pids
}

/// The worst [`shell_status`] of the registered children reaped so far (0
/// if none).
pub fn worst_status() -> i32 {
    lock().worst
}

/// Waits up to `timeout` until no registered child runs; whether none does.
pub fn wait_none_live(timeout: std::time::Duration) -> bool {
    let reg = lock();
    let running = |r: &mut Registry| r.waiting.values().any(|w| w.counted);
    let (mut reg, _) = REAPED.wait_timeout_while(reg, timeout, running).unwrap();
    !running(&mut reg)
}

fn registry() -> &'static Mutex<Registry> {
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

/// Takes the registry lock; hold it across `spawn` and `insert`.
pub fn lock() -> MutexGuard<'static, Registry> {
    registry().lock().unwrap()
}

pub fn start() {
    std::thread::Builder::new().name("reaper".into()).spawn(reap_forever).expect("spawn reaper thread");
}

fn reap_forever() {
    loop {
        let seen = lock().spawned;
        let mut status = 0;
        // SAFETY: waitpid(2) writes one int at the pointer, and `status` is
        // a live local i32 borrowed mutably for the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid > 0 {
            let mut reg = lock();
            if let Some(w) = reg.waiting.remove(&pid) {
                if w.counted {
                    reg.worst = reg.worst.max(shell_status(status));
                }
                drop(reg);
                w.slot.deliver(status);
                REAPED.notify_all();
            }
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ECHILD) {
            // No children: sleep until a spawn happens after `seen`.
            let reg = lock();
            let _unused =
                SPAWNED.wait_timeout_while(reg, std::time::Duration::from_secs(1), |r| r.spawned == seen).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_a_shell_reads_them() {
        assert_eq!(shell_status(3 << 8), 3);
        assert_eq!(shell_status(libc::SIGKILL), 137);
        assert_eq!(shell_status(0), 0);
    }
}
