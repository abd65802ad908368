//! The `provium` global (the file's root lab) and the scope rules.
//!
//! VMs declared at file top level belong to the file scope and live until
//! the file ends; VMs declared inside a `test()` body belong to that test's
//! scope and are shut down when it ends. `provium:vm(name)` looks in the
//! test scope, then the file scope. Declaring a name the file scope already
//! has, from inside a test, is an error rather than shadowing.

use std::sync::{Arc, Mutex};

use mlua::{Lua, MultiValue, UserData, UserDataMethods, Value};

use super::errors::{raise, LuaResultExt};
use super::opts;
use super::vm_ud::{VmRef, VmUd};
use crate::image::Images;
use crate::vm::{KillSwitch, Vm, VmState};
use crate::vmm::Accel;

/// What every VM of a file needs, and what the watchdog may kill.
pub struct FileCtx {
    pub images: Arc<Images>,
    pub accel: Accel,
    /// Every VM's kill switch, for the per-file watchdog.
    pub kill_switches: Arc<Mutex<Vec<KillSwitch>>>,
}

/// A stream, process or file handle owned by a scope.
#[derive(Clone)]
pub enum Resource {
    Stream(super::stream_ud::StreamUd),
    Proc(super::proc_ud::ProcUd),
    File(super::file_ud::FileUd),
}

impl Resource {
    /// Close order at scope end: streams, then processes, then files.
    fn rank(&self) -> u8 {
        match self {
            Resource::Stream(_) => 0,
            Resource::Proc(_) => 1,
            Resource::File(_) => 2,
        }
    }

    fn close(&self) {
        match self {
            Resource::Stream(s) => s.close(),
            Resource::Proc(p) => p.close(),
            Resource::File(f) => f.close(),
        }
    }
}

/// Closes resources by kind (streams → processes → files), oldest first.
pub fn close_resources(mut res: Vec<Resource>) {
    res.sort_by_key(Resource::rank);
    for r in res {
        r.close();
    }
}

/// Registers a resource with the current scope (the running test's, else
/// the file's) so it is closed when the scope ends.
pub fn track(lua: &Lua, r: Resource) {
    let mut scopes = lua.app_data_mut::<Scopes>().expect("scopes installed");
    match scopes.test_resources.as_mut() {
        Some(t) => t.push(r),
        None => scopes.file_resources.push(r),
    }
}

/// The VMs and resources of the file scope and of the running test's scope.
#[derive(Default)]
pub struct Scopes {
    pub file: Vec<(String, VmRef)>,
    pub test: Option<Vec<(String, VmRef)>>,
    pub file_resources: Vec<Resource>,
    pub test_resources: Option<Vec<Resource>>,
}

impl Scopes {
    fn find(&self, name: &str) -> Option<VmRef> {
        let in_scope = |s: &Vec<(String, VmRef)>| s.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        self.test.as_ref().and_then(in_scope).or_else(|| in_scope(&self.file))
    }

    /// Every VM of both scopes, file scope first.
    pub fn all(&self) -> Vec<(String, VmRef)> {
        let mut v = self.file.clone();
        if let Some(t) = &self.test {
            v.extend(t.iter().cloned());
        }
        v
    }
}

/// Opens the scope of a test.
pub fn begin_test_scope(lua: &Lua) {
    let mut scopes = lua.app_data_mut::<Scopes>().expect("scopes installed");
    scopes.test = Some(Vec::new());
    scopes.test_resources = Some(Vec::new());
}

/// Closes the running test's resources, then shuts down its VMs.
pub fn end_test_scope(lua: &Lua) {
    let (vms, res) = {
        let mut scopes = lua.app_data_mut::<Scopes>().expect("scopes installed");
        (scopes.test.take().unwrap_or_default(), scopes.test_resources.take().unwrap_or_default())
    };
    close_resources(res);
    close_all(vms);
}

/// Closes the file scope's resources, then shuts down its VMs.
pub fn end_file_scope(lua: &Lua) {
    end_test_scope(lua);
    let (vms, res) = {
        let mut scopes = lua.app_data_mut::<Scopes>().expect("scopes installed");
        (std::mem::take(&mut scopes.file), std::mem::take(&mut scopes.file_resources))
    };
    close_resources(res);
    close_all(vms);
}

/// Shuts down every VM in `vms` (end of a scope), newest first.
pub fn close_all(vms: Vec<(String, VmRef)>) {
    for (_, vm) in vms.into_iter().rev() {
        vm.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
    }
}

pub struct Lab;

fn declare(lua: &Lua, name: String, profile: String, o: Option<mlua::Table>) -> mlua::Result<VmUd> {
    let boot_opts = opts::boot_opts(lua, &format!("provium:vm(\"{name}\", …)"), o)?;
    let (images, accel, kills) = {
        let ctx = lua.app_data_ref::<FileCtx>().expect("file context installed");
        (ctx.images.clone(), ctx.accel, ctx.kill_switches.clone())
    };
    let mut scopes = lua.app_data_mut::<Scopes>().expect("scopes installed");
    let in_test = scopes.test.is_some();
    if in_test && scopes.file.iter().any(|(n, _)| *n == name) {
        drop(scopes);
        return Err(raise(
            lua,
            format!(
                "provium:vm(\"{name}\", …): name already declared at file scope; pick a different name, or use \
                 provium:vm(\"{name}\") to reuse the file-scope VM"
            ),
        ));
    }
    let scope = match scopes.test.as_mut() {
        Some(t) => t,
        None => &mut scopes.file,
    };
    if scope.iter().any(|(n, _)| *n == name) {
        drop(scopes);
        return Err(raise(lua, format!("provium:vm: vm name `{name}` already used in this scope")));
    }
    // Unknown profiles fail here, at declaration, not at boot.
    if !images.config().profiles.contains_key(&profile) && profile != crate::config::DEFAULT_PROFILE {
        drop(scopes);
        let e = images.resolve(&profile).expect_err("unknown profile");
        return Err(super::errors::raise_err(lua, &e));
    }
    let vm = Vm::new(&name, &profile, boot_opts, images, accel);
    kills.lock().unwrap().push(vm.kill_switch());
    let vm: VmRef = Arc::new(Mutex::new(vm));
    scope.push((name, vm.clone()));
    Ok(VmUd(vm))
}

impl UserData for Lab {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("vm", |lua, _, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            match args.as_slice() {
                [Value::String(name)] => {
                    let name = name.to_string_lossy();
                    let found = lua.app_data_ref::<Scopes>().expect("scopes installed").find(&name);
                    found.map(VmUd).ok_or_else(|| raise(lua, format!("provium:vm: no vm named `{name}` in this lab")))
                }
                [Value::String(name), Value::String(profile)] => {
                    declare(lua, name.to_string_lossy(), profile.to_string_lossy(), None)
                }
                [Value::String(name), Value::String(profile), Value::Table(t)] => {
                    declare(lua, name.to_string_lossy(), profile.to_string_lossy(), Some(t.clone()))
                }
                [Value::String(name), Value::String(profile), Value::Nil] => {
                    declare(lua, name.to_string_lossy(), profile.to_string_lossy(), None)
                }
                _ => Err(raise(
                    lua,
                    format!("provium:vm(name[, profile[, opts]]): bad arguments ({} given)", args.len()),
                )),
            }
        });
        methods.add_method("boot", |lua, _, ()| {
            let vms = {
                let scopes = lua.app_data_ref::<Scopes>().expect("scopes installed");
                match &scopes.test {
                    Some(t) => t.clone(),
                    None => scopes.file.clone(),
                }
            };
            for (_, vm) in vms {
                let mut vm = vm.lock().unwrap_or_else(|p| p.into_inner());
                if vm.state() == VmState::Created {
                    vm.boot(&Default::default()).lua(lua)?;
                }
            }
            Ok(())
        });
        methods.add_method("name", |lua, _, ()| {
            let scopes = lua.app_data_ref::<Scopes>().expect("scopes installed");
            Ok(if scopes.test.is_some() { "test" } else { "provium" })
        });
        methods.add_meta_method("__tostring", |lua, _, ()| {
            let n = lua.app_data_ref::<Scopes>().expect("scopes installed").all().len();
            Ok(format!("lab(provium; {n} vm(s))"))
        });
    }
}
