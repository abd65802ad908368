//! The NixOS test driver's names, for suites that come from it: the global
//! `start_all()` (also `lab:start_all()`), and the VM methods `execute`,
//! `copy_from_host`, `copy_from_vm`, `crash`, `wait_for_shutdown`,
//! `send_chars`, `send_key`, `systemctl` and `wait_for_unit`. Arguments
//! and results are converted here; the behaviour is `crate::vm::nixos`'s
//! and `crate::lab`'s.

use std::path::PathBuf;
use std::time::Duration;

use mlua::{Lua, Table, UserDataMethods, Value};

use super::errors::{host_path, LuaResultExt};
use super::opts;
use super::vm_ud::VmUd;
use crate::sync::lock;

/// Default bound of `wait_for_shutdown` and `wait_for_unit`.
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A timeout given as seconds, a string like `"5s"`, or `{timeout = …}`.
fn timeout(lua: &Lua, what: &str, v: Option<Value>) -> mlua::Result<Option<Duration>> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Table(t)) => {
            opts::check_keys(lua, what, &t, &["timeout"])?;
            match super::args::field::<Option<Value>>(lua, what, &t, "timeout")? {
                None => Ok(None),
                Some(v) => opts::duration(lua, &format!("{what}: timeout"), &v).map(Some),
            }
        }
        Some(v) => opts::duration(lua, &format!("{what}: timeout"), &v).map(Some),
    }
}

/// `(exit code, stdout)`, the shape of the driver's `execute`.
fn status_and_stdout(lua: &Lua, (code, stdout): (i32, Vec<u8>)) -> mlua::Result<(i32, mlua::String)> {
    Ok((code, lua.create_string(&stdout)?))
}

/// Installs the global `start_all()`: boots every VM not booted yet of the
/// current scope and the scopes it falls through to.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    let start_all = lua.create_function(|lua, ()| super::lab_ud::current(lua).start_all().lua(lua))?;
    lua.globals().set("start_all", start_all)
}

pub fn add_methods<M: UserDataMethods<VmUd>>(methods: &mut M) {
    methods.add_method("execute", |lua, this, (cmd, o): (String, Option<Table>)| {
        super::waits::check_conditions(lua)?;
        let t = timeout(lua, "vm:execute", o.map(Value::Table))?;
        let out = lock(&this.0).execute(&cmd, t).lua(lua)?;
        status_and_stdout(lua, out)
    });
    methods.add_method("copy_from_host", |lua, this, (host, guest): (String, String)| {
        lock(&this.0).copy_from_host(&host_path(lua, &host), &guest).lua(lua)
    });
    methods.add_method("copy_from_vm", |lua, this, (guest, host_dir): (String, String)| {
        let copy: PathBuf = lock(&this.0).copy_from_vm(&guest, &host_path(lua, &host_dir)).lua(lua)?;
        Ok(copy.display().to_string())
    });
    methods.add_method("crash", |lua, this, ()| lock(&this.0).crash().lua(lua));
    methods.add_method("wait_for_shutdown", |lua, this, t: Option<Value>| {
        let t = timeout(lua, "vm:wait_for_shutdown", t)?.unwrap_or(WAIT_TIMEOUT);
        lock(&this.0).wait_for_shutdown(t).lua(lua)
    });
    methods
        .add_method("send_chars", |lua, this, text: mlua::String| lock(&this.0).send_chars(&text.as_bytes()).lua(lua));
    methods.add_method("send_key", |lua, this, key: String| lock(&this.0).send_key(&key).lua(lua));
    methods.add_method("systemctl", |lua, this, args: String| {
        super::waits::check_conditions(lua)?;
        let out = lock(&this.0).systemctl(&args).lua(lua)?;
        status_and_stdout(lua, out)
    });
    methods.add_method("wait_for_unit", |lua, this, (unit, t): (String, Option<Value>)| {
        super::waits::check_conditions(lua)?;
        let t = timeout(lua, "vm:wait_for_unit", t)?.unwrap_or(WAIT_TIMEOUT);
        lock(&this.0).wait_for_unit(&unit, t).lua(lua)
    });
}
