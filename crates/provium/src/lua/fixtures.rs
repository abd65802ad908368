//! `provium:vm_fixture(name)` and `provium:lab_fixture(name)`: a cached
//! fixture restored into this file's root lab. Getting the snapshot (cache,
//! lock, rebuild) is `crate::fixture::build`'s; this adapter supplies the
//! builder — the `*.fixture.lua` chunk run in a fresh Lua state with the
//! same API, returning `vm:snapshot()` or `provium:snapshot()` — and the
//! restore.

use std::path::Path;
use std::sync::Arc;

use mlua::{Lua, Value};

use super::errors::{message, LuaResultExt};
use super::lab_ud::{self, FileContext, LabUd};
use super::snapshot_ud::{LabSnapshotUd, SnapshotUd};
use super::vm_ud::VmUd;
use crate::fixture::{build, Built, EntryKind, Fixtures, Snapshot};
use crate::lab::{self, VmContext};
use crate::sync::lock;
use crate::vm::BootOpts;

/// `provium:vm_fixture(name)`: a booted VM in the file's root lab.
pub fn vm_fixture(lua: &Lua, name: &str) -> mlua::Result<VmUd> {
    let root = lab_ud::root(lua);
    let vm_name = root.unique_name(name.rsplit('/').next().unwrap_or(name));
    let vm = lab_ud::new_vm(lua, &vm_name, crate::config::DEFAULT_PROFILE, BootOpts::default());
    let (fixtures, vms) = parts(lua);
    let mut restore = |path: &Path| lock(&vm).restore(path).map_err(|e| e.into());
    build::obtain(&fixtures, &vms.events, name, EntryKind::Vm, &mut builder(&fixtures, &vms), &mut restore).lua(lua)?;
    root.add_vm(&vm_name, vm.clone());
    Ok(VmUd(vm))
}

/// `provium:lab_fixture(name)`: a new sub-lab of the root holding the
/// fixture's VMs, booted.
pub fn lab_fixture(lua: &Lua, name: &str) -> mlua::Result<LabUd> {
    let root = lab_ud::root(lua);
    let lab_name = root.unique_name(&format!("{}-{}", name.replace('/', "_"), std::process::id()));
    let sub = root.sub_lab_named(&lab_name);
    let (fixtures, vms) = parts(lua);
    let mut restore = |dir: &Path| lab::snapshot::restore(&sub, dir, &vms).map_err(|e| e.into());
    build::obtain(&fixtures, &vms.events, name, EntryKind::Lab, &mut builder(&fixtures, &vms), &mut restore)
        .lua(lua)?;
    Ok(LabUd(sub))
}

fn parts(lua: &Lua) -> (Arc<Fixtures>, VmContext) {
    let ctx = lab_ud::ctx(lua);
    (ctx.fixtures.clone(), ctx.vms.clone())
}

/// A builder's Lua state; dropping it closes its scopes (its VMs and the
/// snapshots it took).
struct BuilderState(Lua);

impl Drop for BuilderState {
    fn drop(&mut self) {
        lab_ud::end_file_scope(&self.0);
    }
}

/// Runs a fixture's builder file in a Lua state of its own; its VMs answer
/// to the requesting file's watchdogs (`vms` carries their kill switches).
fn builder<'a>(
    fixtures: &'a Arc<Fixtures>,
    vms: &'a VmContext,
) -> impl FnMut(&str, &Path) -> Result<Built, String> + 'a {
    move |_name, path| {
        let state = BuilderState(Lua::new());
        let lua = &state.0;
        let ctx = FileContext { vms: vms.clone(), fixtures: fixtures.clone() };
        // The real path: relative host paths in the builder resolve against it.
        let shown = path.display().to_string();
        super::install_api(lua, path, &fixtures.roots, ctx).map_err(|e| message(&e))?;
        let src = std::fs::read(path).map_err(|e| format!("cannot read `{shown}`: {e}"))?;
        let returned: Value = lua.load(src).set_name(format!("@{shown}")).eval().map_err(|e| message(&e))?;
        let snapshot = match &returned {
            Value::UserData(ud) if ud.is::<SnapshotUd>() => {
                Snapshot::Vm(ud.borrow::<SnapshotUd>().map_err(|e| e.to_string())?.path.clone())
            }
            Value::UserData(ud) if ud.is::<LabSnapshotUd>() => {
                Snapshot::Lab(ud.borrow::<LabSnapshotUd>().map_err(|e| e.to_string())?.dir.clone())
            }
            other => {
                let what = if other.is_integer() { "number" } else { other.type_name() };
                return Err(format!("must return vm:snapshot() or provium:snapshot(), but returned {what}"));
            }
        };
        drop(returned);
        Ok(Built { snapshot, owner: Box::new(state) })
    }
}

/// `provium fixture build|rebuild`: builds `name` unless cached, from a
/// context of its own.
pub fn build_from_cli(name: &str, fixtures: Arc<Fixtures>, vms: VmContext) -> Result<(), String> {
    let key = fixtures.key(name).map_err(|e| crate::errors::chain(&e))?;
    let cached = || Ok(fixtures.store.lookup(&key.hex).is_some());
    build::build_once(&fixtures, &vms.events, name, &key, &cached, &mut builder(&fixtures, &vms))
        .map(|_built| ())
        .map_err(|e| crate::errors::chain(&e))
}
