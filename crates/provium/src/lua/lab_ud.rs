//! The `provium` global and every other Lab userdata, and the scope rules.
//!
//! `provium` is the file's root lab at top level; inside a `test()` body it
//! is rebound to that test's scope lab, whose lookups fall through to the
//! root. VMs, sub-labs and resources created in a scope close when it ends.
//! The tree and its rules are `crate::lab`'s; this adapter converts.

use std::sync::Arc;

use mlua::{Lua, MetaMethod, MultiValue, UserData, UserDataMethods, Value};

use super::errors::{raise, LuaResultExt};
use super::opts;
use super::vm_ud::VmUd;
use crate::lab::{self, Close, Lab, LabConfig, Member, Resource, VmContext, CONFIG_KEYS};
use crate::sync::lock;
use crate::vm::VmRef;

/// What every VM of a file is made with, and the run's fixtures.
pub struct FileContext {
    pub vms: VmContext,
    pub fixtures: Arc<crate::fixture::Fixtures>,
}

/// The file's root lab and the running test's scope lab.
struct Labs {
    root: Lab,
    test: Option<Lab>,
}

/// Installs the root lab as the `provium` global.
pub fn install(lua: &Lua, ctx: FileContext) -> mlua::Result<()> {
    let root = Lab::new("provium", None);
    lua.set_app_data(ctx);
    lua.set_app_data(LabConfig::default());
    lua.set_app_data(Labs { root: root.clone(), test: None });
    lua.globals().set("provium", LabUd(root))
}

/// The file's context.
pub fn ctx(lua: &Lua) -> mlua::AppDataRef<'_, FileContext> {
    lua.app_data_ref::<FileContext>().expect("file context installed")
}

pub fn root(lua: &Lua) -> Lab {
    lua.app_data_ref::<Labs>().expect("labs installed").root.clone()
}

/// The scope new resources belong to: the running test's, else the root.
pub fn current(lua: &Lua) -> Lab {
    let labs = lua.app_data_ref::<Labs>().expect("labs installed");
    labs.test.clone().unwrap_or_else(|| labs.root.clone())
}

/// Makes `r` the current scope's, so it closes with it.
pub fn track(lua: &Lua, r: impl Close + 'static) {
    current(lua).track(Box::new(r));
}

pub fn file_config(lua: &Lua) -> LabConfig {
    lua.app_data_ref::<LabConfig>().expect("config installed").clone()
}

/// Opens the scope of test `name` and rebinds `provium` to it.
pub fn begin_test_scope(lua: &Lua, name: &str) -> mlua::Result<()> {
    let lab = root(lua).test_scope(name);
    lua.app_data_mut::<Labs>().expect("labs installed").test = Some(lab.clone());
    lua.globals().set("provium", LabUd(lab))
}

/// Closes the running test's scope and rebinds `provium` to the root.
pub fn end_test_scope(lua: &Lua) {
    let lab = lua.app_data_mut::<Labs>().expect("labs installed").test.take();
    if let Some(lab) = lab {
        lab.close();
    }
    let _ = lua.globals().set("provium", LabUd(root(lua)));
}

/// Closes every scope.
pub fn end_file_scope(lua: &Lua) {
    end_test_scope(lua);
    root(lua).close();
}

/// Every VM of the file (root lab, its sub-labs, the running test's scope).
pub fn all_vms(lua: &Lua) -> Vec<(String, VmRef)> {
    let labs = lua.app_data_ref::<Labs>().expect("labs installed");
    let mut v = labs.root.all_vms();
    if let Some(t) = &labs.test {
        v.extend(t.all_vms());
    }
    v
}

/// Starts the console badness window of every VM of the file.
pub fn mark_consoles(lua: &Lua) {
    for (_, vm) in all_vms(lua) {
        lock(&vm).mark_console();
    }
}

/// Kernel reports on every VM's console since [`mark_consoles`].
pub fn console_findings(lua: &Lua) -> Vec<(String, crate::vm::badness::Finding)> {
    all_vms(lua)
        .into_iter()
        .flat_map(|(name, vm)| lock(&vm).console_findings().into_iter().map(move |f| (name.clone(), f)))
        .collect()
}

/// The console excerpt of every VM of the file that has one.
pub fn console_excerpts(lua: &Lua, lines: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, vm) in all_vms(lua) {
        let tail = lock(&vm).console_tail(crate::vmm::CONSOLE_TAIL_BYTES);
        if let Some(excerpt) = crate::vm::console::excerpt(&tail, lines) {
            out.push((name, excerpt));
        }
    }
    out
}

/// A new VM object for this file (registered with the watchdogs).
pub fn new_vm(lua: &Lua, name: &str, profile: &str, opts: crate::vm::BootOpts) -> VmRef {
    ctx(lua).vms.new_vm(name, profile, opts)
}

fn declare(lua: &Lua, lab: &Lab, name: String, profile: String, o: Option<mlua::Table>) -> mlua::Result<VmUd> {
    let boot_opts = opts::boot_opts(lua, &format!("provium:vm(\"{name}\", …)"), o)?;
    lab.check_new_name("vm", &name).lua(lua)?;
    // Unknown profiles fail here, at declaration, not at boot.
    let images = ctx(lua).vms.images.clone();
    if !images.config().profiles.contains_key(&profile) && profile != crate::config::DEFAULT_PROFILE {
        let e = images.resolve(&profile).expect_err("unknown profile");
        return Err(super::errors::raise_err(lua, &e));
    }
    let vm = new_vm(lua, &name, &profile, boot_opts);
    lab.add_vm(&name, vm.clone());
    Ok(VmUd(vm))
}

/// A lab as Lua sees it: `provium`, a test scope, or a sub-lab.
#[derive(Clone)]
pub struct LabUd(pub Lab);

impl UserData for LabUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "lab");
        methods.add_method("vm", |lua, this, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let s = |v: &mlua::String| v.to_string_lossy();
            match args.as_slice() {
                [Value::String(name)] => this.0.vm(&s(name)).map(VmUd).lua(lua),
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
        methods.add_method("bridge", |lua, this, (name, o): (Value, Option<mlua::Table>)| {
            let Value::String(name) = name else {
                return Err(raise(
                    lua,
                    format!("provium:bridge(name[, opts]): name must be a string, got {}", name.type_name()),
                ));
            };
            super::bridge_ud::declare(lua, &this.0, &name.to_string_lossy(), o)
        });
        methods.add_method("bridge_names", |_, this, ()| Ok(this.0.bridge_names()));
        methods.add_method("lab", |lua, this, name: Option<String>| {
            this.0.add_sub_lab(name.as_deref()).map(LabUd).lua(lua)
        });
        methods.add_function("boot", |lua, ud: mlua::AnyUserData| {
            let lab = ud.borrow::<LabUd>()?.0.clone();
            lab.boot().lua(lua)?;
            Ok(ud)
        });
        methods.add_method("start_all", |lua, this, ()| this.0.start_all().lua(lua));
        methods.add_method("claim", |lua, this, t: mlua::Table| claim(lua, this, &t));
        methods.add_method("shutdown", |_, this, ()| {
            this.0.shutdown();
            Ok(())
        });
        methods.add_method("pause", |lua, this, ()| this.0.pause().lua(lua));
        methods.add_method("resume", |lua, this, ()| this.0.resume().lua(lua));
        methods.add_method("snapshot", |lua, this, dir: Option<String>| {
            let (dir, given) = match dir {
                Some(d) => (std::path::PathBuf::from(d), true),
                None => {
                    let stem = this.0.name().replace(['/', ':'], "_");
                    (super::snapshot_ud::default_path(lua, &stem, ".lab")?, false)
                }
            };
            lab::snapshot::save(&this.0, &dir).lua(lua)?;
            if given {
                Ok(Value::String(lua.create_string(dir.display().to_string())?))
            } else {
                Ok(Value::UserData(lua.create_userdata(super::snapshot_ud::LabSnapshotUd { dir })?))
            }
        });
        methods.add_method("restore", |lua, this, snap: Value| {
            let dir = super::snapshot_ud::snapshot_path(lua, "lab:restore", &snap)?;
            let ctx = ctx(lua).vms.clone();
            lab::snapshot::restore(&this.0, &dir, &ctx).lua(lua)
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
        methods.add_method("include", |lua, this, what: Value| {
            for r in resources_of(lua, &what)? {
                this.0.include(r).map_err(|e| raise(lua, format!("lab:include: {}", crate::errors::chain(&e))))?;
            }
            Ok(())
        });
        methods.add_method("remove", |lua, this, what: Value| {
            let name = match &what {
                Value::String(s) => s.to_string_lossy(),
                Value::UserData(_) => match resources_of(lua, &what)?.pop() {
                    Some(Resource::Vm(vm)) => lock(&vm).name().to_string(),
                    Some(Resource::Bridge(b)) => b.name(),
                    Some(Resource::Lab(l)) => l.name(),
                    None => unreachable!("one userdata is one resource"),
                },
                other => {
                    return Err(raise(
                        lua,
                        format!("lab:remove: expected a name or a vm, bridge or lab, got {}", other.type_name()),
                    ))
                }
            };
            this.0.remove(&name).map(drop).lua(lua)
        });
        methods.add_method("barrier", |lua, _, (name, count, timeout): (String, u32, Option<Value>)| {
            let timeout = match timeout {
                None | Some(Value::Nil) => std::time::Duration::from_secs(60),
                Some(v) => opts::duration(lua, "lab:barrier", &v)?,
            };
            lab::barrier::Barriers::global().wait(&name, count as usize, timeout).lua(lua)?;
            Ok(true)
        });
        methods.add_method("vm_names", |_, this, ()| Ok(this.0.vm_names()));
        methods.add_method("sub_lab_names", |_, this, ()| Ok(this.0.sub_lab_names()));
        methods.add_method("members", |lua, this, ()| {
            let out = lua.create_table()?;
            for (i, m) in this.0.members().into_iter().enumerate() {
                let (kind, name) = match m {
                    Member::Vm(n) => ("vm", n),
                    Member::Bridge(n) => ("bridge", n),
                    Member::SubLab(n) => ("sub_lab", n),
                };
                let t = lua.create_table()?;
                t.set("kind", kind)?;
                t.set("name", name)?;
                out.set(i + 1, t)?;
            }
            Ok(out)
        });
        methods.add_method("name", |_, this, ()| Ok(this.0.name()));
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: Value| index(lua, this, key));
        methods.add_meta_method(MetaMethod::NewIndex, |lua, this, (key, value): (String, Value)| {
            set_config(lua, this, &key, value)
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("lab({}; {} vm(s))", this.0.name(), this.0.vms().len()))
        });
    }
}

/// The VM, bridge or lab behind a userdata, or each of an array of them.
fn resources_of(lua: &Lua, v: &Value) -> mlua::Result<Vec<Resource>> {
    let one = |ud: &mlua::AnyUserData| -> Option<Resource> {
        if let Ok(vm) = ud.borrow::<VmUd>() {
            return Some(Resource::Vm(vm.0.clone()));
        }
        if let Ok(b) = ud.borrow::<super::bridge_ud::BridgeUd>() {
            return Some(Resource::Bridge(b.bridge.clone()));
        }
        ud.borrow::<LabUd>().ok().map(|l| Resource::Lab(l.0.clone()))
    };
    let wrong = || raise(lua, "lab:include: expected vm, bridge, or lab userdata");
    match v {
        Value::UserData(ud) => Ok(vec![one(ud).ok_or_else(wrong)?]),
        Value::Table(t) => t
            .clone()
            .sequence_values::<Value>()
            .map(|e| match e? {
                Value::UserData(ud) => one(&ud).ok_or_else(wrong),
                _ => Err(raise(lua, "lab:include: array entries must be userdata (vm, bridge or lab)")),
            })
            .collect(),
        _ => Err(wrong()),
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
        // `provium.pack(fmt, …)` and `provium:pack(fmt, …)` both work.
        "pack" | "unpack" => {
            let f: mlua::Function = lua.globals().get::<mlua::Table>("string")?.get(key.as_str())?;
            return Ok(Value::Function(lua.create_function(move |_, mut args: mlua::MultiValue| {
                if matches!(args.front(), Some(Value::UserData(ud)) if ud.is::<LabUd>()) {
                    args.pop_front();
                }
                f.call::<mlua::MultiValue>(args)
            })?));
        }
        // `provium.vm_fixture("x")` (dot call) works like the method form.
        "vm_fixture" => return Ok(Value::Function(lua.create_function(vm_fixture)?)),
        "lab_fixture" => return Ok(Value::Function(lua.create_function(lab_fixture)?)),
        _ => {}
    }
    let (vm, lab) = (this.0.find_vm(&key), this.0.find_lab(&key));
    if let Some(vm) = vm {
        return Ok(Value::UserData(lua.create_userdata(VmUd(vm))?));
    }
    if let Some(lab) = lab {
        return Ok(Value::UserData(lua.create_userdata(LabUd(lab))?));
    }
    if let Some(bridge) = this.0.find_bridge(&key) {
        let ud = super::bridge_ud::BridgeUd { bridge, lab: this.0.clone() };
        return Ok(Value::UserData(lua.create_userdata(ud)?));
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

/// `provium:claim{memory = "4G", cpus = 4}`: the file's whole VM budget,
/// held until it ends (`crate::pool::Account::claim`); once, at top level.
fn claim(lua: &Lua, this: &LabUd, t: &mlua::Table) -> mlua::Result<()> {
    const WHAT: &str = "provium:claim";
    let in_test = lua.app_data_ref::<Labs>().expect("labs installed").test.is_some();
    if in_test || !this.0.is(&root(lua)) {
        return Err(raise(
            lua,
            format!("{WHAT}: only on `provium` at file top level (a claim holds until the file ends)"),
        ));
    }
    opts::check_keys(lua, WHAT, t, &["memory", "cpus"])?;
    let memory_bytes = match super::args::field::<Option<Value>>(lua, WHAT, t, "memory")? {
        None => 0,
        Some(v) => opts::size(lua, &format!("{WHAT}: memory"), &v)?,
    };
    let cpus = match super::args::field::<Option<Value>>(lua, WHAT, t, "cpus")? {
        None => 0,
        Some(Value::Integer(n)) if (0..=4096).contains(&n) => n as u32,
        Some(other) => {
            return Err(raise(lua, format!("{WHAT}: cpus must be an integer from 0 to 4096, got {other:?}")));
        }
    };
    let amount = crate::pool::ResourceAmount { memory_bytes, cpus };
    if memory_bytes == 0 && cpus == 0 {
        return Err(raise(lua, format!("{WHAT}: claims nothing; give memory = …, cpus = … or both")));
    }
    let account = ctx(lua).vms.pool.clone();
    account.claim(amount).map_err(|e| raise(lua, format!("{WHAT}: {}", crate::errors::chain(&e))))
}

fn set_config(lua: &Lua, this: &LabUd, key: &str, value: Value) -> mlua::Result<()> {
    let is_root = this.0.is(&root(lua));
    let known = matches!(key, "reset_between_tests" | "timeout");
    if !known || !is_root {
        let why = if known { "only at file top level" } else { "not a recognised file-scope config key" };
        return Err(raise(lua, format!("cannot set `provium.{key}`: {why}. Known keys: {CONFIG_KEYS}")));
    }
    let mut config = lua.app_data_mut::<LabConfig>().expect("config installed");
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
            lua.app_data_mut::<LabConfig>().expect("config installed").timeout = Some(d);
        }
    }
    Ok(())
}
