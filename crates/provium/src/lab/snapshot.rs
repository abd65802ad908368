//! Whole-lab snapshots: a directory with `lab.json` and one `<vm>.snap` per
//! running VM, sub-labs in subdirectories of their own.
//!
//! ```text
//! <dir>/lab.json   {"vms": [{"name", "profile", "snapshot": "<vm>.snap" | null}], "labs": ["<sub>"],
//!                   "bridges": [{"name", "subnet", "members": [{"vm", "host", "nic", "connected"}], "graph"}]}
//! <dir>/<vm>.snap  one VM snapshot file each (`vmm::snapshot`)
//! <dir>/<sub>/     a sub-lab, the same layout
//! ```
//!
//! Saving pauses every running VM of the lab first, so all of them are
//! captured at the same guest instant, and resumes them afterwards.
//! Restoring brings each VM named in `lab.json` back (creating it in the lab
//! if it is not there), all at once. Bridges come back first, with their
//! members, addresses, partitions and impairments, so each restored guest
//! plugs into the same bridge, through the same NIC, with the address it
//! had (which its RAM still holds).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::batch::batch;
use super::context::VmContext;
use super::error::LabError;
use super::tree::{valid_name, Lab};
use crate::net::{Bridge, BridgeRecord};
use crate::sync::lock;
use crate::vm::resources::Class;
use crate::vm::{BootOpts, VmRef, VmState};

const LAB_FILE: &str = "lab.json";

#[derive(Debug, Serialize, Deserialize)]
struct LabFile {
    vms: Vec<VmEntry>,
    #[serde(default)]
    labs: Vec<String>,
    #[serde(default)]
    bridges: Vec<BridgeRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct VmEntry {
    name: String,
    profile: String,
    /// `None`: the VM was declared but not running (created or shut down);
    /// a restore puts it back in `created`.
    snapshot: Option<String>,
}

/// Snapshots `lab` (and its sub-labs) into `dir`, which is created.
pub fn save(lab: &Lab, dir: &Path) -> Result<(), LabError> {
    let open: Vec<String> = lab
        .all_vms()
        .iter()
        .flat_map(|(name, vm)| {
            let r = lock(vm).resources();
            r.describe().into_iter().map(move |l| format!("  - vm `{name}`: {l}"))
        })
        .collect();
    if !open.is_empty() {
        return Err(LabError::NotQuiescent { lab: lab.name(), open });
    }
    save_tree(lab, dir)
}

fn save_tree(lab: &Lab, dir: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(dir).map_err(|source| LabError::CreateDir { path: dir.to_path_buf(), source })?;
    let running = lab.vms_in(VmState::Booted);
    let mut saved = running.clone();
    saved.extend(lab.vms_in(VmState::Paused));
    // A stale lab.json must not describe the new snapshots if this fails.
    let _ = std::fs::remove_file(dir.join(LAB_FILE));
    let paused = batch("pause", &running, |vm| vm.pause());
    let result = paused.and_then(|()| {
        batch("snapshot", &saved, |vm| {
            let path = dir.join(format!("{}.snap", vm.name()));
            vm.snapshot(&path).map(drop)
        })
    });
    // Resume whatever paused, whatever happened.
    let paused_now: Vec<(String, VmRef)> =
        running.iter().filter(|(_, vm)| lock(vm).state() == VmState::Paused).cloned().collect();
    let resumed = batch("resume", &paused_now, |vm| vm.resume());
    result?;
    resumed?;
    let mut vms: Vec<VmEntry> = saved
        .iter()
        .map(|(name, vm)| VmEntry {
            name: name.clone(),
            profile: lock(vm).profile().to_string(),
            snapshot: Some(format!("{name}.snap")),
        })
        .collect();
    for (name, vm) in lab.vms_in(VmState::Created).into_iter().chain(lab.vms_in(VmState::Shutdown)) {
        vms.push(VmEntry { name, profile: lock(&vm).profile().to_string(), snapshot: None });
    }
    let mut labs = Vec::new();
    for (name, sub) in lab.sub_labs() {
        save_tree(&sub, &dir.join(&name))?;
        labs.push(name);
    }
    let bridges = lab.bridges().iter().map(|(_, b)| b.record()).collect();
    let json = serde_json::to_vec_pretty(&LabFile { vms, labs, bridges }).expect("a lab file serializes");
    let path = dir.join(LAB_FILE);
    std::fs::write(&path, json).map_err(|source| LabError::Write { path, source })
}

/// Restores `lab` from a directory written by [`save`]; VMs it does not
/// have yet are made with `ctx`.
pub fn restore(lab: &Lab, dir: &Path, ctx: &VmContext) -> Result<(), LabError> {
    let file = dir.join(LAB_FILE);
    let text = std::fs::read(&file).map_err(|source| LabError::NotALab { dir: dir.to_path_buf(), source })?;
    let spec: LabFile =
        serde_json::from_slice(&text).map_err(|source| LabError::Corrupt { path: file.clone(), source })?;
    let names = spec.vms.iter().map(|v| v.name.as_str()).chain(spec.labs.iter().map(String::as_str));
    if let Some(bad) = names.into_iter().find(|n| !valid_name(n)) {
        return Err(LabError::CorruptName { path: file, name: bad.to_string() });
    }
    let mut targets = Vec::new();
    for entry in &spec.vms {
        let vm = lab.own_vm(&entry.name).unwrap_or_else(|| {
            let vm = ctx.new_vm(&entry.name, &entry.profile, BootOpts::default());
            lab.add_vm(&entry.name, vm.clone());
            vm
        });
        match &entry.snapshot {
            Some(file) => targets.push((entry.name.clone(), vm, dir.join(file))),
            // Not running when saved: not running after the restore either.
            None => lock(&vm).forget_run(),
        }
    }
    let vms: Vec<(String, VmRef)> = targets.iter().map(|(n, vm, _)| (n.clone(), vm.clone())).collect();
    // Down before their bridges are rebuilt: they plug in as they restore.
    batch("shutdown", &vms, |vm| {
        if !matches!(vm.state(), VmState::Created | VmState::Shutdown) {
            vm.shutdown();
        }
        Ok(())
    })?;
    for record in &spec.bridges {
        if let Some(old) = lab.remove_bridge(&record.name) {
            old.close();
        }
        let bridge = Bridge::from_record(&ctx.net, record, |n| lab.own_vm(n))
            .map_err(|source| LabError::Bridge { name: record.name.clone(), source: Box::new(source) })?;
        lab.add_bridge(&record.name, bridge);
    }
    let files: std::collections::HashMap<String, std::path::PathBuf> =
        targets.into_iter().map(|(n, _, f)| (n, f)).collect();
    // Reserved together, as a lab boot is; a VM whose header cannot be read
    // reserves nothing here, and its restore says what is wrong.
    let needs: Vec<_> = vms
        .iter()
        .map(|(name, _)| match crate::vmm::snapshot::read_header(&files[name]) {
            Ok(meta) => crate::vm::opts::pool_need(meta.machine.memory_mib, meta.machine.cpus),
            Err(_) => Default::default(),
        })
        .collect();
    super::batch::reserve_for(format!("lab `{}` restore", lab.name()), &vms, &needs)?;
    batch("restore", &vms, |vm| vm.restore(&files[vm.name()]))?;
    for name in &spec.labs {
        restore(&lab.sub_lab_named(name), &dir.join(name), ctx)?;
    }
    Ok(())
}

/// The open streams of file-scope VMs, which `reset_between_tests` forbids.
pub fn file_scope_streams(lab: &Lab) -> Vec<String> {
    lab.all_vms()
        .iter()
        .filter(|(_, vm)| lock(vm).resources().count(Class::Stream) > 0)
        .flat_map(|(name, vm)| {
            let lines = lock(vm).resources().describe();
            lines.into_iter().map(move |l| format!("  - vm `{name}`: {l} opens a stream at file scope"))
        })
        .collect()
}
