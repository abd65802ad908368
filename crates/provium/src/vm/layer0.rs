//! Layer 0 of a [`Vm`]: raw syscalls made by the guest agent's process,
//! ioctls on file handles opened with [`super::file::GuestFile`], and reads
//! of the agent's own memory. Syscall numbers and ioctl codes are the
//! guest's (x86_64 Linux); provium does not interpret them.
//!
//! What the kernel answers is a result, not an error: a syscall that fails
//! comes back as an outcome with `errno` set, an unreadable address as
//! `Err(errno)` inside `Ok`. Errors are for calls the agent would refuse
//! ([`VmError::BadCall`], checked before sending), for a VM that is not
//! booted, and for a VM that dies.
//!
//! [`PendingSyscall`] sends a syscall now and reads its result later, on
//! the same connection as everything else (channels are multiplexed), and
//! without holding the VM's lock while the syscall blocks in the guest: the
//! VM stays usable meanwhile.

use std::sync::Mutex;

use provium_protocol::{IoctlCall, IoctlOutcome, MemRead, MAX_LAYER0_BYTES};
pub use provium_protocol::{SyscallCall, SyscallOutcome};

use super::lifecycle::Vm;
use super::{VmError, VmRef};
use crate::agent::{self, AgentError};
use crate::sync::lock;

impl Vm {
    fn check_call(&self, op: &'static str, verdict: Result<(), String>) -> Result<(), VmError> {
        verdict.map_err(|why| VmError::BadCall { vm: self.name().to_string(), op, why })
    }

    /// Makes a raw syscall in the agent and waits for it.
    pub fn syscall(&mut self, call: SyscallCall) -> Result<SyscallOutcome, VmError> {
        self.syscall_on(None, "syscall", call)
    }

    /// A syscall made by worker `worker`'s process when given (else the
    /// main agent's); `op` names it in errors.
    pub fn syscall_on(
        &mut self,
        worker: Option<u64>,
        op: &'static str,
        call: SyscallCall,
    ) -> Result<SyscallOutcome, VmError> {
        self.check_call(op, call.check())?;
        self.with_agent(op, |a| a.via(worker).syscall(call))
    }

    /// `ioctl(2)` on the descriptor behind agent file handle `call.handle`.
    pub fn ioctl(&mut self, call: IoctlCall) -> Result<IoctlOutcome, VmError> {
        self.check_call("ioctl", call.check())?;
        self.with_agent("ioctl", |a| a.ioctl(call))
    }

    /// `len` bytes of the agent's memory at `addr`: `Ok(Err(errno))` when
    /// none can be read (EIO for an unmapped address); fewer bytes when the
    /// range runs into unmapped memory.
    pub fn read_mem(&mut self, addr: u64, len: u64) -> Result<Result<Vec<u8>, i32>, VmError> {
        let len = u32::try_from(len).ok().filter(|&n| n as usize <= MAX_LAYER0_BYTES).ok_or_else(|| {
            let why = format!("{len} bytes is more than the {MAX_LAYER0_BYTES} one read may carry");
            VmError::BadCall { vm: self.name().to_string(), op: "read_mem", why }
        })?;
        Ok(match self.with_agent("read_mem", |a| a.read_mem(addr, len))? {
            MemRead::Bytes(b) => Ok(b),
            MemRead::Errno(e) => Err(e),
        })
    }
}

/// A syscall in flight. Its result is taken once, by [`PendingSyscall::wait`].
pub struct PendingSyscall {
    vm: VmRef,
    vm_name: String,
    /// `syscall_async` or `worker:syscall_async`, for errors.
    op: &'static str,
    nr: i64,
    pending: Mutex<Option<agent::PendingSyscall>>,
}

impl PendingSyscall {
    /// Sends `call` to the agent of `vm` and returns at once.
    pub fn start(vm: &VmRef, call: SyscallCall) -> Result<PendingSyscall, VmError> {
        PendingSyscall::start_on(vm, None, "syscall_async", call)
    }

    /// Like [`PendingSyscall::start`], made by worker `worker` when given;
    /// `op` names it in errors.
    pub fn start_on(
        vm: &VmRef,
        worker: Option<u64>,
        op: &'static str,
        call: SyscallCall,
    ) -> Result<PendingSyscall, VmError> {
        let mut g = lock(vm);
        g.check_call(op, call.check())?;
        let nr = call.nr;
        let pending = g.with_agent(op, |a| a.via(worker).syscall_async(call))?;
        Ok(PendingSyscall { vm: vm.clone(), vm_name: g.name().to_string(), op, nr, pending: Mutex::new(Some(pending)) })
    }

    /// The syscall number, for messages.
    pub fn nr(&self) -> i64 {
        self.nr
    }

    /// Whether the result was already taken.
    pub fn awaited(&self) -> bool {
        lock(&self.pending).is_none()
    }

    /// Waits for the syscall to return (the VM's lock is not held while it
    /// does); a second call fails with [`VmError::AlreadyAwaited`].
    pub fn wait(&self) -> Result<SyscallOutcome, VmError> {
        let pending = lock(&self.pending)
            .take()
            .ok_or_else(|| VmError::AlreadyAwaited { vm: self.vm_name.clone(), op: self.op })?;
        pending.wait().map_err(|e| self.failed(e))
    }

    fn failed(&self, e: AgentError) -> VmError {
        let op = self.op;
        let mut vm = lock(&self.vm);
        if !e.connection_lost() {
            return vm.failed(op, e);
        }
        // The connection the call went out on is gone. If the VM's present
        // one is gone too, the VM died: that error (marking it dead, with
        // the console) is the one to give. Otherwise the connection was
        // replaced (a reconnect, a restore) while the call was in flight.
        match vm.with_agent(op, |a| a.ping()) {
            Err(present) => present,
            Ok(()) => VmError::Agent { vm: self.vm_name.clone(), op, source: e },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn created(name: &str) -> VmRef {
        let images = Arc::new(crate::image::Images::new(Default::default()));
        Arc::new(Mutex::new(Vm::new(name, "default", Default::default(), images, crate::vmm::Accel::Tcg)))
    }

    #[test]
    fn a_malformed_call_is_refused_before_the_vm_is_asked() {
        let vm = created("v");
        let mut call = SyscallCall::new(0, [0; 6]);
        call.buf(vec![0; 4], Some(9));
        let e = lock(&vm).syscall(call.clone()).unwrap_err();
        assert!(matches!(e, VmError::BadCall { op: "syscall", .. }), "{e:?}");
        assert!(e.to_string().starts_with("vm `v`: syscall: pointer argument slot 9"), "{e}");
        let e = PendingSyscall::start(&vm, call).err().unwrap();
        assert!(matches!(e, VmError::BadCall { op: "syscall_async", .. }), "{e:?}");
        let e = lock(&vm).read_mem(0, u64::from(u32::MAX) + 1).unwrap_err();
        assert!(e.to_string().contains("read_mem: 4294967296 bytes is more than"), "{e}");
        let bad = IoctlCall { handle: 1, cmd: 1, data: vec![0; 4], bufs: vec![vec![]], ptr_offsets: vec![0] };
        let e = lock(&vm).ioctl(bad).unwrap_err();
        assert!(e.to_string().contains("ioctl: a pointer at offset 0 does not fit in `data` of 4 bytes"), "{e}");
    }

    #[test]
    fn a_well_formed_call_on_a_vm_that_is_not_booted_says_so() {
        let vm = created("v");
        let e = lock(&vm).syscall(SyscallCall::new(39, [0; 6])).unwrap_err();
        assert!(matches!(e, VmError::WrongState { action: "syscall", .. }), "{e:?}");
        let e = PendingSyscall::start(&vm, SyscallCall::new(39, [0; 6])).err().unwrap();
        assert!(matches!(e, VmError::WrongState { action: "syscall_async", .. }), "{e:?}");
    }
}
