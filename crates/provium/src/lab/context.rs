//! [`VmContext`]: what every VM of one test file is made with (the run's
//! images, accelerator, events and the file's pool account) and where the
//! file's watchdogs find them.

use std::sync::{Arc, Mutex};

use crate::events::Events;
use crate::image::Images;
use crate::sync::lock;
use crate::vm::{BootOpts, KillSwitch, Vm, VmRef};
use crate::vmm::Accel;

#[derive(Clone)]
pub struct VmContext {
    pub images: Arc<Images>,
    pub accel: Accel,
    /// Every VM's kill switch, for the file and test watchdogs.
    pub kill_switches: Arc<Mutex<Vec<KillSwitch>>>,
    pub events: Events,
    /// The run's seed and the file's subnets, for its bridges.
    pub net: crate::net::NetContext,
    /// What the file's boots reserve from (the pool, or its claim).
    pub pool: crate::pool::Account,
}

impl VmContext {
    /// A new VM in state `created`, registered with the watchdogs.
    pub fn new_vm(&self, name: &str, profile: &str, opts: BootOpts) -> VmRef {
        let vm = Vm::new(name, profile, opts, self.images.clone(), self.accel)
            .with_events(self.events.clone())
            .with_pool(self.pool.clone());
        lock(&self.kill_switches).push(vm.kill_switch());
        Arc::new(Mutex::new(vm))
    }
}
