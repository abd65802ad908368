//! The background-job API (`vm:background`, `vm:job_wait`, `vm:job_kill`),
//! `vm:exec` with its boolean `ok` field, and the global `assert_eq` — the
//! shapes older suites use, kept exactly so they run unchanged.
//!
//! A job table `{id, pid}` names a spawned process by its agent handle; the
//! process object behind it is kept per file so it is closed at scope end.

use std::collections::HashMap;
use std::time::Duration;

use mlua::{Lua, Table, UserDataMethods, Value};
use provium_protocol::ExitStatus;

use crate::vm::process::ProcState;

use super::errors::{raise, LuaResultExt};
use super::opts;
use super::proc_ud::ProcUd;
use super::vm_ud::VmUd;

/// Jobs started with `vm:background`, by handle.
#[derive(Default)]
struct Jobs(HashMap<u64, ProcUd>);

/// A finished job's exit code is shell-like: 128 + signal when signalled.
fn job_table(lua: &Lua, st: &ProcState) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let (code, running) = match st.status {
        None => (-1, true),
        Some(ExitStatus::Exited(c)) => (c as i64, false),
        Some(ExitStatus::Signalled(s)) => (128 + s as i64, false),
        Some(ExitStatus::TimedOut) => (128 + libc::SIGKILL as i64, false),
    };
    t.set("exit_code", code)?;
    t.set("running", running)?;
    t.set("stdout", lua.create_string(&st.stdout)?)?;
    t.set("stderr", lua.create_string(&st.stderr)?)?;
    if let Some(ExitStatus::Signalled(s)) = st.status {
        t.set("signal", s)?;
    }
    Ok(t)
}

fn job_of(lua: &Lua, job: &Table, what: &str) -> mlua::Result<ProcUd> {
    let id: u64 =
        job.get::<Option<u64>>("id")?.ok_or_else(|| raise(lua, format!("{what}: expected a job table {{id, pid}}")))?;
    lua.app_data_ref::<Jobs>()
        .and_then(|j| j.0.get(&id).cloned())
        .ok_or_else(|| raise(lua, format!("{what}: no background job with id {id} in this file")))
}

pub fn install(lua: &Lua) -> mlua::Result<()> {
    lua.set_app_data(Jobs::default());
    let assert_eq = lua.create_function(|lua, (expected, actual, msg): (Value, Value, Option<String>)| {
        if expected.equals(&actual)? {
            return Ok(());
        }
        let show = |v: &Value| match v {
            Value::String(s) => format!("{:?}", s.to_string_lossy()),
            other => lua
                .globals()
                .get::<mlua::Function>("tostring")
                .and_then(|f| f.call::<String>(other.clone()))
                .unwrap_or_default(),
        };
        let m = msg.unwrap_or_else(|| "assert_eq failed".into());
        Err(raise(lua, format!("{m}: expected {}, got {}", show(&expected), show(&actual))))
    })?;
    lua.globals().set("assert_eq", assert_eq)
}

pub fn add_methods<M: UserDataMethods<VmUd>>(methods: &mut M) {
    methods.add_method("background", |lua, this, cmd: String| {
        let p = super::vm_streams::spawn(lua, &this.0, "vm:background", &cmd, None)?;
        let (id, pid) = (p.0.handle(), p.0.pid());
        lua.app_data_mut::<Jobs>().expect("jobs installed").0.insert(id, p);
        let t = lua.create_table()?;
        t.set("id", id)?;
        t.set("pid", pid)?;
        Ok(t)
    });
    methods.add_method("job_wait", |lua, _, (job, t): (Table, Option<Value>)| {
        let p = job_of(lua, &job, "vm:job_wait")?.0;
        let timeout = match t {
            None | Some(Value::Nil) => Duration::ZERO,
            Some(v) => opts::duration(lua, "vm:job_wait", &v)?,
        };
        let st = p.wait(Some(timeout), false).lua(lua)?;
        job_table(lua, &st)
    });
    methods.add_method("job_kill", |lua, _, job: Table| {
        let p = job_of(lua, &job, "vm:job_kill")?.0;
        p.signal(libc::SIGKILL).lua(lua)?;
        let st = p.wait(Some(Duration::from_secs(5)), true).lua(lua)?;
        job_table(lua, &st)
    });
    methods.add_method("exec", |lua, this, cmd: String| {
        let spec = opts::run_request(lua, "vm:exec", &cmd, None)?;
        let out = crate::sync::lock(&this.0).exec(spec.req, &spec.stdin).lua(lua)?;
        let t = lua.create_table()?;
        let code = match out.status {
            ExitStatus::Exited(c) => c as i64,
            ExitStatus::Signalled(s) => 128 + s as i64,
            ExitStatus::TimedOut => -2,
        };
        t.set("ok", out.status == ExitStatus::Exited(0))?;
        t.set("exit_code", code)?;
        t.set("stdout", lua.create_string(&out.stdout)?)?;
        t.set("stderr", lua.create_string(&out.stderr)?)?;
        Ok(t)
    });
}
