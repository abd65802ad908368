//! Operations on several VMs at once (`provium:boot()`, `start_all()`,
//! `lab:pause()`, lab snapshots): each VM on a thread of its own, every
//! failure collected.

use super::error::LabError;
use super::tree::Lab;
use crate::sync::lock;
use crate::vm::{BootOpts, Vm, VmError, VmRef, VmState};

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
    /// Boots every VM of this lab still in `created`, in parallel.
    pub fn boot(&self) -> Result<(), LabError> {
        batch("boot", &self.vms_in(VmState::Created), |vm| vm.boot(&BootOpts::default()))
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
        batch("start_all", &vms, |vm| vm.boot(&BootOpts::default()))
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
