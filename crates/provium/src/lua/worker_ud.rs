//! `Worker`: a second agent process in the guest with credentials of its
//! own (`vm:spawn_worker{uid=, gid=, groups=}`). Its methods take the same
//! arguments as the VM's (`run`, `run_async`, `syscall`, `syscall_async`)
//! and give the same results; this file only converts them. What a worker
//! is and does lives in `crate::vm::worker`.

use mlua::{Lua, MultiValue, Table, UserData, UserDataMethods, Value};
use provium_protocol::WorkerSpec;

use super::errors::{raise, LuaResultExt};
use super::lab_ud::track;
use super::layer0_ud::{syscall_call, syscall_table, PendingSyscallUd};
use super::opts;
use super::proc_ud::{signal_number, ProcUd};
use super::result_ud::RunResult;
use super::vm_ud::VmUd;
use crate::vm::worker::GuestWorker;

/// A worker as Lua sees it.
#[derive(Clone)]
pub struct WorkerUd(pub GuestWorker);

const WHAT: &str = "vm:spawn_worker";

/// A user or group id: an integer from 0 to 2^32 − 1.
fn id(lua: &Lua, name: &str, v: Value) -> mlua::Result<Option<u32>> {
    match v {
        Value::Nil => Ok(None),
        Value::Integer(n) if u32::try_from(n).is_ok() => Ok(Some(n as u32)),
        Value::Number(f) if f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&f) => Ok(Some(f as u32)),
        other => {
            Err(raise(lua, format!("{WHAT}: {name} must be an integer from 0 to {}, got {}", u32::MAX, shown(&other))))
        }
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::Integer(n) => n.to_string(),
        Value::Number(f) => f.to_string(),
        other => other.type_name().to_string(),
    }
}

/// `{uid=, gid=, groups=, thread=}`.
fn worker_spec(lua: &Lua, opts: Value) -> mlua::Result<WorkerSpec> {
    let t: Table = match opts {
        Value::Nil => return Ok(WorkerSpec::default()),
        Value::Table(t) => t,
        other => return Err(raise(lua, format!("{WHAT}: options must be a table, got {}", other.type_name()))),
    };
    opts::check_keys(lua, WHAT, &t, &["uid", "gid", "groups", "thread"])?;
    match t.get::<Value>("thread")? {
        Value::Nil | Value::Boolean(false) => {}
        Value::Boolean(true) => {
            return Err(raise(
                lua,
                format!("{WHAT}: `thread=true` is not yet supported (v1 always spawns a process sub-agent)"),
            ))
        }
        other => return Err(raise(lua, format!("{WHAT}: thread must be a boolean, got {}", other.type_name()))),
    }
    let groups = match t.get::<Value>("groups")? {
        Value::Nil => None,
        Value::Table(g) => {
            let mut out = Vec::new();
            for (i, v) in g.sequence_values::<Value>().enumerate() {
                let gid = id(lua, &format!("groups[{}]", i + 1), v?)?;
                out.extend(gid);
            }
            Some(out)
        }
        other => {
            return Err(raise(lua, format!("{WHAT}: groups must be a list of group ids, got {}", other.type_name())))
        }
    };
    Ok(WorkerSpec { uid: id(lua, "uid", t.get("uid")?)?, gid: id(lua, "gid", t.get("gid")?)?, groups })
}

pub fn add_vm_methods<M: UserDataMethods<VmUd>>(methods: &mut M) {
    methods.add_method("spawn_worker", |lua, this, o: Value| {
        let spec = worker_spec(lua, o)?;
        let w = GuestWorker::spawn(&this.0, spec).lua(lua)?;
        track(lua, w.clone());
        Ok(WorkerUd(w))
    });
}

impl UserData for WorkerUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "worker");
        methods.add_method("run", |lua, this, (cmd, second): (String, Option<Value>)| {
            super::waits::check_conditions(lua)?;
            let spec = opts::run_request(lua, "worker:run", &cmd, second)?;
            let out = this.0.exec(spec.req, &spec.stdin).lua(lua)?;
            Ok(RunResult { command: cmd, out })
        });
        methods.add_method("run_async", |lua, this, (cmd, second): (String, Option<Value>)| {
            const OP: &str = "worker:run_async";
            super::vm_streams::refuse_timeout(lua, OP, &second)?;
            let spec = opts::run_request(lua, OP, &cmd, second)?;
            let p = this.0.run_async(&cmd, spec.req, &spec.stdin).lua(lua)?;
            track(lua, p.clone());
            Ok(ProcUd(p))
        });
        methods.add_method("syscall", |lua, this, args: MultiValue| {
            let call = syscall_call(lua, "worker:syscall", args)?;
            let out = this.0.syscall(call).lua(lua)?;
            syscall_table(lua, &out)
        });
        methods.add_method("syscall_async", |lua, this, args: MultiValue| {
            let call = syscall_call(lua, "worker:syscall_async", args)?;
            Ok(PendingSyscallUd(this.0.syscall_async(call).lua(lua)?))
        });
        methods.add_method("kill", |lua, this, sig: Option<Value>| {
            let sig = match sig {
                None | Some(Value::Nil) => libc::SIGTERM,
                Some(v) => signal_number(&v).map_err(|m| raise(lua, format!("worker:kill: {m}")))?,
            };
            this.0.kill(sig).lua(lua)
        });
        methods.add_method("join", |lua, this, t: Option<Value>| {
            let timeout = match t {
                None | Some(Value::Nil) => None,
                Some(v) => Some(opts::duration(lua, "worker:join", &v)?),
            };
            this.0.join(timeout).lua(lua)
        });
        methods.add_method("open_file", |lua, this, (path, _mode): (String, Value)| -> mlua::Result<()> {
            Err(raise(
                lua,
                format!(
                    "worker:open_file({path:?}): not supported for a process-isolated worker (its file table is not \
                     the parent agent's); open it inside the worker with worker:syscall(openat, …), or use \
                     vm:open_file on vm `{}` when the worker's credentials do not matter",
                    this.0.vm_name()
                ),
            ))
        });
        methods.add_method("handle", |_, this, ()| Ok(this.0.handle()));
        methods.add_method("pid", |_, this, ()| Ok(this.0.pid()));
        methods.add_method("close", |_, this, ()| {
            this.0.close();
            Ok(())
        });
        methods.add_meta_method("__tostring", |_, this, ()| Ok(this.0.describe()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(lua: &Lua, src: &str) -> mlua::Result<WorkerSpec> {
        worker_spec(lua, lua.load(src).eval()?)
    }

    fn err(r: mlua::Result<impl std::fmt::Debug>) -> String {
        super::super::errors::message(&r.unwrap_err())
    }

    #[test]
    fn options_parse_into_the_spec() {
        let lua = Lua::new();
        assert_eq!(spec(&lua, "return nil").unwrap(), WorkerSpec::default());
        let s = spec(&lua, "return {uid = 1000, gid = 1000.0, groups = {10, 20}, thread = false}").unwrap();
        assert_eq!(s, WorkerSpec { uid: Some(1000), gid: Some(1000), groups: Some(vec![10, 20]) });
        assert_eq!(spec(&lua, "return {groups = {}}").unwrap().groups, Some(vec![]));
    }

    #[test]
    fn bad_options_are_named() {
        let lua = Lua::new();
        let e = err(spec(&lua, "return {thread = true}"));
        assert!(
            e.contains("vm:spawn_worker: `thread=true` is not yet supported (v1 always spawns a process sub-agent)")
        );
        let e = err(spec(&lua, "return {user = 'x'}"));
        assert!(e.contains("vm:spawn_worker: unknown option `user` (known: uid, gid, groups, thread)"), "{e}");
        let e = err(spec(&lua, "return {uid = -1}"));
        assert!(e.contains("uid must be an integer from 0 to 4294967295, got -1"), "{e}");
        let e = err(spec(&lua, "return {gid = 'wheel'}"));
        assert!(e.contains("gid must be an integer from 0 to 4294967295, got string"), "{e}");
        let e = err(spec(&lua, "return {groups = {1, 'x'}}"));
        assert!(e.contains("groups[2] must be an integer"), "{e}");
        let e = err(spec(&lua, "return 5"));
        assert!(e.contains("options must be a table, got integer"), "{e}");
    }
}
