//! The layer-0 VM methods — `vm:syscall`, `vm:syscall_async`, `vm:ioctl`,
//! `vm:read_mem` — and `PendingSyscall`, the object `syscall_async`
//! returns. Arguments become [`SyscallCall`] / [`IoctlCall`], outcomes
//! become tables; what happens lives in `crate::vm::layer0`.
//!
//! Lua numbers buffers from 1 (`nested = {{parent = 1, child = 2, offset =
//! 0}}`) and argument slots from 0 (`ptrs = {1}`: `bufs[1]`'s address is
//! argument 1, the second); the typed call numbers both from 0.

use mlua::{Lua, MultiValue, Table, UserData, UserDataMethods, Value};
use provium_protocol::layer0::SYSCALL_ARGS;
use provium_protocol::{IoctlCall, IoctlOutcome};

use super::errors::{raise, LuaResultExt};
use super::file_ud::FileUd;
use super::opts;
use super::vm_ud::VmUd;
use crate::vm::layer0::{PendingSyscall, SyscallCall, SyscallOutcome};

/// What `vm:syscall_async` (and `worker:syscall_async`) returns: `await()`
/// gives the result table once.
pub struct PendingSyscallUd(pub PendingSyscall);

impl UserData for PendingSyscallUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "pending");
        methods.add_method("await", |lua, this, ()| {
            let out = this.0.wait().lua(lua)?;
            syscall_table(lua, &out)
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            let state = if this.0.awaited() { "awaited" } else { "pending" };
            Ok(format!("pending_syscall(nr={} {state})", this.0.nr()))
        });
    }
}

/// An integer argument: an integer, or a float with an integral value.
fn integer(lua: &Lua, what: &str, name: &str, v: &Value) -> mlua::Result<i64> {
    match v {
        Value::Integer(n) => Ok(*n),
        Value::Number(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(*f as i64),
        other => Err(raise(lua, format!("{what}: {name} must be an integer, got {}", lua_shown(other)))),
    }
}

fn lua_shown(v: &Value) -> String {
    match v {
        Value::Number(f) => f.to_string(),
        other => other.type_name().to_string(),
    }
}

/// The entries of a sequence, each converted by `f(index, value)`.
fn sequence<T>(
    lua: &Lua,
    what: &str,
    name: &str,
    t: &Table,
    mut f: impl FnMut(usize, Value) -> mlua::Result<T>,
) -> mlua::Result<Vec<T>> {
    let n = t.raw_len();
    for pair in t.clone().pairs::<Value, Value>() {
        let (k, _) = pair?;
        let in_sequence = matches!(k, Value::Integer(i) if i >= 1 && i as usize <= n);
        if !in_sequence {
            return Err(raise(lua, format!("{what}: {name} must be a list (found key {})", shown_key(&k))));
        }
    }
    (1..=n).map(|i| f(i, t.raw_get(i)?)).collect()
}

fn shown_key(k: &Value) -> String {
    match k {
        Value::String(s) => format!("`{}`", s.to_string_lossy()),
        Value::Integer(i) => i.to_string(),
        other => other.type_name().to_string(),
    }
}

fn bytes_list(lua: &Lua, what: &str, name: &str, v: Value) -> mlua::Result<Vec<Vec<u8>>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Table(t) => sequence(lua, what, name, &t, |i, v| match v {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            other => Err(raise(lua, format!("{what}: {name}[{i}] must be a string, got {}", other.type_name()))),
        }),
        other => Err(raise(lua, format!("{what}: {name} must be a list of strings, got {}", other.type_name()))),
    }
}

fn list_table(lua: &Lua, what: &str, name: &str, v: Value) -> mlua::Result<Option<Table>> {
    match v {
        Value::Nil => Ok(None),
        Value::Table(t) => Ok(Some(t)),
        other => Err(raise(lua, format!("{what}: {name} must be a table, got {}", other.type_name()))),
    }
}

/// `nr, a1..a6` or `nr, {args=, bufs=, ptrs=, nested=}`; `what` names the
/// call in errors.
pub fn syscall_call(lua: &Lua, what: &str, args: MultiValue) -> mlua::Result<SyscallCall> {
    let mut args = args.into_iter();
    let nr = match args.next() {
        None | Some(Value::Nil) => return Err(raise(lua, format!("{what}: missing syscall number"))),
        Some(v) => integer(lua, what, "the syscall number", &v)?,
    };
    let rest: Vec<Value> = args.collect();
    if let [Value::Table(t)] = rest.as_slice() {
        return syscall_table_form(lua, what, nr, t);
    }
    if rest.len() > SYSCALL_ARGS {
        return Err(raise(
            lua,
            format!("{what}: at most {SYSCALL_ARGS} arguments after the number, got {}", rest.len()),
        ));
    }
    let mut call = SyscallCall::new(nr, [0; SYSCALL_ARGS]);
    for (i, v) in rest.iter().enumerate() {
        call.args[i] = match v {
            Value::Nil => 0,
            Value::Table(_) => {
                return Err(raise(
                    lua,
                    format!(
                    "{what}: the table form is `{what}(nr, {{args=, bufs=, ptrs=, nested=}})`, alone after the number"
                ),
                ))
            }
            v => integer(lua, what, &format!("argument {}", i + 1), v)?,
        };
    }
    Ok(call)
}

fn syscall_table_form(lua: &Lua, what: &str, nr: i64, t: &Table) -> mlua::Result<SyscallCall> {
    opts::check_keys(lua, what, t, &["args", "bufs", "ptrs", "nested"])?;
    let mut call = SyscallCall::new(nr, [0; SYSCALL_ARGS]);
    if let Some(a) = list_table(lua, what, "args", t.get("args")?)? {
        let ints = sequence(lua, what, "args", &a, |i, v| integer(lua, what, &format!("args[{i}]"), &v))?;
        if ints.len() > SYSCALL_ARGS {
            return Err(raise(
                lua,
                format!("{what}: args has {} entries; a syscall takes at most {SYSCALL_ARGS}", ints.len()),
            ));
        }
        call.args[..ints.len()].copy_from_slice(&ints);
    }
    for b in bytes_list(lua, what, "bufs", t.get("bufs")?)? {
        call.buf(b, None);
    }
    let n = call.bufs.len();
    if let Some(p) = list_table(lua, what, "ptrs", t.get("ptrs")?)? {
        let slots = sequence(lua, what, "ptrs", &p, |i, v| match v {
            Value::Boolean(false) => Ok(None),
            v => {
                let slot = integer(lua, what, &format!("ptrs[{i}]"), &v)?;
                if !(0..SYSCALL_ARGS as i64).contains(&slot) {
                    return Err(raise(lua, format!("{what}: ptrs[{i}] = {slot}: argument slots are 0 to 5")));
                }
                Ok(Some(slot as u8))
            }
        })?;
        if slots.len() > n {
            return Err(raise(lua, format!("{what}: ptrs has {} entries for {n} buffer(s)", slots.len())));
        }
        for (i, slot) in slots.into_iter().enumerate() {
            if let Some(arg) = slot {
                call.ptrs.push(provium_protocol::BufArg { buf: i as u32, arg });
            }
        }
    }
    if let Some(nt) = list_table(lua, what, "nested", t.get("nested")?)? {
        let nested = sequence(lua, what, "nested", &nt, |i, v| {
            let Value::Table(e) = v else {
                return Err(raise(lua, format!("{what}: nested[{i}] must be a table {{parent=, child=, offset=}}")));
            };
            let name = format!("nested[{i}]");
            opts::check_keys(lua, &format!("{what}: {name}"), &e, &["parent", "child", "offset"])?;
            let index = |key: &str| -> mlua::Result<u32> {
                let v: Value = e.get(key)?;
                if v.is_nil() {
                    return Err(raise(lua, format!("{what}: {name} has no `{key}`")));
                }
                let b = integer(lua, what, &format!("{name}.{key}"), &v)?;
                if !(1..=n as i64).contains(&b) {
                    return Err(raise(lua, format!("{what}: {name}.{key} = {b}: buffers are numbered 1 to {n}")));
                }
                Ok(b as u32 - 1)
            };
            let offset = match e.get::<Value>("offset")? {
                Value::Nil => 0,
                v => integer(lua, what, &format!("{name}.offset"), &v)?,
            };
            let offset = u32::try_from(offset).map_err(|_| {
                raise(lua, format!("{what}: {name}.offset = {offset} must be a byte offset (0 or more)"))
            })?;
            Ok((index("parent")?, index("child")?, offset))
        })?;
        for (parent, child, offset) in nested {
            call.nest(parent, child, offset);
        }
    }
    Ok(call)
}

fn out_bufs(lua: &Lua, bufs: &[Vec<u8>]) -> mlua::Result<Table> {
    lua.create_sequence_from(bufs.iter().map(|b| lua.create_string(b)).collect::<mlua::Result<Vec<_>>>()?)
}

/// `{ret, result, errno, out_bufs}`.
pub fn syscall_table(lua: &Lua, out: &SyscallOutcome) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("ret", out.ret)?;
    t.set("result", out.ret)?;
    t.set("errno", out.errno)?;
    t.set("out_bufs", out_bufs(lua, &out.out_bufs)?)?;
    Ok(t)
}

fn ioctl_table(lua: &Lua, out: &IoctlOutcome) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("ret", out.ret)?;
    t.set("result", out.ret)?;
    t.set("errno", out.errno)?;
    t.set("out_data", lua.create_string(&out.out_data)?)?;
    t.set("out_bufs", out_bufs(lua, &out.out_bufs)?)?;
    Ok(t)
}

/// `fd, cmd[, data[, {bufs=, ptr_offsets=}]]`; `fd` is a File or its
/// `file:fd()`.
fn ioctl_call(lua: &Lua, (fd, cmd, data, o): (Value, Value, Value, Value)) -> mlua::Result<IoctlCall> {
    const WHAT: &str = "vm:ioctl";
    let handle = match &fd {
        Value::Nil => return Err(raise(lua, format!("{WHAT}: missing fd"))),
        Value::UserData(ud) => match ud.borrow::<FileUd>() {
            Ok(f) => f.0.handle().ok_or_else(|| raise(lua, format!("{WHAT}: file is closed")))?,
            Err(_) => return Err(raise(lua, format!("{WHAT}: fd must be a File or its file:fd()"))),
        },
        v => {
            let n = integer(lua, WHAT, "fd", v)?;
            u64::try_from(n)
                .map_err(|_| raise(lua, format!("{WHAT}: fd = {n} is not a file handle (see file:fd())")))?
        }
    };
    let cmd = match &cmd {
        Value::Nil => return Err(raise(lua, format!("{WHAT}: missing cmd"))),
        v => integer(lua, WHAT, "cmd", v)? as u64,
    };
    let data = match data {
        Value::Nil => Vec::new(),
        Value::String(s) => s.as_bytes().to_vec(),
        other => return Err(raise(lua, format!("{WHAT}: data must be a string, got {}", other.type_name()))),
    };
    let mut call = IoctlCall { handle, cmd, data, ..Default::default() };
    if let Some(t) = list_table(lua, WHAT, "options", o)? {
        opts::check_keys(lua, WHAT, &t, &["bufs", "ptr_offsets"])?;
        call.bufs = bytes_list(lua, WHAT, "bufs", t.get("bufs")?)?;
        if let Some(p) = list_table(lua, WHAT, "ptr_offsets", t.get("ptr_offsets")?)? {
            call.ptr_offsets = sequence(lua, WHAT, "ptr_offsets", &p, |i, v| {
                let off = integer(lua, WHAT, &format!("ptr_offsets[{i}]"), &v)?;
                u32::try_from(off).map_err(|_| {
                    raise(lua, format!("{WHAT}: ptr_offsets[{i}] = {off} must be a byte offset (0 or more)"))
                })
            })?;
        }
    }
    Ok(call)
}

pub fn add_methods<M: UserDataMethods<VmUd>>(methods: &mut M) {
    methods.add_method("syscall", |lua, this, args: MultiValue| {
        let call = syscall_call(lua, "vm:syscall", args)?;
        let out = crate::sync::lock(&this.0).syscall(call).lua(lua)?;
        syscall_table(lua, &out)
    });
    methods.add_method("syscall_async", |lua, this, args: MultiValue| {
        let call = syscall_call(lua, "vm:syscall_async", args)?;
        let pending = PendingSyscall::start(&this.0, call).lua(lua)?;
        Ok(PendingSyscallUd(pending))
    });
    methods.add_method("ioctl", |lua, this, args: (Value, Value, Value, Value)| {
        let call = ioctl_call(lua, args)?;
        let out = crate::sync::lock(&this.0).ioctl(call).lua(lua)?;
        ioctl_table(lua, &out)
    });
    methods.add_method("read_mem", |lua, this, (addr, len): (Value, Value)| {
        let addr = integer(lua, "vm:read_mem", "addr", &addr)? as u64;
        let len = integer(lua, "vm:read_mem", "len", &len)?;
        let len = u64::try_from(len).map_err(|_| raise(lua, format!("vm:read_mem: len = {len} must be 0 or more")))?;
        match crate::sync::lock(&this.0).read_mem(addr, len).lua(lua)? {
            Ok(bytes) => Ok((Value::String(lua.create_string(&bytes)?), Value::Nil)),
            Err(errno) => Ok((Value::Nil, Value::Integer(errno as i64))),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(lua: &Lua, src: &str) -> mlua::Result<SyscallCall> {
        let args: MultiValue = lua.load(src).eval()?;
        syscall_call(lua, "vm:syscall", args)
    }

    fn err(r: mlua::Result<impl std::fmt::Debug>) -> String {
        super::super::errors::message(&r.unwrap_err())
    }

    #[test]
    fn the_integer_form_fills_missing_arguments_with_zero() {
        let lua = Lua::new();
        let c = call(&lua, "return 39").unwrap();
        assert_eq!((c.nr, c.args), (39, [0; 6]));
        let c = call(&lua, "return 9, 0, 4096, 3, 0x22, -1").unwrap();
        assert_eq!(c.args, [0, 4096, 3, 0x22, -1, 0]);
        let c = call(&lua, "return 1, 2.0, nil, 4").unwrap();
        assert_eq!(c.args, [2, 0, 4, 0, 0, 0]);
        assert!(err(call(&lua, "return nil")).contains("vm:syscall: missing syscall number"));
        assert!(err(call(&lua, "return 1, 'x'")).contains("argument 1 must be an integer, got string"));
        assert!(err(call(&lua, "return 1, 1.5")).contains("argument 1 must be an integer, got 1.5"));
        assert!(err(call(&lua, "return 1, 1, 2, 3, 4, 5, 6, 7")).contains("at most 6 arguments"));
        assert!(err(call(&lua, "return 1, 0, {}")).contains("alone after the number"));
    }

    #[test]
    fn the_table_form_converts_buffer_indices_from_one_and_slots_from_zero() {
        let lua = Lua::new();
        let c = call(
            &lua,
            r#"return 20, {args = {3}, bufs = {"iovec...........", "hello"}, ptrs = {1},
                        nested = {{parent = 1, child = 2, offset = 0}}}"#,
        )
        .unwrap();
        assert_eq!(c.args, [3, 0, 0, 0, 0, 0]);
        assert_eq!(c.bufs, [b"iovec...........".to_vec(), b"hello".to_vec()]);
        assert_eq!(c.ptrs, [provium_protocol::BufArg { buf: 0, arg: 1 }]);
        assert_eq!(c.nested, [provium_protocol::NestedPtr { parent: 0, child: 1, offset: 0 }]);
        // `false` leaves a buffer out of the arguments.
        let c = call(&lua, r#"return 1, {bufs = {"a", "b"}, ptrs = {false, 0}}"#).unwrap();
        assert_eq!(c.ptrs, [provium_protocol::BufArg { buf: 1, arg: 0 }]);
        assert_eq!(c.check(), Ok(()));
    }

    #[test]
    fn the_table_form_names_what_is_wrong() {
        let lua = Lua::new();
        let e = err(call(&lua, r#"return 1, {bufs = {"a"}, ptr = {0}}"#));
        assert!(e.contains("vm:syscall: unknown option `ptr` (known: args, bufs, ptrs, nested)"), "{e}");
        let e = err(call(&lua, r#"return 1, {bufs = {"a"}, nested = {{parent = 1, child = 1, ofset = 0}}}"#));
        assert!(e.contains("vm:syscall: nested[1]: unknown option `ofset`"), "{e}");
        let e = err(call(&lua, r#"return 1, {bufs = {"a"}, nested = {{parent = 1, child = 2}}}"#));
        assert!(e.contains("nested[1].child = 2: buffers are numbered 1 to 1"), "{e}");
        let e = err(call(&lua, r#"return 1, {bufs = {"a"}, nested = {{child = 1}}}"#));
        assert!(e.contains("nested[1] has no `parent`"), "{e}");
        let e = err(call(&lua, r#"return 1, {bufs = {"a"}, ptrs = {6}}"#));
        assert!(e.contains("ptrs[1] = 6: argument slots are 0 to 5"), "{e}");
        let e = err(call(&lua, r#"return 1, {bufs = {"a"}, ptrs = {0, 1}}"#));
        assert!(e.contains("ptrs has 2 entries for 1 buffer(s)"), "{e}");
        let e = err(call(&lua, r#"return 1, {bufs = {"a", 3}}"#));
        assert!(e.contains("bufs[2] must be a string, got integer"), "{e}");
        let e = err(call(&lua, r#"return 1, {bufs = {x = "a"}}"#));
        assert!(e.contains("bufs must be a list (found key `x`)"), "{e}");
        let e = err(call(&lua, r#"return 1, {args = {1, 2, 3, 4, 5, 6, 7}}"#));
        assert!(e.contains("args has 7 entries"), "{e}");
    }

    #[test]
    fn ioctl_arguments() {
        let lua = Lua::new();
        let io = |src: &str| -> mlua::Result<IoctlCall> {
            let args: (Value, Value, Value, Value) = lua.load(src).eval()?;
            ioctl_call(&lua, args)
        };
        let c = io(r#"return 3, 0x541B, "\0\0\0\0", {bufs = {"x"}, ptr_offsets = {0}}"#).unwrap();
        assert_eq!((c.handle, c.cmd, c.data.len()), (3, 0x541b, 4));
        assert_eq!((c.bufs, c.ptr_offsets), (vec![b"x".to_vec()], vec![0]));
        let c = io("return 3, -1").unwrap();
        assert_eq!((c.cmd, c.data.is_empty()), (u64::MAX, true));
        assert!(err(io("return nil, 1")).contains("vm:ioctl: missing fd"));
        assert!(err(io("return 3")).contains("vm:ioctl: missing cmd"));
        assert!(err(io("return -3, 1")).contains("fd = -3 is not a file handle"));
        assert!(err(io(r#"return 3, 1, "", {buf = {}}"#)).contains("vm:ioctl: unknown option `buf`"));
        assert!(err(io(r#"return 3, 1, 5"#)).contains("data must be a string, got integer"));
    }
}
