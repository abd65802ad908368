//! [`GuestWorker`]: a second agent process in a guest, with credentials of
//! its own (`vm:spawn_worker{uid=, gid=}`), reached through the main agent,
//! which relays each request to it whole (`Request::Worker`). What it runs
//! runs as it: `run("id -u")` says its uid, a `getpid` syscall gives its
//! pid, its background processes are its children. It is a way to act as
//! another user, not a security boundary.
//!
//! ```text
//! live ──join()──► joined ──close()──► closed
//!   └─────────────close()──────────────┘
//! ```
//!
//! - *live*: it takes commands, processes, syscalls, `kill`;
//! - *joined*: `join` waited for every process it started and gave their
//!   worst exit status; it starts nothing new, but its processes can still
//!   be waited on and read;
//! - *closed*: `close` (or the end of its scope) signalled what it started
//!   (SIGTERM, then SIGKILL after a grace period) and released it: the
//!   worker process exits.
//!
//! A worker whose process died (killed, crashed) makes every call fail with
//! [`VmError::WorkerGone`], naming the VM, the worker and how it ended.
//!
//! **Snapshots.** A worker lives in the guest: in its own process and in the
//! main agent's table, both in guest memory. A snapshot keeps it, and a VM
//! restored from that snapshot has it, serving, under the same handle; so
//! unlike open streams and files (whose host ends would not survive) a live
//! worker does not make `vm:snapshot()` refuse. A VM restored from a
//! snapshot taken *before* the worker existed does not know its handle:
//! calls on it then fail as the agent's `unknown handle` errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use provium_protocol::{ExecOutput, ExecRequest, WorkerSpec};

use super::layer0::{PendingSyscall, SyscallCall, SyscallOutcome};
use super::process::GuestProcess;
use super::{VmError, VmRef};
use crate::agent::{AgentClient, AgentError};
use crate::lab::{Close, CloseRank};
use crate::sync::lock;

/// How long `close()` lets the worker's processes react to SIGTERM before
/// the worker SIGKILLs them.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Live,
    /// Joined, with the worst exit status.
    Joined(i32),
    Closed,
}

impl Life {
    fn as_str(self) -> &'static str {
        match self {
            Life::Live => "live",
            Life::Joined(_) => "joined",
            Life::Closed => "closed",
        }
    }
}

struct Inner {
    vm: VmRef,
    vm_name: String,
    handle: u64,
    pid: u32,
    spec: WorkerSpec,
    life: Life,
}

/// A handle on a worker; clones share it.
#[derive(Clone)]
pub struct GuestWorker(Arc<Mutex<Inner>>);

impl GuestWorker {
    /// Starts a worker on `vm` with the credentials of `spec`; returns once
    /// it serves.
    pub fn spawn(vm: &VmRef, spec: WorkerSpec) -> Result<GuestWorker, VmError> {
        let mut g = lock(vm);
        let (handle, pid) = g.with_agent("spawn_worker", |a| a.spawn_worker(spec.clone()))?;
        Ok(GuestWorker(Arc::new(Mutex::new(Inner {
            vm: vm.clone(),
            vm_name: g.name().to_string(),
            handle,
            pid,
            spec,
            life: Life::Live,
        }))))
    }

    /// The main agent's handle for it.
    pub fn handle(&self) -> u64 {
        lock(&self.0).handle
    }

    /// Its process id in the guest.
    pub fn pid(&self) -> u32 {
        lock(&self.0).pid
    }

    pub fn vm_name(&self) -> String {
        lock(&self.0).vm_name.clone()
    }

    /// `worker(3 on vm `a`: uid 1000 gid 1000, pid 245, live)`.
    pub fn describe(&self) -> String {
        let i = lock(&self.0);
        let (uid, gid) = (i.spec.uid.unwrap_or(0), i.spec.gid.unwrap_or(0));
        format!("worker({} on vm `{}`: uid {uid} gid {gid}, pid {}, {})", i.handle, i.vm_name, i.pid, i.life.as_str())
    }

    fn done(i: &Inner, op: &'static str) -> VmError {
        VmError::WorkerDone { vm: i.vm_name.clone(), op, worker: i.handle, state: i.life.as_str() }
    }

    /// The VM and the handle, if the worker is live.
    fn live(&self, op: &'static str) -> Result<(VmRef, u64), VmError> {
        let i = lock(&self.0);
        match i.life {
            Life::Live => Ok((i.vm.clone(), i.handle)),
            _ => Err(GuestWorker::done(&i, op)),
        }
    }

    /// The handle to relay through for one of its processes: anything but
    /// closed (a joined worker's processes can still be waited on).
    pub(super) fn relay_handle(&self, op: &'static str) -> Result<u64, VmError> {
        let i = lock(&self.0);
        match i.life {
            Life::Closed => Err(GuestWorker::done(&i, op)),
            _ => Ok(i.handle),
        }
    }

    /// Runs `f` on the worker's view of the agent connection.
    fn on<T>(&self, op: &'static str, f: impl FnOnce(&AgentClient) -> Result<T, AgentError>) -> Result<T, VmError> {
        let (vm, handle) = self.live(op)?;
        let mut vm = lock(&vm);
        vm.with_agent(op, |a| f(&a.for_worker(handle)))
    }

    /// Runs a command as the worker (as `vm:run`).
    pub fn exec(&self, req: ExecRequest, stdin: &[u8]) -> Result<ExecOutput, VmError> {
        self.on("worker:run", |a| a.exec(req, stdin))
    }

    /// Starts a background process as the worker (as `vm:run_async`).
    pub fn run_async(&self, command: &str, req: ExecRequest, stdin: &[u8]) -> Result<GuestProcess, VmError> {
        const OP: &str = "worker:run_async";
        let (vm, _) = self.live(OP)?;
        GuestProcess::spawn_on(&vm, Some(self), OP, command, req, stdin)
    }

    /// A raw syscall made by the worker's process.
    pub fn syscall(&self, call: SyscallCall) -> Result<SyscallOutcome, VmError> {
        const OP: &str = "worker:syscall";
        let (vm, handle) = self.live(OP)?;
        let mut vm = lock(&vm);
        vm.syscall_on(Some(handle), OP, call)
    }

    /// Sends a syscall to the worker and returns at once.
    pub fn syscall_async(&self, call: SyscallCall) -> Result<PendingSyscall, VmError> {
        const OP: &str = "worker:syscall_async";
        let (vm, handle) = self.live(OP)?;
        PendingSyscall::start_on(&vm, Some(handle), OP, call)
    }

    /// Sends `signal` to every process the worker started that still runs
    /// (each one's process group); returns how many it reached.
    pub fn kill(&self, signal: i32) -> Result<u64, VmError> {
        self.on("worker:kill", |a| a.kill_all(signal))
    }

    /// Waits for every process the worker started (SIGKILLing those still
    /// running after `timeout`) and returns their worst exit status,
    /// shell-like (`128 + n` for signal `n`; 0 if it started none). The
    /// worker starts nothing new afterwards; joining again gives the same
    /// status.
    pub fn join(&self, timeout: Option<Duration>) -> Result<i32, VmError> {
        const OP: &str = "worker:join";
        if let Life::Joined(status) = lock(&self.0).life {
            return Ok(status);
        }
        let status = self.on(OP, |a| a.join(timeout))?;
        let mut i = lock(&self.0);
        if i.life == Life::Live {
            i.life = Life::Joined(status);
        }
        Ok(status)
    }

    /// SIGTERMs what the worker started, gives it [`CLOSE_GRACE`] (then
    /// SIGKILL), and releases the worker, whose process exits. Idempotent;
    /// errors are ignored (the VM, or the worker, may be gone).
    pub fn close(&self) {
        const OP: &str = "worker:close";
        let (vm, handle, was) = {
            let mut i = lock(&self.0);
            let was = std::mem::replace(&mut i.life, Life::Closed);
            (i.vm.clone(), i.handle, was)
        };
        if was == Life::Closed {
            return;
        }
        let mut vm = lock(&vm);
        if was == Life::Live {
            let _ = vm.with_agent(OP, |a| a.for_worker(handle).kill_all(libc::SIGTERM));
            let _ = vm.with_agent(OP, |a| a.for_worker(handle).join(Some(CLOSE_GRACE)));
        }
        let _ = vm.with_agent(OP, |a| a.release(handle));
    }
}

impl Close for GuestWorker {
    fn rank(&self) -> CloseRank {
        CloseRank::Worker
    }

    fn close(&self) {
        GuestWorker::close(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Vm;

    fn created(name: &str) -> VmRef {
        let images = Arc::new(crate::image::Images::new(Default::default()));
        Arc::new(Mutex::new(Vm::new(name, "default", Default::default(), images, crate::vmm::Accel::Tcg)))
    }

    fn worker(vm: &VmRef, life: Life) -> GuestWorker {
        let spec = WorkerSpec { uid: Some(1000), gid: Some(100), groups: None };
        GuestWorker(Arc::new(Mutex::new(Inner {
            vm: vm.clone(),
            vm_name: "v".into(),
            handle: 3,
            pid: 245,
            spec,
            life,
        })))
    }

    #[test]
    fn a_worker_on_a_vm_that_is_not_booted_says_so() {
        let vm = created("v");
        let e = GuestWorker::spawn(&vm, WorkerSpec::default()).err().unwrap();
        assert!(matches!(e, VmError::WrongState { action: "spawn_worker", .. }), "{e:?}");
    }

    #[test]
    fn joined_and_closed_workers_refuse_and_say_what_to_do() {
        let vm = created("v");
        let w = worker(&vm, Life::Joined(7));
        assert_eq!(w.join(None).unwrap(), 7, "joining again gives the same status");
        let e = w.exec(ExecRequest::default(), b"").unwrap_err();
        assert_eq!(e.to_string(), "vm `v`: worker:run: worker 3 was joined; spawn a new one with vm:spawn_worker()");
        assert_eq!(w.relay_handle("wait").unwrap(), 3, "its processes can still be waited on");
        assert!(w.describe().ends_with("pid 245, joined)"), "{}", w.describe());
        w.close();
        w.close();
        let e = w.kill(15).unwrap_err();
        assert!(e.to_string().contains("worker:kill: worker 3 was closed"), "{e}");
        assert!(w.relay_handle("wait").is_err());
        assert!(w.join(None).is_err());
        assert_eq!(w.describe(), "worker(3 on vm `v`: uid 1000 gid 100, pid 245, closed)");
    }

    #[test]
    fn a_live_worker_on_a_stopped_vm_fails_with_the_vm_state() {
        let vm = created("v");
        let w = worker(&vm, Life::Live);
        let e = w.syscall(SyscallCall::new(39, [0; 6])).unwrap_err();
        assert!(matches!(e, VmError::WrongState { action: "worker:syscall", .. }), "{e:?}");
        let mut bad = SyscallCall::new(0, [0; 6]);
        bad.buf(vec![0; 4], Some(9));
        let e = w.syscall_async(bad).err().unwrap();
        assert!(matches!(e, VmError::BadCall { op: "worker:syscall_async", .. }), "{e:?}");
        w.close(); // nothing to reach: quiet
        assert!(w.exec(ExecRequest::default(), b"").is_err());
    }
}
