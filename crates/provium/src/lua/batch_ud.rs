//! `vm:batch(fn)`: `fn(b)` records ops on `b` (`b:run`, `b:read_file`,
//! `b:stat`, …); they go to the guest in one round trip when `fn` returns,
//! and come back as an array of `{ok = value}` / `{err = message}`, one per
//! op in order (an op with nothing to return gives `{ok = true}`). The
//! behaviour is `crate::vm::batch`; this converts.

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{Function, Lua, MultiValue, Table, UserData, UserDataMethods, Value};
use provium_protocol::BatchOp;

use super::errors::{raise, LuaResultExt};
use super::result_ud::RunResult;
use super::vm_ud::VmUd;
use crate::vm::batch::BatchOutcome;

/// One recorded op, with a `run`'s command (for its result).
type Recorded = (BatchOp, Option<String>);

/// The ops `fn(b)` recorded.
#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Vec<Recorded>>>);

impl Recorder {
    fn push(&self, op: BatchOp) {
        self.0.borrow_mut().push((op, None));
    }
}

impl UserData for Recorder {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "batch");
        methods.add_method("run", |lua, this, (cmd, second): (String, Option<Value>)| {
            let spec = super::opts::run_request(lua, "batch:run", &cmd, second)?;
            if !spec.stdin.is_empty() {
                return Err(raise(lua, "batch:run does not take `stdin`; use vm:run for that command"));
            }
            this.0.borrow_mut().push((BatchOp::Exec(spec.req), Some(cmd)));
            Ok(())
        });
        methods.add_method("read_file", |_, this, path: String| {
            this.push(BatchOp::ReadFile { path });
            Ok(())
        });
        methods.add_method("write_file", |_, this, (path, data): (String, mlua::String)| {
            this.push(BatchOp::WriteFile { path, perm: 0o644, data: data.as_bytes().to_vec() });
            Ok(())
        });
        methods.add_method("stat", |_, this, path: String| {
            this.push(BatchOp::Stat { path, follow_symlinks: true });
            Ok(())
        });
        methods.add_method("listdir", |_, this, path: String| {
            this.push(BatchOp::ListDir { path });
            Ok(())
        });
        methods.add_method("mkdir", |lua, this, (path, o): (String, Option<Value>)| {
            let (parents, perm) = super::vm_ud::mkdir_opts(lua, "batch:mkdir", o)?;
            this.push(BatchOp::Mkdir { path, parents, perm });
            Ok(())
        });
        methods.add_method("unlink", |_, this, path: String| {
            this.push(BatchOp::Unlink { path });
            Ok(())
        });
        methods.add_method("rename", |_, this, (from, to): (String, String)| {
            this.push(BatchOp::Rename { from, to });
            Ok(())
        });
        methods.add_method("syscall", |lua, this, args: MultiValue| {
            if matches!(args.get(1), Some(Value::Table(_))) {
                return Err(raise(
                    lua,
                    "batch:syscall does not support the {args=, bufs=, ptrs=} table form; use vm:syscall for calls \
                     with buffers",
                ));
            }
            let call = super::layer0_ud::syscall_call(lua, "batch:syscall", args)?;
            this.push(BatchOp::Syscall(call));
            Ok(())
        });
    }
}

fn outcome_table(lua: &Lua, outcome: BatchOutcome, command: Option<String>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let ok: Value = match outcome {
        BatchOutcome::Failed(msg) => {
            t.set("err", msg)?;
            return Ok(t);
        }
        BatchOutcome::Ran(out) => {
            Value::UserData(lua.create_userdata(RunResult { command: command.unwrap_or_default(), out })?)
        }
        BatchOutcome::Read(bytes) => Value::String(lua.create_string(&bytes)?),
        BatchOutcome::Done => Value::Boolean(true),
        BatchOutcome::Stat(md) => Value::Table(super::vm_ud::entry_type_table(lua, &md)?),
        BatchOutcome::Listed(entries) => Value::Table(super::vm_ud::listdir_table(lua, &entries)?),
        BatchOutcome::Syscall(out) => Value::Table(super::layer0_ud::syscall_table(lua, &out)?),
    };
    t.set("ok", ok)?;
    Ok(t)
}

pub fn add_methods<M: UserDataMethods<VmUd>>(methods: &mut M) {
    methods.add_method("batch", |lua, this, f: Function| {
        let recorder = Recorder::default();
        f.call::<()>(recorder.clone())?;
        let recorded = std::mem::take(&mut *recorder.0.borrow_mut());
        let (ops, commands): (Vec<BatchOp>, Vec<Option<String>>) = recorded.into_iter().unzip();
        let outcomes = crate::sync::lock(&this.0).batch(ops).lua(lua)?;
        let out = lua.create_table()?;
        for (i, (o, c)) in outcomes.into_iter().zip(commands).enumerate() {
            out.set(i + 1, outcome_table(lua, o, c)?)?;
        }
        Ok(out)
    });
}
