//! The QEMU child process: spawned so it cannot outlive provium, stopped
//! with escalation, and reaped on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cleanup::{self, ChildGuard};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("QEMU (`{binary}`) is not installed or not on PATH; install it with `scripts/setup`")]
    NotFound { binary: String },
    #[error("cannot start QEMU (`{binary}`)")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
}

/// The QEMU binary: `$PROVIUM_QEMU` or `qemu-system-x86_64` from PATH.
pub fn qemu_binary() -> String {
    std::env::var("PROVIUM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// The `qemu-img` to run: `$PROVIUM_QEMU_IMG`, else the one on `PATH`.
pub fn qemu_img_binary() -> String {
    std::env::var("PROVIUM_QEMU_IMG").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "qemu-img".to_string())
}

/// Finds an executable on PATH (or checks an explicit path).
pub fn which(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return Path::new(binary).is_file().then(|| PathBuf::from(binary));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(binary)).find(|p| p.is_file())
}

type SpawnRequest = (Command, Sender<std::io::Result<Child>>);

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// not the process. So every QEMU is forked by one thread that lasts as long
/// as provium: a VM booted from a short-lived thread (a parallel
/// `provium:boot()`) must not die with that thread.
fn spawn_from_lasting_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("qemu-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the QEMU spawner thread");
        Mutex::new(tx)
    });
    let gone = || std::io::Error::other("the QEMU spawner thread is gone");
    let (reply, answer) = channel();
    crate::sync::lock(spawner).send((cmd, reply)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

pub struct QemuProcess {
    child: Child,
    _registered: ChildGuard,
    stderr_path: PathBuf,
    exited: Option<std::process::ExitStatus>,
}

impl QemuProcess {
    /// Starts QEMU with `argv`; its stderr goes to `stderr_path`.
    pub fn spawn(binary: &str, argv: &[String], stderr_path: &Path) -> Result<QemuProcess, SpawnError> {
        if which(binary).is_none() {
            return Err(SpawnError::NotFound { binary: binary.to_string() });
        }
        let stderr = std::fs::File::create(stderr_path)
            .map_err(|source| SpawnError::Spawn { binary: binary.to_string(), source })?;
        // SAFETY: getpid(2) takes no arguments, touches no memory and cannot
        // fail.
        let parent = unsafe { libc::getpid() };
        let mut cmd = Command::new(binary);
        cmd.args(argv).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        // Own process group: a terminal Ctrl-C reaches provium, which then
        // stops QEMU itself after cleaning up.
        cmd.process_group(0);
        // SAFETY: `pre_exec` is unsafe because the closure runs in the forked
        // child, where another thread of ours may have held a lock (the
        // allocator's, stdio's) at the fork: it must not allocate or lock.
        // This one only calls prctl(2), getppid(2) and _exit(2), which are
        // async-signal-safe, takes no lock, allocates nothing, and reads
        // `parent`, an i32 copied into the closure.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1); // provium died before we got here
                }
                Ok(())
            });
        }
        let child = spawn_from_lasting_thread(cmd)
            .map_err(|source| SpawnError::Spawn { binary: binary.to_string(), source })?;
        let registered = cleanup::register_child(child.id() as i32);
        Ok(QemuProcess { child, _registered: registered, stderr_path: stderr_path.to_path_buf(), exited: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if QEMU has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Whether QEMU has exited, without reaping it (usable through `&self`
    /// from liveness checks).
    pub fn has_exited(&self) -> bool {
        if self.exited.is_some() {
            return true;
        }
        // SAFETY: `siginfo_t` is a C struct of integers (and a union of
        // integers and pointers that nothing dereferences), for which all-zero
        // bytes are a valid value (and si_pid must start at 0 for "nothing
        // waitable" under WNOHANG to read as 0).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) writes one siginfo_t at the pointer, and `info` is
        // a live local of that type borrowed mutably for the call. WNOWAIT
        // leaves the child waitable, so `self.child` still owns its status
        // (for `exit_status`) and its pid cannot be reused meanwhile.
        let rc = unsafe {
            libc::waitid(libc::P_PID, self.child.id(), &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
        };
        // SAFETY: `si_pid()` reads a field of the siginfo union; for waitid's
        // answers (SIGCHLD-shaped) that field is the one the kernel fills,
        // and when nothing was waitable it is the zero set above, so it is
        // an initialised integer either way.
        rc == 0 && unsafe { info.si_pid() } != 0
    }

    /// What QEMU wrote to stderr (trimmed).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default().trim().to_string()
    }

    /// Waits up to `grace` for QEMU to exit by itself.
    pub fn wait_exit(&mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            if self.exit_status().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, a grace period, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) {
        if self.exit_status().is_some() {
            return;
        }
        // SAFETY: kill(2) takes only integers and touches no memory of ours,
        // so it cannot break a Rust invariant; the pid is our unreaped child
        // (`exit_status` above found it running), so it cannot be reused.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if !self.wait_exit(grace) {
            self.kill();
        }
    }

    /// SIGKILL at once (no grace: a power cut), and reap.
    pub fn kill(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
