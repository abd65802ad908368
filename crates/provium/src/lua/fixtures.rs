//! `provium:vm_fixture(name)` and `provium:lab_fixture(name)`: restore a
//! cached fixture, building it first when the cache has no entry for its
//! current key.
//!
//! A build runs the `*.fixture.lua` chunk in a fresh Lua state with the same
//! API; the chunk returns `vm:snapshot()` or `provium:snapshot()`. One
//! process builds a key at a time (a lock file); the others wait, then
//! restore what it built. A cache entry that fails to extract or restore is
//! evicted and built again, once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mlua::{Lua, Value};

use super::errors::{message, raise, LuaResultExt};
use super::lab::LabNode;
use super::lab_ud::{self, FileCtx, LabUd};
use super::snapshot_ud::{LabSnapshotUd, SnapshotUd};
use super::vm_ud::VmUd;
use crate::fixture::{EntryKind, Fixtures};
use crate::vm::BootOpts;

fn ctx_parts(lua: &Lua) -> (Arc<Fixtures>, Arc<crate::image::Images>, crate::vmm::Accel) {
    let ctx = lua.app_data_ref::<FileCtx>().expect("file context installed");
    (ctx.fixtures.clone(), ctx.images.clone(), ctx.accel)
}

/// `provium:vm_fixture(name)`: a booted VM in the file's root lab.
pub fn vm_fixture(lua: &Lua, name: &str) -> mlua::Result<VmUd> {
    let root = lab_ud::root(lua);
    let vm_name = unique_name(&root.borrow(), name.rsplit('/').next().unwrap_or(name));
    let vm = lab_ud::new_vm(lua, &vm_name, crate::config::DEFAULT_PROFILE, BootOpts::default());
    with_retry(lua, name, EntryKind::Vm, |path| {
        vm.lock().unwrap_or_else(|p| p.into_inner()).restore(path).map_err(|e| super::errors::chain(&e))
    })?;
    root.borrow_mut().vms.push((vm_name, vm.clone()));
    Ok(VmUd(vm))
}

/// `provium:lab_fixture(name)`: a new sub-lab of the root holding the
/// fixture's VMs, booted.
pub fn lab_fixture(lua: &Lua, name: &str) -> mlua::Result<LabUd> {
    let root = lab_ud::root(lua);
    let lab_name = unique_name(&root.borrow(), &format!("{}-{}", name.replace('/', "_"), std::process::id()));
    let lab = LabNode::new(&lab_name, None);
    root.borrow_mut().labs.push((lab_name, lab.clone()));
    with_retry(lua, name, EntryKind::Lab, |dir| super::lab_snapshot::restore(lua, &lab, dir).map_err(|e| message(&e)))?;
    Ok(LabUd(lab))
}

fn unique_name(lab: &LabNode, base: &str) -> String {
    let taken = |n: &str| lab.own_vm(n).is_some() || lab.own_lab(n).is_some();
    let mut name = base.to_string();
    let mut i = 2;
    while taken(&name) {
        name = format!("{base}-{i}");
        i += 1;
    }
    name
}

/// Obtains the fixture's snapshot and hands it to `restore`; a cache entry
/// that fails either way is evicted and the fixture built again, once.
fn with_retry(
    lua: &Lua,
    name: &str,
    want: EntryKind,
    restore: impl Fn(&Path) -> Result<(), String>,
) -> mlua::Result<()> {
    let (fixtures, _, _) = ctx_parts(lua);
    let key = fixtures.key(name).map_err(|e| raise(lua, super::errors::chain(&e)))?;
    for attempt in 0..2 {
        let staged = obtain(lua, &fixtures, name, &key.hex, &key.path, want)?;
        let outcome = restore(&staged);
        let Err(why) = outcome else { return Ok(()) };
        if attempt == 1 {
            return Err(raise(lua, format!("fixture `{name}`: restoring a freshly built snapshot failed: {why}")));
        }
        eprintln!("provium: fixture cache entry `{}` corrupt ({why}); evicting and rebuilding", key.hex);
        fixtures.unstage(&key.hex);
        fixtures.store.evict(&key.hex).lua(lua)?;
    }
    unreachable!("the loop returns")
}

/// The extracted snapshot of the fixture, building and caching it first if
/// needed.
fn obtain(
    lua: &Lua,
    fixtures: &Fixtures,
    name: &str,
    key: &str,
    path: &Path,
    want: EntryKind,
) -> mlua::Result<PathBuf> {
    let check_kind = |kind: EntryKind| -> mlua::Result<()> {
        match (want, kind) {
            (EntryKind::Vm, EntryKind::Lab) => Err(raise(
                lua,
                format!("vm_fixture `{name}` returned a lab snapshot; use provium:lab_fixture(\"{name}\")"),
            )),
            (EntryKind::Lab, EntryKind::Vm) => Err(raise(
                lua,
                format!("lab_fixture `{name}` returned a single-VM snapshot; expected provium:snapshot()"),
            )),
            _ => Ok(()),
        }
    };
    let staged = |fixtures: &Fixtures| -> mlua::Result<Option<PathBuf>> {
        let Some(entry) = fixtures.store.lookup(key) else { return Ok(None) };
        check_kind(entry.kind)?;
        match fixtures.staged(key, &entry) {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                eprintln!("provium: {e}; evicting and rebuilding");
                fixtures.store.evict(key).lua(lua)?;
                Ok(None)
            }
        }
    };
    if let Some(p) = staged(fixtures)? {
        return Ok(p);
    }
    build_once(lua, fixtures, name, key, path, || Ok(staged(fixtures)?.is_some()))?;
    // Checks the kind of what was built, too.
    staged(fixtures)?.ok_or_else(|| raise(lua, format!("fixture `{name}`: the entry just built cannot be read back")))
}

/// Builds the fixture under its key's lock, unless `cached()` finds that
/// another file or process built it while this one waited for the lock.
fn build_once(
    lua: &Lua,
    fixtures: &Fixtures,
    name: &str,
    key: &str,
    path: &Path,
    cached: impl Fn() -> mlua::Result<bool>,
) -> mlua::Result<()> {
    let _lock = fixtures
        .store
        .lock(key, |holder| eprintln!("provium: fixture `{name}` is being built by {holder}; waiting for it"))
        .lua(lua)?;
    if cached()? {
        return Ok(());
    }
    build(lua, name, key, path)
}

/// `provium fixture build|rebuild`: builds `name` unless cached, from a
/// Lua state of its own.
pub fn build_from_cli(
    name: &str,
    fixtures: Arc<Fixtures>,
    images: Arc<crate::image::Images>,
    accel: crate::vmm::Accel,
) -> Result<(), String> {
    let lua = Lua::new();
    let here = std::env::current_dir().unwrap_or_default().join("provium-fixture-cli.lua");
    let ctx = FileCtx { images, accel, kill_switches: Arc::default(), fixtures: fixtures.clone() };
    super::install_api(&lua, &here, &fixtures.roots, ctx).map_err(|e| message(&e))?;
    let key = fixtures.key(name).map_err(|e| super::errors::chain(&e))?;
    let cached = || Ok(fixtures.store.lookup(&key.hex).is_some());
    let result = build_once(&lua, &fixtures, name, &key.hex, &key.path, cached).map_err(|e| message(&e));
    lab_ud::end_file_scope(&lua);
    result
}

/// Runs the builder and installs what it returns into the cache.
fn build(lua: &Lua, name: &str, key: &str, path: &Path) -> mlua::Result<()> {
    let (fixtures, images, accel) = ctx_parts(lua);
    eprintln!("provium: building fixture `{name}` ({})", path.display());
    let started = Instant::now();
    let builder = Lua::new();
    // The builder's VMs answer to the requesting file's watchdogs.
    let kills = lua.app_data_ref::<FileCtx>().expect("file context installed").kill_switches.clone();
    let ctx = FileCtx { images, accel, kill_switches: kills, fixtures: fixtures.clone() };
    // The real path: relative host paths in the builder resolve against it.
    let shown = path.display().to_string();
    let result = (|| -> Result<u64, String> {
        super::install_api(&builder, path, &fixtures.roots, ctx).map_err(|e| message(&e))?;
        let src = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let returned: Value = builder.load(src).set_name(format!("@{shown}")).eval().map_err(|e| message(&e))?;
        let stored = match &returned {
            Value::UserData(ud) if ud.is::<SnapshotUd>() => {
                let snap = ud.borrow::<SnapshotUd>().map_err(|e| e.to_string())?.path.clone();
                fixtures.store.install_vm(key, &snap)
            }
            Value::UserData(ud) if ud.is::<LabSnapshotUd>() => {
                let dir = ud.borrow::<LabSnapshotUd>().map_err(|e| e.to_string())?.dir.clone();
                fixtures.store.install_lab(key, &dir)
            }
            other => {
                let what = if other.is_integer() { "number" } else { other.type_name() };
                return Err(format!("must return vm:snapshot() or provium:snapshot(), but returned {what}"));
            }
        };
        stored.map_err(|e| super::errors::chain(&e))
    })();
    lab_ud::end_file_scope(&builder);
    match result {
        Ok(stored) => {
            eprintln!(
                "provium: built fixture `{name}` in {:.1}s ({:.1} MiB in the cache)",
                started.elapsed().as_secs_f64(),
                stored as f64 / (1 << 20) as f64
            );
            Ok(())
        }
        Err(why) => Err(raise(lua, format!("fixture `{name}` failed to build: {why}"))),
    }
}
