//! Operations on several VMs at once (`provium:boot()`, `start_all()`,
//! `lab:pause()`, lab snapshots): each VM on a thread of its own, every
//! failure collected.
//!
//! Booting (or restoring) several VMs reserves for all of them first, in one
//! request ([`reserve_for`]): a lab never holds half its VMs while waiting
//! for the rest, which is how two labs would deadlock each other.

use super::error::LabError;
use super::tree::Lab;
use crate::pool::ResourceAmount;
use crate::sync::lock;
use crate::vm::{BootOpts, Vm, VmError, VmRef, VmState};

/// Reserves `needs` (one per VM of `vms`) in one request and hands each VM
/// its part; `what` says who asked (`lab `x` boot`).
pub fn reserve_for(what: String, vms: &[(String, VmRef)], needs: &[ResourceAmount]) -> Result<(), LabError> {
    let Some((_, first)) = vms.first() else { return Ok(()) };
    let account = lock(first).pool();
    let parts = account.reserve_joint(needs).map_err(|source| LabError::Reserve { what, source })?;
    for ((_, vm), part) in vms.iter().zip(parts) {
        lock(vm).grant(part);
    }
    Ok(())
}

/// Boots `vms` in parallel after reserving for all of them at once.
fn boot_together(what: &'static str, lab: &Lab, vms: &[(String, VmRef)]) -> Result<(), LabError> {
    let needs: Vec<ResourceAmount> = vms.iter().map(|(_, vm)| lock(vm).boot_need(&BootOpts::default())).collect();
    reserve_for(format!("lab `{}` {what}", lab.name()), vms, &needs)?;
    batch(what, vms, |vm| vm.boot(&BootOpts::default()))
}

/// Runs `op` on every VM in `vms` at once; fails with every VM's error.
pub fn batch(
    what: &'static str,
    vms: &[(String, VmRef)],
    op: impl Fn(&mut Vm) -> Result<(), VmError> + Sync,
) -> Result<(), LabError> {
    let failures: Vec<(String, VmError)> = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .iter()
            .map(|(name, vm)| {
                let op = &op;
                // Boxed: a VmError is large, and most batches succeed.
                s.spawn(move || op(&mut lock(vm)).map_err(|e| Box::new((name.clone(), e))))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("batch thread").err()).map(|b| *b).collect()
    });
    if failures.is_empty() {
        Ok(())
    } else {
        Err(LabError::Batch { what, failures })
    }
}

impl Lab {
    /// Boots every VM of this lab still in `created`, in parallel, after
    /// reserving for all of them at once.
    pub fn boot(&self) -> Result<(), LabError> {
        boot_together("boot", self, &self.vms_in(VmState::Created))
    }

    /// The NixOS driver's `start_all()`: boots, in parallel, every VM still
    /// in `created` of this lab, of its sub-labs, and of the scopes it falls
    /// through to (in a test's scope: the file's). Booted VMs are left be.
    pub fn start_all(&self) -> Result<(), LabError> {
        let mut vms = self.all_vms();
        let mut up = self.parent();
        while let Some(lab) = up {
            vms.extend(lab.all_vms());
            up = lab.parent();
        }
        vms.retain(|(_, vm)| lock(vm).state() == VmState::Created);
        boot_together("start_all", self, &vms)
    }

    pub fn pause(&self) -> Result<(), LabError> {
        batch("pause", &self.vms_in(VmState::Booted), Vm::pause)
    }

    pub fn resume(&self) -> Result<(), LabError> {
        batch("resume", &self.vms_in(VmState::Paused), Vm::resume)
    }

    /// Stops this lab's own VMs (not its sub-labs').
    pub fn shutdown(&self) {
        for (_, vm) in self.vms() {
            lock(&vm).shutdown();
        }
    }
}
