//! What a VM operation can fail with. Every variant names the VM; causes are
//! kept as `#[source]` so the whole chain reads in one line.

use crate::agent::AgentError;
use crate::image::ImageError;
use crate::vmm::snapshot::{SaveError, SnapshotFileError};
use crate::vmm::LaunchError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Nic(#[from] super::nics::NicError),
    #[error(transparent)]
    Disk(#[from] super::disks::DiskError),
    /// The NixOS-driver conveniences (`super::nixos`).
    #[error(transparent)]
    Nixos(#[from] super::nixos::NixosError),
    /// `vm `w` is created; reset needs a booted VM: call vm:boot() first`.
    #[error("vm `{vm}` is {}; {action} needs {}: {way_out}", state.as_str(), needs.as_str())]
    WrongState { vm: String, state: super::VmState, action: &'static str, needs: super::state::Needs, way_out: String },
    /// The VM was killed by provium (a timeout), not by a crash.
    #[error("vm `{vm}` was stopped by {by} (cannot {op}); create a new VM (or restore a snapshot into this one)")]
    Stopped { vm: String, op: &'static str, by: String },
    /// A boot option that cannot work as given.
    #[error("vm `{vm}`: boot option `{option}` {message}")]
    BadOption { vm: String, option: &'static str, message: String },
    /// The pool (or the file's claim) could not give the VM its memory
    /// and vCPUs; `action` is `boot` or `restore`.
    #[error("vm `{vm}`: {action} cannot reserve its memory and vCPUs")]
    Pool {
        vm: String,
        action: &'static str,
        #[source]
        source: Box<crate::pool::PoolError>,
    },
    #[error("vm `{vm}`: cannot boot")]
    Image {
        vm: String,
        #[source]
        source: Box<ImageError>,
    },
    /// Starting or restarting QEMU or the agent failed; `action` is what
    /// was being done (`boot`, `restore`, `reset`, `reconnect`).
    #[error("vm `{vm}`: {action} failed")]
    Launch {
        vm: String,
        action: &'static str,
        #[source]
        source: Box<LaunchError>,
    },
    #[error("vm `{vm}`: {op} failed")]
    Agent {
        vm: String,
        op: &'static str,
        #[source]
        source: AgentError,
    },
    #[error("vm `{vm}`: {op}: {message}")]
    Os { vm: String, op: &'static str, message: String, errno: Option<i32> },
    /// A handle (`file `/x``) used after `close()`.
    #[error("vm `{vm}`: {op}: {what} is closed")]
    HandleClosed { vm: String, op: &'static str, what: String },
    #[error("vm `{vm}`: the guest did not power off within 60s of the power button; it was stopped")]
    PowerButtonIgnored { vm: String },
    #[error("vm `{vm}`: {op} failed")]
    Qmp {
        vm: String,
        op: &'static str,
        #[source]
        source: crate::vmm::qmp::QmpError,
    },
    /// A wait done by the agent ran out of time.
    #[error("vm `{vm}`: {op}: {message}")]
    TimedOut { vm: String, op: &'static str, message: String },
    #[error("vm `{vm}` died during {op}: {why}{console}")]
    Died { vm: String, op: &'static str, why: String, console: String },
    #[error(
        "vm:snapshot() failed for `{vm}`: {files} open file handle(s), {streams} open stream(s)\n{}\n  Close \
         streams and files before snapshotting.",
        list.iter().map(|l| format!("  - {l}")).collect::<Vec<_>>().join("\n")
    )]
    NotQuiescent { vm: String, files: usize, streams: usize, list: Vec<String> },
    #[error("vm `{vm}`: snapshot failed")]
    Save {
        vm: String,
        #[source]
        source: SaveError,
    },
    #[error("vm `{vm}`: cannot restore")]
    SnapshotFile {
        vm: String,
        #[source]
        source: SnapshotFileError,
    },
    #[error("vm `{vm}`: cannot restore `{path}`: it was saved under {saved}, and this run uses {here}")]
    AccelMismatch { vm: String, path: String, saved: String, here: String },
    /// A layer-0 call the agent would refuse (a buffer index out of range,
    /// a pointer outside its buffer, too many bytes); nothing was sent.
    #[error("vm `{vm}`: {op}: {why}")]
    BadCall { vm: String, op: &'static str, why: String },
    /// `await()` on a pending syscall whose result was already taken.
    #[error("vm `{vm}`: {op}: handle already awaited")]
    AlreadyAwaited { vm: String, op: &'static str },
    /// The worker's process ended (the agent's message says which worker
    /// and how).
    #[error("vm `{vm}`: {op}: {message}; spawn a new one with vm:spawn_worker()")]
    WorkerGone { vm: String, op: &'static str, message: String },
    /// An operation on a worker that was joined or closed.
    #[error("vm `{vm}`: {op}: worker {worker} was {state}; spawn a new one with vm:spawn_worker()")]
    WorkerDone { vm: String, op: &'static str, worker: u64, state: &'static str },
}
