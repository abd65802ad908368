//! Saving a running VM into a snapshot file, and starting one from it:
//! the same machine replayed whole (its served disks written back from the
//! file first), the guest continuing where it was.

use std::sync::Arc;

use super::Vm;
use crate::vm::error::VmError;
use crate::vm::opts::pool_need;
use crate::vm::state::{Needs, VmState};
use crate::vmm::snapshot::{self as snapfile, SnapshotMeta};
use crate::vmm::{Boot, Instance, LaunchSpec, Ram};

impl Vm {
    /// Saves the running (or paused) guest into `path` and returns the
    /// file's size. Refuses while streams or file handles are open: their
    /// host ends would not survive a restore.
    pub fn snapshot(&mut self, path: &std::path::Path) -> Result<u64, VmError> {
        if !matches!(self.state, VmState::Booted | VmState::Paused) {
            return Err(self.wrong_state("snapshot", Needs::BootedOrPaused));
        }
        let (files, streams) = (
            self.resources.count(crate::vm::resources::Class::File),
            self.resources.count(crate::vm::resources::Class::Stream),
        );
        if files + streams > 0 {
            return Err(VmError::NotQuiescent {
                vm: self.name.clone(),
                files,
                streams,
                list: self.resources.describe(),
            });
        }
        let meta = self.running_as.clone().expect("a booted VM records how it runs");
        let inst = self.instance.as_ref().expect("a booted VM has an instance");
        inst.save(path, &meta).map_err(|source| VmError::Save { vm: self.name.clone(), source })
    }

    /// Starts this VM from a snapshot file. The VM must be created or shut
    /// down; it ends booted, with the guest as it was saved (its clock set
    /// to the host's, unless it booted with `initial_time`).
    pub fn restore(&mut self, path: &std::path::Path) -> Result<(), VmError> {
        let granted = self.granted.take();
        if !matches!(self.state, VmState::Created | VmState::Shutdown | VmState::Dead) {
            return Err(self.wrong_state("restore", Needs::CreatedOrShutdown));
        }
        let meta =
            snapfile::read_header(path).map_err(|source| VmError::SnapshotFile { vm: self.name.clone(), source })?;
        if meta.accel != self.accel.as_str() {
            return Err(VmError::AccelMismatch {
                vm: self.name.clone(),
                path: path.display().to_string(),
                saved: meta.accel,
                here: self.accel.as_str().to_string(),
            });
        }
        let ram = match meta.ram {
            Some(image) => Ram::Image { path: path.to_path_buf(), offset: image.offset },
            None => Ram::Anonymous,
        };
        let disk_files = self.disks.restore_from(&self.name, path, &meta)?;
        // The saved machine, replayed whole; the stream brings the rest.
        let spec = LaunchSpec {
            accel: self.accel,
            machine: meta.machine.clone(),
            ram,
            boot: Boot::Incoming,
            scratch: Default::default(),
            disk_files,
        };
        let timeout = self.create_opts.agent_timeout.unwrap_or(crate::image::DEFAULT_AGENT_TIMEOUT);
        self.granted = granted;
        self.reserve("restore", pool_need(meta.machine.memory_mib, meta.machine.cpus))?;
        self.emit_spawned(meta.machine.memory_mib);
        let inst = match Instance::restore(&self.name, spec, path, timeout) {
            Ok(inst) => inst,
            Err(e) => {
                self.emit_stopped();
                return Err(self.launch_failed("restore")(e));
            }
        };
        self.kill_switch.arm(inst.qemu.pid());
        self.stopped_by = None;
        if meta.initial_time.is_none() {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            if let Err(e) = inst.agent.set_time(now.as_nanos() as i64) {
                self.abandon_launch(inst);
                return Err(VmError::Agent { vm: self.name.clone(), op: "restore (clock)", source: e });
            }
        }
        // Handles of an earlier run (one that died with them open) are gone.
        self.resources = Arc::default();
        self.profile = meta.profile.clone();
        self.running_as = Some(SnapshotMeta { ram: None, disks: Vec::new(), ..meta });
        if let Err(e) = self.connect_nics(&inst) {
            self.abandon_launch(inst);
            self.running_as = None;
            return Err(e.into());
        }
        self.last_boot = None;
        self.instance = Some(inst);
        self.apply_disk_faults();
        self.emit_booted(self.instance.as_ref().map(|i| i.boot_time).unwrap_or_default());
        self.state = VmState::Booted;
        Ok(())
    }
}
