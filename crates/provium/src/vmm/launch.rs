//! [`Instance`]: one running QEMU tied to its agent connection, control
//! socket and scratch directory; launching one (boot or restore), and what
//! can be done to a running one (pause, reset, save, stop).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use provium_protocol::HelloOk;

use super::argv::{self, VmPaths};
use super::console::{format_console, tail_of, CONSOLE_TAIL_BYTES};
use super::process::{self, QemuProcess, SpawnError};
use super::qmp::{Qmp, QmpError};
use super::shm::shared_ram;
use super::spec::{Boot, LaunchSpec, Ram};
use super::{rng, snapshot};
use crate::agent::{AgentClient, AgentError};
use crate::cleanup::ScratchDir;

/// Transport ids start at 3, like vsock guest CIDs.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(3);

/// How long a QMP command may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create a scratch directory")]
    Scratch(#[source] std::io::Error),
    #[error("cannot bind the host end of NIC {index} (`{path}`)")]
    NicSocket {
        index: u8,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve disk `{id}` from `{path}`")]
    DiskServer {
        id: String,
        path: PathBuf,
        #[source]
        source: super::nbd::NbdError,
    },
    #[error("disk `{id}` has no file to serve (a launch must be given one per served disk)")]
    DiskFile { id: String },
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
    #[error("restoring the snapshot `{path}` failed")]
    Restore {
        path: PathBuf,
        #[source]
        source: QmpError,
    },
    #[error("the migration stream of `{path}` did not finish loading within {after:?}")]
    RestoreTimeout { path: PathBuf, after: Duration },
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
    nics: Vec<NicEnd>,
    /// The disks provium serves, by id (after `qemu`: QEMU goes first).
    disks: Vec<ServedDisk>,
}

/// One disk provium serves to this QEMU, and the file behind it.
pub struct ServedDisk {
    pub id: String,
    pub file: PathBuf,
    pub server: super::nbd::BlockServer,
}

/// The host end of one NIC: the socket QEMU sends the guest's frames to,
/// and where frames for the guest go (see `argv::nic_paths`).
pub struct NicEnd {
    pub index: u8,
    pub mac: super::Mac,
    pub socket: UnixDatagram,
    pub peer: PathBuf,
}

/// A QEMU that has started and answers on its control socket; its agent
/// has not been spoken to yet.
struct Started {
    qemu: QemuProcess,
    qmp: Qmp,
    paths: VmPaths,
    scratch: ScratchDir,
    ram: Option<(PathBuf, ScratchDir)>,
    nics: Vec<NicEnd>,
    disks: Vec<ServedDisk>,
    start: Instant,
}

/// Serves every disk of `spec` that provium serves, from the files the
/// spec names, on their sockets (before QEMU starts and connects).
fn serve_disks(spec: &LaunchSpec) -> Result<Vec<ServedDisk>, LaunchError> {
    let mut served = Vec::new();
    for (id, readonly) in spec.machine.served_disks() {
        let file = spec.disk_files.get(&id).ok_or_else(|| LaunchError::DiskFile { id: id.clone() })?.clone();
        let failed = |source| LaunchError::DiskServer { id: id.clone(), path: file.clone(), source };
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(&file)
            .map_err(|e| failed(super::nbd::NbdError::Image(e)))?;
        let server =
            super::nbd::BlockServer::serve(&argv::disk_socket(&id, &spec.scratch), image, readonly).map_err(failed)?;
        served.push(ServedDisk { id, file, server });
    }
    Ok(served)
}

/// Binds the host end of every NIC of `spec` (before QEMU starts, so the
/// guest's first frames have somewhere to go).
fn bind_nics(spec: &LaunchSpec) -> Result<Vec<NicEnd>, LaunchError> {
    let mut ends = Vec::new();
    for (index, mac) in spec.machine.nics() {
        let (peer, host) = argv::nic_paths(index, &spec.scratch);
        let socket = UnixDatagram::bind(&host)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|source| LaunchError::NicSocket { index, path: host.clone(), source })?;
        ends.push(NicEnd { index, mac, socket, peer });
    }
    Ok(ends)
}

/// Creates the scratch directory and what goes in it, spawns QEMU and
/// connects to its control socket.
fn start(label: &str, mut spec: LaunchSpec, files: Option<Vec<u8>>) -> Result<Started, LaunchError> {
    let scratch = ScratchDir::new(label).map_err(LaunchError::Scratch)?;
    spec.scratch = scratch.path().to_path_buf();
    if let Some(seed) = spec.rng_seed() {
        rng::serve(&scratch.path().join(argv::RNG_SOCKET), seed).map_err(LaunchError::Scratch)?;
    }
    if let (Some(files), Boot::Kernel { initrd: spec_initrd, .. }) = (files, &mut spec.boot) {
        let mut initrd = std::fs::read(&*spec_initrd).map_err(LaunchError::Files)?;
        crate::guest::pad_to_page(&mut initrd);
        initrd.extend(files);
        crate::guest::pad_to_page(&mut initrd);
        let merged = scratch.path().join("initrd-with-files.cpio");
        std::fs::write(&merged, initrd).map_err(LaunchError::Files)?;
        *spec_initrd = merged;
    }
    let ram = match spec.ram {
        Ram::Anonymous => shared_ram(label, spec.machine.memory_mib),
        _ => None,
    };
    if let Some((file, _)) = &ram {
        spec.ram = Ram::SharedFile(file.clone());
    }
    let nics = bind_nics(&spec)?;
    let disks = serve_disks(&spec)?;
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
    Ok(Started { qemu, qmp, paths, scratch, ram, nics, disks, start })
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
        let Started { qemu, qmp, paths, scratch, ram, nics, disks, .. } = self;
        Ok(Instance { agent, qmp, qemu, hello, paths, boot_time, id, scratch, ram, nics, disks })
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
    /// must describe the saved guest (its machine, as the header records
    /// it); its boot is made [`Boot::Incoming`].
    pub fn restore(
        label: &str,
        mut spec: LaunchSpec,
        snapshot: &std::path::Path,
        agent_timeout: Duration,
    ) -> Result<Instance, LaunchError> {
        spec.boot = Boot::Incoming;
        // A RAM image in the file is mapped, not streamed: the stream was
        // written without RAM, and this end must read it the same way.
        let image = matches!(spec.ram, Ram::Image { .. });
        let mut st = start(label, spec, None)?;
        // A QEMU that cannot load the stream exits; its stderr says why.
        let qmp_failed = |st: &mut Started, e: QmpError| {
            if st.qemu.wait_exit(Duration::from_millis(300)) {
                exited(&mut st.qemu, &st.paths)
            } else {
                LaunchError::Restore { path: snapshot.to_path_buf(), source: e }
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
                return Err(LaunchError::RestoreTimeout {
                    path: snapshot.to_path_buf(),
                    after: Duration::from_secs(60),
                });
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

    /// Saves the guest into `path` (see [`snapshot`]), its served disks'
    /// contents included; returns its size.
    pub fn save(&self, path: &std::path::Path, meta: &snapshot::SnapshotMeta) -> Result<u64, snapshot::SaveError> {
        let disks: Vec<snapshot::DiskFile<'_>> =
            self.disks.iter().map(|d| snapshot::DiskFile { id: &d.id, file: &d.file, disk: d.server.disk() }).collect();
        snapshot::save(&self.qmp, path, meta, self.ram.as_ref().map(|(f, _)| f.as_path()), &disks)
    }

    /// The live handle on served disk `id`: its faults, power cut, and the
    /// host's view of its sectors.
    pub fn disk(&self, id: &str) -> Option<super::nbd::DiskHandle> {
        self.disks.iter().find(|d| d.id == id).map(|d| d.server.disk())
    }

    /// The host end of NIC `index` (a second handle on its socket).
    pub fn nic_end(&self, index: u8) -> Option<std::io::Result<NicEnd>> {
        let end = self.nics.iter().find(|n| n.index == index)?;
        Some(end.socket.try_clone().map(|socket| NicEnd { index, mac: end.mac, socket, peer: end.peer.clone() }))
    }

    /// The Ethernet address of NIC `index`.
    pub fn nic_mac(&self, index: u8) -> Option<super::Mac> {
        self.nics.iter().find(|n| n.index == index).map(|n| n.mac)
    }

    /// Raises or lowers NIC `index`'s link as the guest sees it (QMP
    /// `set_link`).
    pub fn set_link(&self, index: u8, up: bool) -> Result<(), QmpError> {
        let args = serde_json::json!({ "name": format!("nic{index}"), "up": up });
        self.qmp.execute("set_link", Some(args), QMP_TIMEOUT).map(drop)
    }

    /// Freezes the vCPUs (QMP `stop`).
    pub fn pause(&self) -> Result<(), QmpError> {
        self.qmp.execute("stop", None, QMP_TIMEOUT).map(drop)
    }

    /// Wakes a guest that suspended itself to RAM (QMP `system_wakeup`).
    pub fn wakeup(&self) -> Result<(), QmpError> {
        self.qmp.execute("system_wakeup", None, QMP_TIMEOUT).map(drop)
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
