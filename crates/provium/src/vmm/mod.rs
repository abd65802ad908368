//! Running guests under QEMU: the command line ([`argv`]), the process
//! ([`process`]), its control socket ([`qmp`]), the accelerator choice
//! ([`accel`]), and [`Instance`], which ties one running QEMU to its agent
//! connection and scratch directory.
//!
//! This module knows nothing of Lua or of VM states; `crate::vm` does.

pub mod accel;
pub mod argv;
pub mod process;
pub mod qmp;
pub mod rng;
pub mod snapshot;
pub mod sparse;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use provium_protocol::HelloOk;

use crate::agent::{AgentClient, AgentError};
use crate::cleanup::ScratchDir;
pub use argv::{Accel, LaunchSpec, Ram, VmPaths};
use process::{QemuProcess, SpawnError};
use qmp::{Qmp, QmpError};

/// Transport ids start at 3, like vsock guest CIDs.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(3);

/// How long a QMP command may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the console log error messages quote.
pub const CONSOLE_TAIL_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create a scratch directory")]
    Scratch(#[source] std::io::Error),
    #[error("cannot add the boot option `files` to the initramfs")]
    Files(#[source] std::io::Error),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("QEMU exited during boot ({status}){stderr}{console}")]
    QemuExited { status: String, stderr: String, console: String },
    #[error("QEMU's control socket did not come up")]
    Qmp(#[source] QmpError),
    #[error(
        "the guest agent did not come up within {timeout:?} (is the kernel panicking, or is the image's init not \
         starting the agent?){console}"
    )]
    AgentTimeout { timeout: Duration, console: String },
    #[error("the guest agent failed its handshake")]
    Agent(#[source] AgentError),
    #[error("restoring the snapshot failed: {0}")]
    Restore(String),
}

/// One running QEMU with its agent connection. Dropping it kills QEMU and
/// removes its scratch directory (fields drop in declaration order).
pub struct Instance {
    pub agent: AgentClient,
    pub qmp: Qmp,
    pub qemu: QemuProcess,
    pub hello: HelloOk,
    pub paths: VmPaths,
    /// Spawn → agent handshake.
    pub boot_time: Duration,
    /// The transport id: unique among this process's VM instances.
    pub id: u64,
    scratch: ScratchDir,
    /// The guest's shared RAM file and its directory in `/dev/shm`.
    ram: Option<(PathBuf, ScratchDir)>,
}

/// Connects to a Unix socket QEMU is about to create, retrying until
/// `deadline`.
pub fn connect_when_ready(
    path: &std::path::Path,
    deadline: Instant,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Formats the console tail for an error message ("" when empty).
pub fn format_console(tail: &str) -> String {
    if tail.trim().is_empty() {
        "\n--- guest console: (empty) ---".to_string()
    } else {
        format!("\n--- guest console (last lines) ---\n{}\n--- end guest console ---", tail.trim_end())
    }
}

/// The last `max` bytes of a console log, as text with `\n` line ends.
pub fn tail_of(path: &std::path::Path, max: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]).replace("\r\n", "\n").replace('\r', "");
    // Drop a partial first line when we cut in the middle of one.
    match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    }
}

/// A QEMU that has started and answers on its control socket; its agent
/// has not been spoken to yet.
struct Started {
    qemu: QemuProcess,
    qmp: Qmp,
    paths: VmPaths,
    scratch: ScratchDir,
    ram: Option<(PathBuf, ScratchDir)>,
    start: Instant,
}

/// A RAM file in shared memory for a new guest, when the host has a
/// `/dev/shm` with room for all of it and `PROVIUM_SHM` is not `off`.
/// `None`: the guest gets anonymous memory (snapshots then carry RAM in the
/// stream: slower, same result). The room matters: a guest touching memory
/// past a full tmpfs would crash QEMU.
fn shared_ram(label: &str, memory_mib: u64) -> Option<(PathBuf, ScratchDir)> {
    if std::env::var("PROVIUM_SHM").is_ok_and(|v| v == "off" || v == "0") {
        return None;
    }
    let root = crate::cleanup::shm_root()?;
    if free_bytes(&root)? < (memory_mib << 20) + (256 << 20) {
        tracing::debug!(vm = label, "not enough room in /dev/shm for guest RAM; using anonymous memory");
        return None;
    }
    let dir = ScratchDir::new_in(&root, label).ok()?;
    Some((dir.path().join("ram"), dir))
}

/// Bytes free for unprivileged users on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid
    // NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Creates the scratch directory and what goes in it, spawns QEMU and
/// connects to its control socket.
fn start(label: &str, mut spec: LaunchSpec, files: Option<Vec<u8>>) -> Result<Started, LaunchError> {
    let scratch = ScratchDir::new(label).map_err(LaunchError::Scratch)?;
    spec.scratch = scratch.path().to_path_buf();
    if let Some(seed) = spec.rng_seed {
        rng::serve(&scratch.path().join(argv::RNG_SOCKET), seed).map_err(LaunchError::Scratch)?;
    }
    if let Some(files) = files {
        let mut initrd = std::fs::read(&spec.initrd).map_err(LaunchError::Files)?;
        crate::guest::pad_to_page(&mut initrd);
        initrd.extend(files);
        crate::guest::pad_to_page(&mut initrd);
        let merged = scratch.path().join("initrd-with-files.cpio");
        std::fs::write(&merged, initrd).map_err(LaunchError::Files)?;
        spec.initrd = merged;
    }
    let ram = match spec.ram {
        Ram::Anonymous => shared_ram(label, spec.memory_mib),
        _ => None,
    };
    if let Some((file, _)) = &ram {
        spec.ram = Ram::SharedFile(file.clone());
    }
    let paths = VmPaths::in_dir(scratch.path());
    let argv = argv::launch_argv(&spec);
    tracing::debug!(vm = label, argv = ?argv, "launching QEMU");
    let start = Instant::now();
    let mut qemu = QemuProcess::spawn(&process::qemu_binary(), &argv, &scratch.path().join("qemu.stderr"))?;
    let qmp = match Qmp::connect(&paths.qmp, start + Duration::from_secs(10)) {
        Ok(q) => q,
        Err(e) => {
            if qemu.wait_exit(Duration::from_millis(200)) {
                return Err(exited(&mut qemu, &paths));
            }
            return Err(LaunchError::Qmp(e));
        }
    };
    Ok(Started { qemu, qmp, paths, scratch, ram, start })
}

/// The error for a QEMU that exited before the guest was ready.
fn exited(qemu: &mut QemuProcess, paths: &VmPaths) -> LaunchError {
    let status = qemu.exit_status().map(|s| s.to_string()).unwrap_or_else(|| "killed".into());
    let stderr = qemu.stderr();
    let stderr = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
    LaunchError::QemuExited {
        status,
        stderr,
        console: format_console(&tail_of(&paths.console_log, CONSOLE_TAIL_BYTES)),
    }
}

impl Started {
    /// Connects to the agent and waits for its handshake.
    fn connect_agent(&self) -> Result<AgentClient, LaunchError> {
        AgentClient::connect(&self.paths.agent, self.start + Duration::from_secs(10)).map_err(LaunchError::Agent)
    }

    /// Says Hello on `agent` (connected now if `None`) and waits for the
    /// answer.
    fn handshake(
        mut self,
        label: &str,
        agent: Option<AgentClient>,
        agent_timeout: Duration,
    ) -> Result<Instance, LaunchError> {
        let agent = match agent {
            Some(a) => a,
            None => self.connect_agent()?,
        };
        let qemu = &self.qemu;
        let alive = || if qemu.has_exited() { Err("QEMU exited".to_string()) } else { Ok(()) };
        let hello = match agent.handshake(agent_timeout, &alive) {
            Ok(h) => h,
            Err(AgentError::HandshakeTimeout(timeout)) => {
                let console = format_console(&tail_of(&self.paths.console_log, CONSOLE_TAIL_BYTES));
                return Err(LaunchError::AgentTimeout { timeout, console });
            }
            Err(e) => {
                if self.qemu.wait_exit(Duration::from_millis(200)) {
                    return Err(exited(&mut self.qemu, &self.paths));
                }
                return Err(LaunchError::Agent(e));
            }
        };
        let boot_time = self.start.elapsed();
        tracing::debug!(vm = label, ?boot_time, kernel = %hello.kernel, "agent ready");
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Started { qemu, qmp, paths, scratch, ram, .. } = self;
        Ok(Instance { agent, qmp, qemu, hello, paths, boot_time, id, scratch, ram })
    }
}

impl Instance {
    /// Launches QEMU and waits for the agent's handshake.
    /// `files` is a newc archive appended to the initrd for this boot.
    pub fn launch(
        label: &str,
        spec: LaunchSpec,
        files: Option<Vec<u8>>,
        agent_timeout: Duration,
    ) -> Result<Instance, LaunchError> {
        start(label, spec, files)?.handshake(label, None, agent_timeout)
    }

    /// Starts a new QEMU from a snapshot file (see [`snapshot`]) and returns
    /// once the restored guest's agent has answered a fresh Hello. `spec`
    /// must describe the saved guest (memory, CPUs, devices).
    pub fn restore(
        label: &str,
        mut spec: LaunchSpec,
        snapshot: &std::path::Path,
        agent_timeout: Duration,
    ) -> Result<Instance, LaunchError> {
        spec.incoming = true;
        // A RAM image in the file is mapped, not streamed: the stream was
        // written without RAM, and this end must read it the same way.
        let image = matches!(spec.ram, Ram::Image { .. });
        let mut st = start(label, spec, None)?;
        // A QEMU that cannot load the stream exits; its stderr says why.
        let qmp_failed = |st: &mut Started, e: QmpError| {
            if st.qemu.wait_exit(Duration::from_millis(300)) {
                exited(&mut st.qemu, &st.paths)
            } else {
                LaunchError::Restore(format!("`{}`: {e}", snapshot.display()))
            }
        };
        if let Err(e) = snapshot::set_ignore_shared(&st.qmp, image) {
            return Err(qmp_failed(&mut st, e));
        }
        tracing::debug!(vm = label, after = ?st.start.elapsed(), "QEMU answers on QMP; loading the snapshot");
        // Connected before the state loads, the port looks to the guest as
        // it did when saved (host connected): no close/open events for the
        // agent to go through, and the Hello is read as soon as it runs.
        let agent = st.connect_agent()?;
        let channels = snapshot::file_channel(snapshot);
        if let Err(e) = st.qmp.execute("migrate-incoming", Some(channels), QMP_TIMEOUT) {
            return Err(qmp_failed(&mut st, e));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if st.qemu.has_exited() {
                st.qemu.wait_exit(Duration::from_millis(100));
                return Err(exited(&mut st.qemu, &st.paths));
            }
            let status = match st.qmp.execute("query-status", None, QMP_TIMEOUT) {
                Ok(s) => s,
                Err(e) => return Err(qmp_failed(&mut st, e)),
            };
            if status["status"] != "inmigrate" {
                break;
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::Restore("the migration stream did not finish loading within 60s".into()));
            }
            // With the RAM mapped, only device state loads: about a millisecond.
            std::thread::sleep(Duration::from_micros(500));
        }
        if let Err(e) = st.qmp.execute("cont", None, QMP_TIMEOUT) {
            return Err(qmp_failed(&mut st, e));
        }
        tracing::debug!(vm = label, loaded_after = ?st.start.elapsed(), "snapshot loaded; guest continues");
        st.handshake(label, Some(agent), agent_timeout)
    }

    /// Drops the agent connection and opens a new one with a fresh Hello
    /// (the agent forgets the old session's channels).
    pub fn reconnect_agent(&mut self, timeout: Duration) -> Result<(), LaunchError> {
        self.agent.close();
        let agent = AgentClient::connect(&self.paths.agent, Instant::now() + Duration::from_secs(5))
            .map_err(LaunchError::Agent)?;
        let qemu = &self.qemu;
        let alive = || if qemu.has_exited() { Err("QEMU exited".to_string()) } else { Ok(()) };
        self.hello = agent.handshake(timeout, &alive).map_err(LaunchError::Agent)?;
        self.agent = agent;
        Ok(())
    }

    /// Saves the guest into `path` (see [`snapshot`]); returns its size.
    pub fn save(&self, path: &std::path::Path, meta: &snapshot::SnapshotMeta) -> Result<u64, snapshot::SaveError> {
        snapshot::save(&self.qmp, path, meta, self.ram.as_ref().map(|(f, _)| f.as_path()))
    }

    /// Freezes the vCPUs (QMP `stop`).
    pub fn pause(&self) -> Result<(), QmpError> {
        self.qmp.execute("stop", None, QMP_TIMEOUT).map(drop)
    }

    /// Thaws the vCPUs (QMP `cont`).
    pub fn resume(&self) -> Result<(), QmpError> {
        self.qmp.execute("cont", None, QMP_TIMEOUT).map(drop)
    }

    /// Warm reboot (QMP `system_reset`); returns once the agent of the new
    /// boot has said Hello.
    pub fn reset(&mut self, agent_timeout: Duration) -> Result<(), LaunchError> {
        // QEMU runs with -no-reboot so that a guest that panics or reboots
        // ends instead of looping; for a reset asked by the host, reset.
        let action = |reboot: &str| serde_json::json!({ "reboot": reboot });
        self.qmp.execute("set-action", Some(action("reset")), QMP_TIMEOUT).map_err(LaunchError::Qmp)?;
        let mark = self.qmp.mark();
        let reset = self.qmp.execute("system_reset", None, QMP_TIMEOUT);
        // Only after the reset has happened may a Hello reach the new agent.
        let happened = self.qmp.wait_event("RESET", mark, QMP_TIMEOUT).is_some();
        self.qmp.execute("set-action", Some(action("shutdown")), QMP_TIMEOUT).map_err(LaunchError::Qmp)?;
        reset.map_err(LaunchError::Qmp)?;
        if !happened {
            return Err(LaunchError::Qmp(QmpError::Timeout("system_reset (RESET event)".into(), QMP_TIMEOUT)));
        }
        self.reconnect_agent(agent_timeout)
    }

    /// Presses the ACPI power button and waits up to `timeout` for the guest
    /// to power off (QEMU exits). Returns whether it did.
    pub fn power_button(&mut self, timeout: Duration) -> Result<bool, QmpError> {
        self.qmp.execute("system_powerdown", None, QMP_TIMEOUT)?;
        Ok(self.qemu.wait_exit(timeout))
    }

    /// The last bytes of the console log.
    pub fn console_tail(&self, max: usize) -> String {
        tail_of(&self.paths.console_log, max)
    }

    /// The whole console log so far.
    pub fn console_log(&self) -> String {
        tail_of(&self.paths.console_log, usize::MAX)
    }

    pub fn scratch(&self) -> &std::path::Path {
        self.scratch.path()
    }

    /// Stops QEMU: QMP `quit`, then SIGTERM/SIGKILL if it lingers. The
    /// scratch directory goes when `self` drops.
    pub fn stop(mut self) {
        if !self.qemu.has_exited() {
            let _ = self.qmp.execute("quit", None, Duration::from_millis(500));
            if !self.qemu.wait_exit(Duration::from_secs(1)) {
                self.qemu.stop(Duration::from_secs(1));
            }
        }
    }
}
