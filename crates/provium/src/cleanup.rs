//! Nothing left behind: scratch directories and child processes are owned by
//! RAII guards, and this module makes sure they also go away on Ctrl-C,
//! SIGTERM, or after a crash of an earlier run.
//!
//! * Every QEMU child is registered here while it lives; a signal handler
//!   thread kills the registered children, removes the registered
//!   directories and exits with 128+signal.
//! * QEMU also gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with provium even
//!   on `SIGKILL`; the scratch directories such a crash leaves are swept by
//!   the next run ([`sweep_stale`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

#[derive(Default)]
struct Live {
    pids: HashMap<u64, i32>,
    dirs: HashMap<u64, PathBuf>,
}

fn live() -> &'static Mutex<Live> {
    static LIVE: OnceLock<Mutex<Live>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// The root under which every scratch directory of this user lives.
pub fn scratch_root() -> PathBuf {
    // SAFETY: getuid(2) takes no arguments, touches no memory and cannot
    // fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("provium-{uid}"))
}

/// Where guest RAM files go: `/dev/shm/provium-<uid>` when `/dev/shm` is a
/// writable directory (RAM files must live in memory, not on a disk), else
/// `None`.
pub fn shm_root() -> Option<PathBuf> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| {
        // SAFETY: getuid(2) takes no arguments, touches no memory and cannot
        // fail.
        let uid = unsafe { libc::getuid() };
        let root = Path::new("/dev/shm").join(format!("provium-{uid}"));
        std::fs::create_dir_all(&root).ok().map(|_| root)
    })
    .clone()
}

/// A temporary directory removed on drop (and on Ctrl-C). Its name embeds
/// our pid so a later run can tell whether its owner is still alive.
#[derive(Debug)]
pub struct ScratchDir {
    id: u64,
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> std::io::Result<ScratchDir> {
        ScratchDir::new_in(&scratch_root(), label)
    }

    /// A scratch directory under `root` (e.g. [`shm_root`]).
    pub fn new_in(root: &Path, label: &str) -> std::io::Result<ScratchDir> {
        std::fs::create_dir_all(root)?;
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let clean: String =
            label.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(16).collect();
        let path = root.join(format!("{}-{id}-{clean}", std::process::id()));
        std::fs::create_dir(&path)?;
        crate::sync::lock(live()).dirs.insert(id, path.clone());
        Ok(ScratchDir { id, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        crate::sync::lock(live()).dirs.remove(&self.id);
    }
}

/// Registration of a live child process; unregisters on drop.
#[derive(Debug)]
pub struct ChildGuard(u64);

pub fn register_child(pid: i32) -> ChildGuard {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    crate::sync::lock(live()).pids.insert(id, pid);
    ChildGuard(id)
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        crate::sync::lock(live()).pids.remove(&self.0);
    }
}

/// Kills every registered child and removes every registered directory.
pub fn kill_everything() {
    let l = crate::sync::lock(live());
    for pid in l.pids.values() {
        // SAFETY: kill(2) takes only integers and touches no memory of
        // ours, so it cannot break a Rust invariant; the pid is one that
        // `register_child` recorded for a child of ours still registered
        // (not yet reaped, so the pid cannot have been reused).
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    for pid in l.pids.values() {
        let mut status = 0;
        // SAFETY: waitpid(2) writes one int at the pointer, and `status` is a
        // live local i32 borrowed mutably for the call; a pid that is already
        // reaped only makes it fail with ECHILD.
        unsafe { libc::waitpid(*pid, &mut status, 0) };
    }
    for dir in l.dirs.values() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Installs the SIGINT/SIGTERM/SIGHUP handler thread (once).
pub fn install_signal_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    eprintln!("\nprovium: interrupted (signal {sig}); stopping VMs and cleaning up");
                    kill_everything();
                    std::process::exit(128 + sig);
                }
            })
            .expect("spawn signal thread");
    });
}

/// Removes scratch directories (and RAM files) left by provium processes
/// that no longer run.
pub fn sweep_stale() {
    sweep_root(&scratch_root());
    if let Some(shm) = shm_root() {
        sweep_root(&shm);
    }
}

fn sweep_root(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill(2) takes only integers and touches no memory of ours;
        // with signal 0 it sends nothing and only reports whether `pid`
        // exists (0, or EPERM when it belongs to another user).
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
