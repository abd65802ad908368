//! The Lua `VM` object: a cheap handle onto a shared [`Vm`]. It converts
//! arguments and results only; states and errors live in `crate::vm`.

use std::sync::MutexGuard;

use mlua::{AnyUserData, Lua, Table, UserData, UserDataMethods, Value};

use super::errors::{raise, LuaResultExt};
use super::opts;
use super::result_ud::RunResult;
use crate::vm::resources::Class;
use crate::vm::{Vm, VmRef};

#[derive(Clone)]
pub struct VmUd(pub VmRef);

impl VmUd {
    fn lock(&self) -> MutexGuard<'_, Vm> {
        crate::sync::lock(&self.0)
    }
}

/// `{name, entry_type}` for each entry, as `vm:listdir` returns them.
pub(super) fn listdir_table(lua: &Lua, entries: &[provium_protocol::DirEntry]) -> mlua::Result<Table> {
    let out = lua.create_table()?;
    for (i, e) in entries.iter().enumerate() {
        let t = lua.create_table()?;
        t.set("name", e.name.as_str())?;
        t.set("entry_type", e.entry_type.as_str())?;
        out.set(i + 1, t)?;
    }
    Ok(out)
}

/// `vm:mkdir`'s second argument: `true`, or `{parents, perm}`.
pub(super) fn mkdir_opts(lua: &Lua, what: &str, o: Option<Value>) -> mlua::Result<(bool, u32)> {
    Ok(match o {
        None | Some(Value::Nil) => (false, 0o755),
        Some(Value::Boolean(b)) => (b, 0o755),
        Some(Value::Table(t)) => {
            opts::check_keys(lua, what, &t, &["parents", "perm"])?;
            (
                super::args::field::<Option<bool>>(lua, what, &t, "parents")?.unwrap_or(false),
                super::args::field::<Option<u32>>(lua, what, &t, "perm")?.unwrap_or(0o755),
            )
        }
        Some(other) => {
            return Err(raise(
                lua,
                format!("{what}: options must be a table {{parents, perm}}, got {}", other.type_name()),
            ))
        }
    })
}

pub(super) fn entry_type_table(lua: &Lua, md: &provium_protocol::Metadata) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("size", md.size)?;
    t.set("mtime", md.mtime_ns as f64 / 1e9)?;
    t.set("mtime_ns", md.mtime_ns)?;
    t.set("perm", md.perm)?;
    t.set("entry_type", md.entry_type.as_str())?;
    Ok(t)
}

impl UserData for VmUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "vm");
        methods.add_function("boot", |lua, (ud, t): (AnyUserData, Option<Table>)| {
            let o = opts::boot_opts(lua, "vm:boot", t)?;
            ud.borrow::<VmUd>()?.lock().boot(&o).lua(lua)?;
            Ok(ud)
        });
        methods.add_method("shutdown", |_, this, ()| {
            this.lock().shutdown();
            Ok(())
        });
        methods.add_method("close", |_, this, ()| {
            this.lock().shutdown();
            Ok(())
        });
        methods.add_method("name", |_, this, ()| Ok(this.lock().name().to_string()));
        methods.add_method("nic", |lua, this, name: String| super::bridge_ud::vm_nic(lua, &this.0, &name));
        methods.add_method("profile", |_, this, ()| Ok(this.lock().profile().to_string()));
        methods.add_method("state", |_, this, ()| Ok(this.lock().state().as_str()));
        methods.add_method("run", |lua, this, (cmd, second): (String, Option<Value>)| {
            super::waits::check_conditions(lua)?;
            let spec = opts::run_request(lua, "vm:run", &cmd, second)?;
            let out = this.lock().exec(spec.req, &spec.stdin).lua(lua)?;
            Ok(RunResult { command: cmd, out })
        });
        methods.add_method("read_file", |lua, this, path: String| {
            let data = this.lock().read_file(&path).lua(lua)?;
            lua.create_string(&data)
        });
        methods.add_method("write_file", |lua, this, (path, data): (String, mlua::String)| {
            this.lock().write_file(&path, &data.as_bytes(), 0o644).lua(lua)
        });
        methods.add_method("stat", |lua, this, path: String| {
            let md = this.lock().stat(&path).lua(lua)?;
            entry_type_table(lua, &md)
        });
        methods.add_method("listdir", |lua, this, path: String| {
            let entries = this.lock().listdir(&path).lua(lua)?;
            listdir_table(lua, &entries)
        });
        methods.add_method("mkdir", |lua, this, (path, o): (String, Option<Value>)| {
            let (parents, perm) = mkdir_opts(lua, "vm:mkdir", o)?;
            this.lock().mkdir(&path, parents, perm).lua(lua)
        });
        methods.add_method("push_file", |lua, this, (host, guest, o): (String, String, Option<mlua::Table>)| {
            // `{auto_dep = false}` only matters to the fixture key scanner.
            if let Some(t) = &o {
                opts::check_keys(lua, "vm:push_file", t, &["auto_dep"])?;
            }
            let path = super::errors::host_path(lua, &host);
            let data = std::fs::read(&path)
                .map_err(|e| raise(lua, format!("vm:push_file: read `{}` failed: {e}", path.display())))?;
            let perm =
                std::fs::metadata(&path).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
            this.lock().write_file(&guest, &data, perm.unwrap_or(0o644)).lua(lua)
        });
        methods.add_method("unlink", |lua, this, path: String| this.lock().unlink(&path).lua(lua));
        methods.add_method("rename", |lua, this, (from, to): (String, String)| this.lock().rename(&from, &to).lua(lua));
        methods.add_method("open_stream_count", |_, this, ()| Ok(this.lock().resources().count(Class::Stream)));
        methods.add_method("open_file_count", |_, this, ()| Ok(this.lock().resources().count(Class::File)));
        methods.add_method("is_quiescent", |_, this, ()| {
            let r = this.lock().resources();
            Ok(r.count(Class::Stream) == 0 && r.count(Class::File) == 0)
        });
        methods.add_method("cid", |_, this, ()| Ok(this.lock().cid()));
        methods.add_method("pause", |lua, this, ()| this.lock().pause().lua(lua));
        methods.add_method("resume", |lua, this, ()| this.lock().resume().lua(lua));
        methods.add_method("wakeup", |lua, this, ()| this.lock().wakeup().lua(lua));
        methods.add_method("reset", |lua, this, ()| this.lock().reset().lua(lua));
        methods.add_method("power_button", |lua, this, ()| this.lock().power_button().lua(lua));
        methods.add_method("clock", |_, this, ()| Ok(super::clock_ud::ClockUd(this.0.clone())));
        methods.add_method("disk", |lua, this, id: String| {
            this.lock().check_disk(&id).lua(lua)?;
            Ok(super::disk_ud::DiskUd { vm: this.0.clone(), id })
        });
        methods.add_method("disks", |lua, this, ()| lua.create_sequence_from(this.lock().disk_ids()));
        methods.add_method("snapshot", |lua, this, path: Option<String>| {
            let path = match path {
                Some(p) => std::path::PathBuf::from(p),
                None => {
                    let name = this.lock().name().to_string();
                    super::snapshot_ud::default_path(lua, &name, ".snap")?
                }
            };
            this.lock().snapshot(&path).lua(lua)?;
            Ok(super::snapshot_ud::SnapshotUd { path })
        });
        methods.add_method("restore", |lua, this, snap: Value| {
            let path = super::snapshot_ud::snapshot_path(lua, "vm:restore", &snap)?;
            this.lock().restore(&path).lua(lua)
        });
        super::vm_streams::add_methods(methods);
        super::jobs::add_methods(methods);
        super::waits::add_methods(methods);
        super::layer0_ud::add_methods(methods);
        super::batch_ud::add_methods(methods);
        super::nixos_ud::add_methods(methods);
        super::worker_ud::add_vm_methods(methods);
        // Two handles on one VM are equal (`lab.a == a`).
        methods.add_meta_method("__eq", |_, this, other: AnyUserData| {
            Ok(other.borrow::<VmUd>().is_ok_and(|o| std::sync::Arc::ptr_eq(&o.0, &this.0)))
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            let vm = this.lock();
            Ok(format!("vm({} state={})", vm.name(), vm.state().as_str()))
        });
    }
}
