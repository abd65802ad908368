//! `Snapshot` and `LabSnapshot` userdata, and where snapshots go by default.
//!
//! A snapshot taken without a path lives in the test file's scratch
//! directory and is removed when the file ends (or with `snap:delete()`);
//! pass a path to keep one.

use std::path::{Path, PathBuf};

use mlua::{Lua, UserData, UserDataMethods, Value};

use super::errors::raise;
use crate::cleanup::ScratchDir;

/// A single-VM snapshot file.
#[derive(Clone)]
pub struct SnapshotUd {
    pub path: PathBuf,
}

/// A lab snapshot: a directory with `lab.json` and one `<vm>.snap` per VM.
#[derive(Clone)]
pub struct LabSnapshotUd {
    pub dir: PathBuf,
}

impl UserData for SnapshotUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "snapshot");
        methods.add_method("path", |_, this, ()| Ok(this.path.display().to_string()));
        // Bytes on disk: a snapshot's RAM image is mostly holes.
        methods.add_method("size", |_, this, ()| Ok(crate::vmm::snapshot::disk_bytes(&this.path)));
        methods.add_method("delete", |_, this, ()| {
            let _ = std::fs::remove_file(&this.path);
            Ok(())
        });
        methods.add_meta_method("__tostring", |_, this, ()| Ok(format!("snapshot({})", this.path.display())));
    }
}

impl UserData for LabSnapshotUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "lab_snapshot");
        methods.add_method("path", |_, this, ()| Ok(this.dir.display().to_string()));
        methods.add_method("size", |_, this, ()| Ok(dir_size(&this.dir)));
        methods.add_method("delete", |_, this, ()| {
            let _ = std::fs::remove_dir_all(&this.dir);
            Ok(())
        });
        methods.add_meta_method("__tostring", |_, this, ()| Ok(format!("lab_snapshot({})", this.dir.display())));
    }
}

/// The bytes on disk of the files in `dir`, sub-labs' included (0 if
/// missing).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| e.path())
        .map(|p| if p.is_dir() { dir_size(&p) } else { crate::vmm::snapshot::disk_bytes(&p) })
        .sum()
}

/// The file's snapshot directory (created on first use) and a counter.
#[derive(Default)]
pub struct SnapshotDir {
    dir: Option<ScratchDir>,
    next: u64,
}

/// A fresh path in the file's scratch directory: `<stem>-<n><suffix>`.
pub fn default_path(lua: &Lua, stem: &str, suffix: &str) -> mlua::Result<PathBuf> {
    if lua.app_data_ref::<SnapshotDir>().is_none() {
        lua.set_app_data(SnapshotDir::default());
    }
    let mut sd = lua.app_data_mut::<SnapshotDir>().expect("just installed");
    if sd.dir.is_none() {
        let dir =
            ScratchDir::new("snapshots").map_err(|e| raise(lua, format!("cannot create a snapshot directory: {e}")))?;
        sd.dir = Some(dir);
    }
    sd.next += 1;
    let dir = sd.dir.as_ref().expect("created above").path();
    Ok(dir.join(format!("{stem}-{}{suffix}", sd.next)))
}

/// A `Snapshot` userdata or a path string, as `what` received it.
pub fn snapshot_path(lua: &Lua, what: &str, v: &Value) -> mlua::Result<PathBuf> {
    match v {
        Value::String(s) => Ok(PathBuf::from(s.to_str()?.to_string())),
        Value::UserData(ud) => {
            if let Ok(s) = ud.borrow::<SnapshotUd>() {
                Ok(s.path.clone())
            } else if let Ok(s) = ud.borrow::<LabSnapshotUd>() {
                Ok(s.dir.clone())
            } else {
                Err(raise(lua, format!("{what}: expected snapshot|string, got userdata")))
            }
        }
        Value::Integer(_) => Err(raise(lua, format!("{what}: expected snapshot|string, got number"))),
        other => Err(raise(lua, format!("{what}: expected snapshot|string, got {}", other.type_name()))),
    }
}
