//! `vm:disk(id)`: a data disk of a VM, as Lua sees it. Argument and result
//! conversion only; the behaviour is `crate::vm::disks`.

use mlua::{UserData, UserDataMethods};

use super::errors::{raise, LuaResultExt};
use crate::sync::lock;
use crate::vm::VmRef;

pub struct DiskUd {
    pub vm: VmRef,
    pub id: String,
}

impl UserData for DiskUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "disk");
        methods.add_method("id", |_, this, ()| Ok(this.id.clone()));
        methods.add_method("size", |lua, this, ()| lock(&this.vm).disk_size(&this.id).lua(lua));
        methods.add_method("read_sectors", |lua, this, (first, count): (i64, i64)| {
            if first < 0 || count < 0 {
                return Err(raise(lua, "disk:read_sectors: sector and count must not be negative"));
            }
            let bytes = lock(&this.vm).read_sectors(&this.id, first as u64, count as u64).lua(lua)?;
            lua.create_string(&bytes)
        });
        methods.add_method("write_sectors", |lua, this, (first, data): (i64, mlua::String)| {
            if first < 0 {
                return Err(raise(lua, "disk:write_sectors: sector must not be negative"));
            }
            lock(&this.vm).write_sectors(&this.id, first as u64, &data.as_bytes()).lua(lua)
        });
        methods.add_method("fault_inject", |lua, this, mode: String| {
            lock(&this.vm).fault_inject(&this.id, &mode).lua(lua)
        });
        methods.add_method("clear_faults", |lua, this, ()| lock(&this.vm).clear_faults(&this.id).lua(lua));
        methods.add_method("active_faults", |lua, this, ()| {
            let faults = lock(&this.vm).active_faults(&this.id).lua(lua)?;
            lua.create_sequence_from(faults)
        });
        methods.add_method("power_cut", |lua, this, ()| {
            let cut = lock(&this.vm).power_cut(&this.id).lua(lua)?;
            let t = lua.create_table()?;
            t.set("dropped_bytes", cut.dropped_bytes)?;
            t.set("spilled_bytes", cut.spilled_bytes)?;
            Ok(t)
        });
        methods.add_method("detach", |lua, this, ()| lock(&this.vm).detach_disk(&this.id).lua(lua));
        methods.add_method("is_detached", |lua, this, ()| lock(&this.vm).disk_is_detached(&this.id).lua(lua));
    }
}
