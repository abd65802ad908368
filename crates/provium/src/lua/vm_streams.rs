//! VM methods that open something long-lived in the guest: background
//! processes (`run_async`), file handles (`open_file`), and streams
//! (`tail_file`, `fd_stream`, `console`). Each new object is tracked by the
//! current scope so it is closed when the scope ends.

use mlua::{Lua, Table, UserDataMethods, Value};
use provium_protocol::{OpenMode, StreamSource, TailStart};

use super::console_ud::ConsoleUd;
use super::errors::{creation_site, raise, LuaResultExt};
use super::file_ud::{self, FileUd};
use super::lab_ud::track;
use super::opts;
use super::proc_ud::ProcUd;
use super::stream_ud::StreamUd;
use super::vm_ud::VmUd;
use crate::vm::file::GuestFile;
use crate::vm::process::GuestProcess;
use crate::vm::{Stream, VmRef};

/// Makes `stream` the current scope's and wraps it for Lua.
pub fn tracked(lua: &Lua, stream: Stream) -> StreamUd {
    track(lua, stream.clone());
    StreamUd(stream)
}

/// Opens an agent stream on `vm` and wraps it as a tracked Lua stream.
pub fn open_stream(
    lua: &Lua,
    vm: &VmRef,
    kind: &'static str,
    detail: &str,
    source: StreamSource,
) -> mlua::Result<StreamUd> {
    let stream = Stream::open(vm, kind, detail, source, creation_site(lua)).lua(lua)?;
    Ok(tracked(lua, stream))
}

/// Refuses a `timeout` for a background process: nothing would honour it.
pub fn refuse_timeout(lua: &Lua, what: &str, second: &Option<Value>) -> mlua::Result<()> {
    if let Some(Value::Table(t)) = second {
        if !t.get::<Value>("timeout")?.is_nil() || !t.get::<Value>("timeout_ms")?.is_nil() {
            return Err(raise(
                lua,
                format!("{what}: `timeout` is not honoured here; pass it to `proc:wait(timeout)` instead"),
            ));
        }
    }
    Ok(())
}

/// Starts a background process and tracks it.
pub fn spawn(lua: &Lua, vm: &VmRef, what: &str, cmd: &str, second: Option<Value>) -> mlua::Result<ProcUd> {
    refuse_timeout(lua, what, &second)?;
    let spec = opts::run_request(lua, what, cmd, second)?;
    let p = GuestProcess::spawn(vm, cmd, spec.req, &spec.stdin).lua(lua)?;
    track(lua, p.clone());
    Ok(ProcUd(p))
}

fn open_mode(lua: &Lua, t: &Table) -> mlua::Result<(OpenMode, u32)> {
    opts::check_keys(lua, "vm:open_file", t, &["read", "write", "create", "truncate", "append", "exclusive", "perm"])?;
    let flag = |k: &str| t.get::<Option<bool>>(k).map(|v| v.unwrap_or(false));
    let mode = OpenMode {
        read: flag("read")?,
        write: flag("write")?,
        create: flag("create")?,
        truncate: flag("truncate")?,
        append: flag("append")?,
        exclusive: flag("exclusive")?,
    };
    if !(mode.read || mode.write || mode.append) {
        return Err(raise(lua, "vm:open_file: must specify at least one of `read`, `write`, `append`"));
    }
    Ok((mode, super::args::field::<Option<u32>>(lua, "vm:open_file", t, "perm")?.unwrap_or(0o644)))
}

fn tail_start(lua: &Lua, opts: Option<Table>) -> mlua::Result<TailStart> {
    let Some(t) = opts else { return Ok(TailStart::End) };
    opts::check_keys(lua, "vm:tail_file", &t, &["start"])?;
    let bad = |shown: String| {
        raise(lua, format!("vm:tail_file: opts.start = `{shown}` (expected \"beginning\"|\"end\"|number)"))
    };
    Ok(match t.get::<Value>("start")? {
        Value::Nil => TailStart::End,
        Value::String(s) => match s.to_string_lossy().as_str() {
            "end" => TailStart::End,
            "beginning" | "start" => TailStart::Beginning,
            other => return Err(bad(other.to_string())),
        },
        Value::Integer(n) if n >= 0 => TailStart::Offset(n as u64),
        Value::Integer(n) => TailStart::FromEnd(n.unsigned_abs()),
        Value::Number(f) if f.is_finite() && f >= 0.0 => TailStart::Offset(f as u64),
        Value::Number(f) if f.is_finite() => TailStart::FromEnd((-f) as u64),
        other => return Err(bad(format!("{other:?}"))),
    })
}

pub fn add_methods<M: UserDataMethods<VmUd>>(methods: &mut M) {
    methods.add_method("run_async", |lua, this, (cmd, second): (String, Option<Value>)| {
        spawn(lua, &this.0, "vm:run_async", &cmd, second)
    });
    methods.add_method("open_file", |lua, this, (path, mode): (String, Table)| {
        let (mode, perm) = open_mode(lua, &mode)?;
        let f = GuestFile::open(&this.0, &path, mode, perm, creation_site(lua)).lua(lua)?;
        track(lua, f.clone());
        Ok(FileUd(f))
    });
    methods.add_method("tail_file", |lua, this, (path, o): (String, Option<Table>)| {
        let start = tail_start(lua, o)?;
        open_stream(lua, &this.0, "tail_file", &path, StreamSource::File { path: path.clone(), start })
    });
    methods.add_method("fd_stream", |lua, this, target: Value| {
        let handle = match &target {
            Value::Integer(n) if *n > 0 => *n as u64,
            Value::UserData(ud) => match ud.borrow::<FileUd>() {
                Ok(f) => file_ud::handle_of(lua, &f)?,
                Err(_) => return Err(raise(lua, "vm:fd_stream: expected a file handle number or a File")),
            },
            _ => return Err(raise(lua, "vm:fd_stream: expected a file handle number or a File")),
        };
        open_stream(lua, &this.0, "fd_stream", &handle.to_string(), StreamSource::Fd { handle })
    });
    methods.add_method("console", |_, this, ()| Ok(ConsoleUd(this.0.clone())));
}
