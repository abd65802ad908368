//! The `provium` global and every other Lab userdata, and the scope rules.
//!
//! `provium` is the file's root lab at top level; inside a `test()` body it
//! is rebound to that test's scope lab, whose lookups fall through to the
//! root. VMs, sub-labs and resources created in a scope close when it ends.
//! Declaring a name a parent scope already has is an error, not shadowing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlua::{Lua, MetaMethod, MultiValue, UserData, UserDataMethods, Value};

use super::errors::raise;
use super::lab::{LabNode, LabRef, Resource};
use super::opts;
use super::vm_ud::{VmRef, VmUd};
use crate::image::Images;
use crate::vm::{BootOpts, KillSwitch, Vm, VmError, VmState};
use crate::vmm::Accel;

/// What every VM of a file needs, and what the watchdogs may kill.
pub struct FileCtx {
    pub images: Arc<Images>,
    pub accel: Accel,
    /// Every VM's kill switch, for the file and test watchdogs.
    pub kill_switches: Arc<Mutex<Vec<KillSwitch>>>,
    pub fixtures: Arc<crate::fixture::Fixtures>,
}

/// The file's root lab and the running test's scope lab.
pub struct Labs {
    pub root: LabRef,
    pub test: Option<LabRef>,
}

/// File-scope configuration keys set on `provium`.
#[derive(Debug, Default, Clone)]
pub struct FileConfig {
    pub reset_between_tests: bool,
    pub timeout: Option<Duration>,
}

const CONFIG_KEYS: &str = "reset_between_tests, timeout";

/// Installs the root lab as the `provium` global.
pub fn install(lua: &Lua, ctx: FileCtx) -> mlua::Result<()> {
    let root = LabNode::new("provium", None);
    lua.set_app_data(ctx);
    lua.set_app_data(FileConfig::default());
    lua.set_app_data(Labs { root: root.clone(), test: None });
    lua.globals().set("provium", LabUd(root))
}

pub fn root(lua: &Lua) -> LabRef {
    lua.app_data_ref::<Labs>().expect("labs installed").root.clone()
}

/// The scope new resources belong to: the running test's, else the root.
fn current(lua: &Lua) -> LabRef {
    let labs = lua.app_data_ref::<Labs>().expect("labs installed");
    labs.test.clone().unwrap_or_else(|| labs.root.clone())
}

/// Registers a resource with the current scope so it closes with it.
pub fn track(lua: &Lua, r: Resource) {
    current(lua).borrow_mut().resources.push(r);
}

pub fn file_config(lua: &Lua) -> FileConfig {
    lua.app_data_ref::<FileConfig>().expect("config installed").clone()
}

/// Opens the scope of test `name` and rebinds `provium` to it.
pub fn begin_test_scope(lua: &Lua, name: &str) -> mlua::Result<()> {
    let root = root(lua);
    let lab = LabNode::new(&format!("test:{name}"), Some(root));
    lua.app_data_mut::<Labs>().expect("labs installed").test = Some(lab.clone());
    lua.globals().set("provium", LabUd(lab))
}

/// Closes the running test's scope and rebinds `provium` to the root.
pub fn end_test_scope(lua: &Lua) {
    let lab = lua.app_data_mut::<Labs>().expect("labs installed").test.take();
    if let Some(lab) = lab {
        lab.borrow_mut().close();
    }
    let _ = lua.globals().set("provium", LabUd(root(lua)));
}

/// Closes every scope.
pub fn end_file_scope(lua: &Lua) {
    end_test_scope(lua);
    root(lua).borrow_mut().close();
}

/// Every VM of the file (root lab, its sub-labs, the running test's scope).
pub fn all_vms(lua: &Lua) -> Vec<(String, VmRef)> {
    let labs = lua.app_data_ref::<Labs>().expect("labs installed");
    let mut v = labs.root.borrow().all_vms();
    if let Some(t) = &labs.test {
        v.extend(t.borrow().all_vms());
    }
    v
}

/// A new VM object for this file (registered with the watchdogs).
pub fn new_vm(lua: &Lua, name: &str, profile: &str, opts: BootOpts) -> VmRef {
    let ctx = lua.app_data_ref::<FileCtx>().expect("file context installed");
    let vm = Vm::new(name, profile, opts, ctx.images.clone(), ctx.accel);
    ctx.kill_switches.lock().unwrap().push(vm.kill_switch());
    Arc::new(Mutex::new(vm))
}

/// Whether `name` can name a VM or lab: it also names files and
/// directories of lab snapshots.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Rejects a malformed name, or one this lab or a parent scope already uses.
fn check_new_name(lua: &Lua, lab: &LabNode, what: &str, name: &str) -> mlua::Result<()> {
    if !valid_name(name) {
        return Err(raise(
            lua,
            format!(
                "provium:{what}(\"{name}\", …): a name is letters, digits, `_`, `-` and `.`, not starting with `.`"
            ),
        ));
    }
    if let Some(parent) = lab.declared_above(name) {
        return Err(raise(
            lua,
            format!(
                "provium:{what}(\"{name}\", …): name already declared at a parent scope (lab `{parent}`). Pick a \
                 different name, or use provium:{what}(\"{name}\") to reuse the parent-scope one."
            ),
        ));
    }
    if lab.own_vm(name).is_some() || lab.own_lab(name).is_some() {
        return Err(raise(lua, format!("provium:{what}: name `{name}` already used in lab `{}`", lab.name)));
    }
    Ok(())
}

fn declare(lua: &Lua, lab: &LabRef, name: String, profile: String, o: Option<mlua::Table>) -> mlua::Result<VmUd> {
    let boot_opts = opts::boot_opts(lua, &format!("provium:vm(\"{name}\", …)"), o)?;
    check_new_name(lua, &lab.borrow(), "vm", &name)?;
    // Unknown profiles fail here, at declaration, not at boot.
    let images = lua.app_data_ref::<FileCtx>().expect("file context installed").images.clone();
    if !images.config().profiles.contains_key(&profile) && profile != crate::config::DEFAULT_PROFILE {
        let e = images.resolve(&profile).expect_err("unknown profile");
        return Err(super::errors::raise_err(lua, &e));
    }
    let vm = new_vm(lua, &name, &profile, boot_opts);
    lab.borrow_mut().vms.push((name, vm.clone()));
    Ok(VmUd(vm))
}

/// Runs `op` on every VM in `vms` at once; one error line per VM that failed.
pub fn batch(
    lua: &Lua,
    what: &str,
    vms: &[(String, VmRef)],
    op: impl Fn(&mut Vm) -> Result<(), VmError> + Sync,
) -> mlua::Result<()> {
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .iter()
            .map(|(name, vm)| {
                let op = &op;
                s.spawn(move || {
                    let mut vm = vm.lock().unwrap_or_else(|p| p.into_inner());
                    op(&mut vm).map_err(|e| format!("  {name}: {}", super::errors::chain(&e)))
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("batch thread").err()).collect()
    });
    if failures.is_empty() {
        Ok(())
    } else {
        Err(raise(lua, format!("batch `{what}` failed:\n{}", failures.join("\n"))))
    }
}

/// A lab as Lua sees it: `provium`, a test scope, or a sub-lab.
#[derive(Clone)]
pub struct LabUd(pub LabRef);

impl LabUd {
    fn direct_vms(&self) -> Vec<(String, VmRef)> {
        self.0.borrow().vms.clone()
    }

    fn in_state(&self, state: VmState) -> Vec<(String, VmRef)> {
        self.0.borrow().vms_in(state)
    }
}

fn names<T>(items: &[(String, T)]) -> Vec<String> {
    items.iter().map(|(n, _)| n.clone()).collect()
}

impl UserData for LabUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("vm", |lua, this, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let s = |v: &mlua::String| v.to_string_lossy();
            match args.as_slice() {
                [Value::String(name)] => {
                    let name = s(name);
                    let found = this.0.borrow().find_vm(&name);
                    found.map(VmUd).ok_or_else(|| {
                        raise(lua, format!("provium:vm: no vm named `{name}` in lab `{}`", this.0.borrow().name))
                    })
                }
                [Value::String(name), Value::String(profile)]
                | [Value::String(name), Value::String(profile), Value::Nil] => {
                    declare(lua, &this.0, s(name), s(profile), None)
                }
                [Value::String(name), Value::String(profile), Value::Table(t)] => {
                    declare(lua, &this.0, s(name), s(profile), Some(t.clone()))
                }
                _ => Err(raise(
                    lua,
                    format!("provium:vm(name[, profile[, opts]]): bad arguments ({} given)", args.len()),
                )),
            }
        });
        methods.add_method("lab", |lua, this, name: Option<String>| {
            let name = match name {
                Some(n) => {
                    check_new_name(lua, &this.0.borrow(), "lab", &n)?;
                    n
                }
                None => this.0.borrow_mut().anonymous_name(),
            };
            let lab = LabNode::new(&name, None);
            this.0.borrow_mut().labs.push((name, lab.clone()));
            Ok(LabUd(lab))
        });
        methods.add_function("boot", |lua, ud: mlua::AnyUserData| {
            let vms = ud.borrow::<LabUd>()?.in_state(VmState::Created);
            batch(lua, "boot", &vms, |vm| vm.boot(&BootOpts::default()))?;
            Ok(ud)
        });
        methods.add_method("shutdown", |_, this, ()| {
            for (_, vm) in this.direct_vms() {
                vm.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
            }
            Ok(())
        });
        methods.add_method("pause", |lua, this, ()| batch(lua, "pause", &this.in_state(VmState::Booted), Vm::pause));
        methods.add_method("resume", |lua, this, ()| batch(lua, "resume", &this.in_state(VmState::Paused), Vm::resume));
        methods.add_method("snapshot", |lua, this, dir: Option<String>| {
            let (dir, given) = match dir {
                Some(d) => (std::path::PathBuf::from(d), true),
                None => {
                    let stem = this.0.borrow().name.replace(['/', ':'], "_");
                    (super::snapshot_ud::default_path(lua, &stem, ".lab")?, false)
                }
            };
            super::lab_snapshot::save(lua, &this.0, &dir)?;
            if given {
                Ok(Value::String(lua.create_string(dir.display().to_string())?))
            } else {
                Ok(Value::UserData(lua.create_userdata(super::snapshot_ud::LabSnapshotUd { dir })?))
            }
        });
        methods.add_method("restore", |lua, this, snap: Value| {
            let dir = super::snapshot_ud::snapshot_path(lua, "lab:restore", &snap)?;
            super::lab_snapshot::restore(lua, &this.0, &dir)
        });
        methods.add_method("vm_fixture", |lua, _, name: Value| vm_fixture(lua, name));
        methods.add_method("lab_fixture", |lua, _, name: Value| lab_fixture(lua, name));
        // Only the fixture key scanner reads it: the file becomes part of the
        // key of any fixture that calls this with a literal path.
        methods.add_method("depends_on_file", |lua, _, path: Value| match path {
            Value::String(_) => Ok(()),
            other => {
                Err(raise(lua, format!("lab:depends_on_file(path): path must be a string, got {}", other.type_name())))
            }
        });
        methods.add_method("vm_names", |_, this, ()| Ok(names(&this.0.borrow().vms)));
        methods.add_method("sub_lab_names", |_, this, ()| Ok(names(&this.0.borrow().labs)));
        methods.add_method("members", |lua, this, ()| {
            let out = lua.create_table()?;
            let lab = this.0.borrow();
            let kinds = lab.vms.iter().map(|(n, _)| ("vm", n)).chain(lab.labs.iter().map(|(n, _)| ("sub_lab", n)));
            for (i, (kind, name)) in kinds.enumerate() {
                let t = lua.create_table()?;
                t.set("kind", kind)?;
                t.set("name", name.as_str())?;
                out.set(i + 1, t)?;
            }
            Ok(out)
        });
        methods.add_method("name", |_, this, ()| Ok(this.0.borrow().name.clone()));
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: Value| index(lua, this, key));
        methods.add_meta_method(MetaMethod::NewIndex, |lua, this, (key, value): (String, Value)| {
            set_config(lua, this, &key, value)
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            let lab = this.0.borrow();
            Ok(format!("lab({}; {} vm(s))", lab.name, lab.vms.len()))
        });
    }
}

/// `lab.<key>`: file config keys, then a VM, then a sub-lab (walking
/// parents); `nil` otherwise. Never creates anything.
fn index(lua: &Lua, this: &LabUd, key: Value) -> mlua::Result<Value> {
    let Value::String(key) = key else { return Ok(Value::Nil) };
    let key = key.to_string_lossy();
    let config = file_config(lua);
    match key.as_str() {
        "reset_between_tests" => return Ok(Value::Boolean(config.reset_between_tests)),
        "timeout" => return Ok(config.timeout.map(|d| Value::Number(d.as_secs_f64())).unwrap_or(Value::Nil)),
        "pack" | "unpack" => return lua.globals().get::<mlua::Table>("string")?.get(key.as_str()),
        // `provium.vm_fixture("x")` (dot call) works like the method form.
        "vm_fixture" => return Ok(Value::Function(lua.create_function(vm_fixture)?)),
        "lab_fixture" => return Ok(Value::Function(lua.create_function(lab_fixture)?)),
        _ => {}
    }
    let (vm, lab) = {
        let node = this.0.borrow();
        (node.find_vm(&key), node.find_lab(&key))
    };
    if let Some(vm) = vm {
        return Ok(Value::UserData(lua.create_userdata(VmUd(vm))?));
    }
    if let Some(lab) = lab {
        return Ok(Value::UserData(lua.create_userdata(LabUd(lab))?));
    }
    Ok(Value::Nil)
}

fn fixture_name(lua: &Lua, what: &str, v: Value) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s.to_str()?.to_string()),
        _ => Err(raise(lua, format!("provium:{what}(name): name must be a string"))),
    }
}

/// `provium:vm_fixture(name)`, also reached as `provium.vm_fixture(name)`.
fn vm_fixture(lua: &Lua, name: Value) -> mlua::Result<VmUd> {
    super::fixtures::vm_fixture(lua, &fixture_name(lua, "vm_fixture", name)?)
}

/// `provium:lab_fixture(name)`, also reached as `provium.lab_fixture(name)`.
fn lab_fixture(lua: &Lua, name: Value) -> mlua::Result<LabUd> {
    super::fixtures::lab_fixture(lua, &fixture_name(lua, "lab_fixture", name)?)
}

fn set_config(lua: &Lua, this: &LabUd, key: &str, value: Value) -> mlua::Result<()> {
    let is_root = std::rc::Rc::ptr_eq(&this.0, &root(lua));
    let known = matches!(key, "reset_between_tests" | "timeout");
    if !known || !is_root {
        let why = if known { "only at file top level" } else { "not a recognised file-scope config key" };
        return Err(raise(lua, format!("cannot set `provium.{key}`: {why}. Known keys: {CONFIG_KEYS}")));
    }
    let mut config = lua.app_data_mut::<FileConfig>().expect("config installed");
    match (key, value) {
        ("reset_between_tests", Value::Boolean(b)) => config.reset_between_tests = b,
        ("reset_between_tests", other) => {
            return Err(raise(
                lua,
                format!("provium.reset_between_tests must be true or false, got {}", other.type_name()),
            ))
        }
        ("timeout", Value::Nil) => config.timeout = None,
        (_, v) => {
            drop(config);
            let d = opts::duration(lua, "provium.timeout", &v)?;
            lua.app_data_mut::<FileConfig>().expect("config installed").timeout = Some(d);
        }
    }
    Ok(())
}
