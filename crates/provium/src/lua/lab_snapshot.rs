//! Whole-lab snapshots: a directory with `lab.json` and one `<vm>.snap` per
//! running VM, sub-labs in subdirectories of their own.
//!
//! Saving pauses every running VM of the lab first, so all of them are
//! captured at the same guest instant, and resumes them afterwards.
//! Restoring brings each VM named in `lab.json` back (creating it in the lab
//! if it is not there), all at once.

use std::path::Path;

use mlua::Lua;
use serde::{Deserialize, Serialize};

use super::errors::raise;
use super::lab::{LabNode, LabRef};
use super::lab_ud::{batch, new_vm};
use super::vm_ud::VmRef;
use crate::vm::resources::Class;
use crate::vm::{BootOpts, VmState};

const LAB_FILE: &str = "lab.json";

#[derive(Debug, Serialize, Deserialize)]
struct LabFile {
    vms: Vec<VmEntry>,
    #[serde(default)]
    labs: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct VmEntry {
    name: String,
    profile: String,
    /// `None`: the VM was declared but not running (created or shut down);
    /// a restore puts it back in `created`.
    snapshot: Option<String>,
}

fn lock(vm: &VmRef) -> std::sync::MutexGuard<'_, crate::vm::Vm> {
    vm.lock().unwrap_or_else(|p| p.into_inner())
}

/// Snapshots `lab` (and its sub-labs) into `dir`, which is created.
pub fn save(lua: &Lua, lab: &LabRef, dir: &Path) -> mlua::Result<()> {
    let open: Vec<String> = lab
        .borrow()
        .all_vms()
        .iter()
        .flat_map(|(name, vm)| {
            let r = lock(vm).resources();
            r.describe().into_iter().map(move |l| format!("  - vm `{name}`: {l}"))
        })
        .collect();
    if !open.is_empty() {
        return Err(raise(
            lua,
            format!(
                "lab:snapshot() failed for lab `{}`: {} open stream(s) or file handle(s)\n{}\n  Close streams and \
                 files before snapshotting.",
                lab.borrow().name,
                open.len(),
                open.join("\n")
            ),
        ));
    }
    save_tree(lua, &lab.borrow(), dir)
}

fn save_tree(lua: &Lua, lab: &LabNode, dir: &Path) -> mlua::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| raise(lua, format!("lab:snapshot: cannot create `{}`: {e}", dir.display())))?;
    let running = lab.vms_in(VmState::Booted);
    let mut saved = running.clone();
    saved.extend(lab.vms_in(VmState::Paused));
    // A stale lab.json must not describe the new snapshots if this fails.
    let _ = std::fs::remove_file(dir.join(LAB_FILE));
    let paused = batch(lua, "pause", &running, |vm| vm.pause());
    let result = paused.and_then(|()| {
        batch(lua, "snapshot", &saved, |vm| {
            let path = dir.join(format!("{}.snap", vm.name()));
            vm.snapshot(&path).map(drop)
        })
    });
    // Resume whatever paused, whatever happened.
    let paused_now: Vec<(String, VmRef)> =
        running.iter().filter(|(_, vm)| lock(vm).state() == VmState::Paused).cloned().collect();
    let resumed = batch(lua, "resume", &paused_now, |vm| vm.resume());
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
    for (name, sub) in &lab.labs {
        save_tree(lua, &sub.borrow(), &dir.join(name))?;
        labs.push(name.clone());
    }
    let json = serde_json::to_vec_pretty(&LabFile { vms, labs }).map_err(mlua::Error::external)?;
    std::fs::write(dir.join(LAB_FILE), json)
        .map_err(|e| raise(lua, format!("lab:snapshot: cannot write `{}`: {e}", dir.join(LAB_FILE).display())))
}

/// Restores `lab` from a directory written by [`save`].
pub fn restore(lua: &Lua, lab: &LabRef, dir: &Path) -> mlua::Result<()> {
    let file = dir.join(LAB_FILE);
    let text = std::fs::read(&file).map_err(|e| {
        raise(lua, format!("lab:restore: `{}` is not a lab snapshot (cannot read {LAB_FILE}: {e})", dir.display()))
    })?;
    let spec: LabFile = serde_json::from_slice(&text)
        .map_err(|e| raise(lua, format!("lab:restore: `{}` is corrupt: {e}", file.display())))?;
    let names = spec.vms.iter().map(|v| v.name.as_str()).chain(spec.labs.iter().map(String::as_str));
    if let Some(bad) = names.into_iter().find(|n| !super::lab_ud::valid_name(n)) {
        return Err(raise(lua, format!("lab:restore: `{}` is corrupt: bad name `{bad}`", file.display())));
    }
    let mut targets = Vec::new();
    for entry in &spec.vms {
        let existing = lab.borrow().own_vm(&entry.name);
        let vm = existing.unwrap_or_else(|| {
            let vm = new_vm(lua, &entry.name, &entry.profile, BootOpts::default());
            lab.borrow_mut().vms.push((entry.name.clone(), vm.clone()));
            vm
        });
        match &entry.snapshot {
            Some(file) => targets.push((entry.name.clone(), vm, dir.join(file))),
            // Not running when saved: not running after the restore either.
            None => lock(&vm).forget_run(),
        }
    }
    let vms: Vec<(String, VmRef)> = targets.iter().map(|(n, vm, _)| (n.clone(), vm.clone())).collect();
    let files: std::collections::HashMap<String, std::path::PathBuf> =
        targets.into_iter().map(|(n, _, f)| (n, f)).collect();
    batch(lua, "restore", &vms, |vm| {
        if !matches!(vm.state(), VmState::Created | VmState::Shutdown) {
            vm.shutdown();
        }
        vm.restore(&files[vm.name()])
    })?;
    for name in &spec.labs {
        let existing = lab.borrow().own_lab(name);
        let sub = existing.unwrap_or_else(|| {
            let sub = LabNode::new(name, None);
            lab.borrow_mut().labs.push((name.clone(), sub.clone()));
            sub
        });
        restore(lua, &sub, &dir.join(name))?;
    }
    Ok(())
}

/// The open streams of file-scope VMs, which `reset_between_tests` forbids.
pub fn file_scope_streams(lab: &LabNode) -> Vec<String> {
    lab.all_vms()
        .iter()
        .filter(|(_, vm)| lock(vm).resources().count(Class::Stream) > 0)
        .flat_map(|(name, vm)| {
            let lines = lock(vm).resources().describe();
            lines.into_iter().map(move |l| format!("  - vm `{name}`: {l} opens a stream at file scope"))
        })
        .collect()
}
