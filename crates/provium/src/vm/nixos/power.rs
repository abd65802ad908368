//! Power: [`Vm::crash`] cuts it, [`Vm::wait_for_shutdown`] waits for the
//! guest to switch itself off.
//!
//! QEMU runs with `-no-reboot` and exits whenever the guest stops, so an
//! exit alone does not say whether the guest powered off (a deliberate
//! stop: `shutdown`) or rebooted or panicked (a death: `dead`). QEMU's
//! `SHUTDOWN` event does: its `reason` is `guest-shutdown` for a poweroff.
//! [`guest_powered_off`] reads it, for these waits and for any operation
//! whose agent connection drops because the guest powered off.

use std::time::Duration;

use super::NixosError;
use crate::vm::state::Needs;
use crate::vm::{Vm, VmError, VmState};
use crate::vmm::Instance;

/// Who stopped a VM whose guest powered itself off, as wrong-state errors
/// say it afterwards ("it was stopped by …").
pub const GUEST_POWERED_OFF: &str = "the guest itself (it powered off)";

/// Who stopped a crashed VM.
pub const CRASHED: &str = "vm:crash()";

/// How long QEMU's last events may take to be read once it has exited.
const LAST_EVENTS: Duration = Duration::from_millis(500);

/// The `reason` of QEMU's `SHUTDOWN` event, once QEMU has said it.
fn shutdown_reason(inst: &Instance) -> Option<String> {
    let event = inst.qmp.wait_event("SHUTDOWN", 0, LAST_EVENTS)?;
    event.data.get("reason").and_then(|r| r.as_str()).map(str::to_string)
}

/// Whether the QEMU of `inst`, which has exited, stopped because its guest
/// powered off.
pub fn guest_powered_off(inst: &Instance) -> bool {
    shutdown_reason(inst).as_deref() == Some("guest-shutdown")
}

/// Why a QEMU that has exited stopped, when its guest did something about
/// it: ` after the guest rebooted (…)`, or "".
pub fn why_qemu_exited(inst: &Instance) -> String {
    match shutdown_reason(inst).as_deref() {
        Some("guest-reset") => {
            " after the guest reset itself (a reboot, or a kernel panic with panic=-1; QEMU runs with -no-reboot, so \
             either ends it)"
                .into()
        }
        Some("guest-panic") => " after the guest panicked".into(),
        _ => String::new(),
    }
}

impl Vm {
    /// The NixOS driver's `crash()`: a sudden power loss. QEMU is killed;
    /// the guest gets no shutdown. The VM ends `shutdown` (a deliberate
    /// stop), and later operations say it was stopped by `vm:crash()`.
    pub fn crash(&mut self) -> Result<(), VmError> {
        if !matches!(self.state(), VmState::Booted | VmState::Paused) {
            return Err(self.wrong_state("crash", Needs::BootedOrPaused));
        }
        if let Some(inst) = self.instance_mut() {
            inst.qemu.kill();
        }
        self.stop_as(CRASHED);
        Ok(())
    }

    /// Returns once the guest has powered itself off (`poweroff -f` from a
    /// background command, the power button); the VM is then `shutdown`. A
    /// VM already shut down returns at once. A guest that reboots or dies
    /// instead makes the VM `dead` and fails; one still running after
    /// `timeout` fails and keeps running.
    pub fn wait_for_shutdown(&mut self, timeout: Duration) -> Result<(), VmError> {
        const OP: &str = "wait_for_shutdown";
        match self.state() {
            VmState::Shutdown => return Ok(()),
            VmState::Booted => {}
            _ => return Err(self.wrong_state(OP, Needs::Booted)),
        }
        let inst = self.instance_mut().expect("a booted VM has an instance");
        if !inst.qemu.wait_exit(timeout) {
            return Err(self.nixos_error(|vm| NixosError::StillRunning { vm, timeout }));
        }
        let powered_off = guest_powered_off(inst);
        // provium stopped it meanwhile (a test's timeout)?
        if let Some(stopped) = self.stopped_by_provium(OP) {
            return Err(stopped);
        }
        if powered_off {
            self.stop_as(GUEST_POWERED_OFF);
            return Ok(());
        }
        Err(self.lost(OP, "QEMU exited".into()))
    }

    /// The error for an operation cut short because the guest powered off;
    /// the VM is `shutdown` afterwards.
    pub(in crate::vm) fn powered_off_during(&mut self, op: &'static str) -> VmError {
        self.stop_as(GUEST_POWERED_OFF);
        self.nixos_error(|vm| NixosError::PoweredOff { vm, op })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn created(name: &str) -> Vm {
        let images = Arc::new(crate::image::Images::new(Default::default()));
        Vm::new(name, "default", Default::default(), images, crate::vmm::Accel::Tcg)
    }

    #[test]
    fn power_operations_say_what_state_they_need() {
        let mut vm = created("p");
        let e = vm.crash().unwrap_err().to_string();
        assert_eq!(e, "vm `p` is created; crash needs a booted or paused VM: call vm:boot() first");
        let e = vm.wait_for_shutdown(Duration::from_secs(1)).unwrap_err().to_string();
        assert_eq!(e, "vm `p` is created; wait_for_shutdown needs a booted VM: call vm:boot() first");
        vm.stop_as(CRASHED);
        assert_eq!(vm.state(), VmState::Shutdown);
        // Off already: nothing to wait for.
        vm.wait_for_shutdown(Duration::from_secs(1)).unwrap();
        let e = vm.execute("true", None).unwrap_err().to_string();
        assert!(e.contains("it was stopped by vm:crash(); create a new VM"), "{e}");
    }
}
