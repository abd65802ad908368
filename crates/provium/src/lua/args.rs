//! One mechanism for every binding's argument errors.
//!
//! mlua converts a method's arguments before the method runs, and its
//! errors read like internals (`bad argument #2 to `VmUd.write_file`: error
//! converting Lua nil to String`) without the test's line. [`Checked`] wraps
//! the registry a `UserData` type's `add_methods` receives: every method it
//! registers converts its own arguments, so a bad one reads
//!
//! ```text
//! t.test.lua:7: vm:write_file: argument 2 (data) must be a string, got nil
//! ```
//!
//! It is also stricter than mlua, which turns numbers into strings and
//! strings into numbers: `vm:run(42)` is refused. The expected kinds come
//! from the method's argument types ([`kinds_of`]); the names from
//! [`PARAMS`].

use mlua::{FromLuaMulti, IntoLuaMulti, Lua, MaybeSend, MultiValue, UserDataMethods, Value};

use super::errors::raise;

/// Argument names of the methods whose arguments have a type (methods that
/// take `Value`s check them themselves), by `object:method`.
const PARAMS: &[(&str, &[&str])] = &[
    ("vm:boot", &["opts"]),
    ("batch:run", &["cmd", "opts"]),
    ("batch:read_file", &["path"]),
    ("batch:write_file", &["path", "data"]),
    ("batch:stat", &["path"]),
    ("batch:listdir", &["path"]),
    ("batch:mkdir", &["path", "opts"]),
    ("batch:unlink", &["path"]),
    ("batch:rename", &["from", "to"]),
    ("vm:batch", &["fn"]),
    ("clock:set_ns", &["ns"]),
    ("console:expect", &["pattern", "timeout"]),
    ("console:write", &["data", "opts"]),
    ("file:read", &["n"]),
    ("file:write", &["data"]),
    ("file:seek", &["offset", "whence"]),
    ("t:assert", &["cond", "msg"]),
    ("t:assert_eq", &["a", "b", "msg"]),
    ("t:assert_neq", &["a", "b", "msg"]),
    ("t:assert_contains", &["haystack", "needle", "msg"]),
    ("t:assert_raises", &["fn", "msg"]),
    ("t:fail", &["msg"]),
    ("t:skip", &["reason"]),
    ("vm:background", &["cmd"]),
    ("vm:job_wait", &["job", "timeout"]),
    ("vm:job_kill", &["job"]),
    ("vm:exec", &["cmd"]),
    ("lab:bridge", &["name", "opts"]),
    ("lab:lab", &["name"]),
    ("lab:claim", &["amount"]),
    ("lab:snapshot", &["dir"]),
    ("lab:barrier", &["name", "count", "timeout"]),
    ("vm:ioctl", &["fd", "cmd", "data", "opts"]),
    ("vm:read_mem", &["addr", "len"]),
    ("proc:wait", &["timeout"]),
    ("proc:kill", &["sig"]),
    ("proc:stdin_write", &["data"]),
    ("stream:next", &["timeout"]),
    ("stream:read_until", &["pattern", "timeout"]),
    ("stream:expect", &["pattern", "timeout"]),
    ("stream:drain", &["timeout"]),
    ("vm:run_async", &["cmd", "opts"]),
    ("vm:open_file", &["path", "mode"]),
    ("vm:tail_file", &["path", "opts"]),
    ("vm:nic", &["name"]),
    ("vm:run", &["cmd", "opts"]),
    ("vm:read_file", &["path"]),
    ("vm:write_file", &["path", "data"]),
    ("vm:stat", &["path"]),
    ("vm:listdir", &["path"]),
    ("vm:mkdir", &["path", "opts"]),
    ("vm:push_file", &["host", "guest", "opts"]),
    ("vm:unlink", &["path"]),
    ("vm:rename", &["from", "to"]),
    ("vm:snapshot", &["path"]),
    ("vm:wait_until", &["fn", "opts"]),
    ("vm:daemon", &["cmd", "opts"]),
    ("vm:succeed", &["cmd"]),
    ("vm:fail", &["cmd"]),
    ("vm:wait_until_succeeds", &["cmd", "timeout"]),
    ("vm:wait_until_fails", &["cmd", "timeout"]),
    ("vm:wait_for_file", &["path", "timeout"]),
    ("vm:wait_for_console_text", &["pattern", "timeout"]),
    ("vm:execute", &["cmd", "opts"]),
    ("vm:copy_from_host", &["host", "guest"]),
    ("vm:copy_from_vm", &["guest", "host_dir"]),
    ("vm:wait_for_shutdown", &["timeout"]),
    ("vm:send_chars", &["text"]),
    ("vm:send_key", &["key"]),
    ("vm:systemctl", &["args"]),
    ("vm:wait_for_unit", &["unit", "timeout"]),
    ("vm:spawn_worker", &["opts"]),
    ("worker:run", &["cmd", "opts"]),
    ("worker:run_async", &["cmd", "opts"]),
    ("worker:kill", &["sig"]),
    ("worker:join", &["timeout"]),
    ("worker:open_file", &["path", "mode"]),
];

/// What a method's argument must be, from its Rust type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Number,
    Bool,
    Table,
    Function,
    Userdata,
    /// `Value`, `MultiValue`, `Variadic`: checked by the method.
    Any,
}

impl Kind {
    fn of(rust: &str) -> Kind {
        let last = rust.rsplit("::").next().unwrap_or(rust);
        match last {
            "String" => Kind::Str,
            "i8" | "i16" | "i32" | "i64" | "isize" | "u8" | "u16" | "u32" | "u64" | "usize" => Kind::Int,
            "f32" | "f64" => Kind::Number,
            "bool" => Kind::Bool,
            "Table" => Kind::Table,
            "Function" => Kind::Function,
            "AnyUserData" => Kind::Userdata,
            _ => Kind::Any,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Number => "a number",
            Kind::Bool => "a boolean",
            Kind::Table => "a table",
            Kind::Function => "a function",
            Kind::Userdata => "an object",
            Kind::Any => "a value",
        }
    }

    /// Whether `v` is acceptable as this kind, without mlua's coercions.
    fn accepts(self, v: &Value) -> bool {
        match (self, v) {
            (Kind::Str, Value::String(_)) => true,
            (Kind::Int, Value::Integer(_)) => true,
            (Kind::Int, Value::Number(n)) => n.fract() == 0.0,
            (Kind::Number, Value::Integer(_) | Value::Number(_)) => true,
            (Kind::Str | Kind::Int | Kind::Number, _) => false,
            _ => true, // the conversion says
        }
    }
}

/// One argument's expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub kind: Kind,
    pub optional: bool,
    /// An unsigned integer type: negative values are out of range.
    pub unsigned: bool,
}

impl Expect {
    /// Whether `v` passes the type check (nil where optional).
    fn allows(&self, v: &Value) -> bool {
        (self.optional && v.is_nil()) || self.kind.accepts(v)
    }
}

/// The expectations of each argument of a method taking `A`, read from the
/// type's name (`(alloc::string::String, core::option::Option<…>)`).
pub fn kinds_of<A>() -> Vec<Expect> {
    let name = std::any::type_name::<A>();
    let inner = match name.strip_prefix('(').and_then(|n| n.strip_suffix(')')) {
        Some(list) => list,
        None => name,
    };
    top_level(inner)
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (rust, optional) = match t.strip_prefix("core::option::Option<").and_then(|r| r.strip_suffix('>')) {
                Some(inner) => (inner, true),
                None => (t, false),
            };
            Expect { kind: Kind::of(rust), optional, unsigned: rust.starts_with('u') }
        })
        .collect()
}

/// Splits a comma list at its top level (not inside `<…>` or `(…)`).
fn top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out
}

/// How `what`'s argument at `pos` (1-based, as the user counts) is named.
fn describe(what: &str, pos: usize) -> String {
    match PARAMS.iter().find(|(m, _)| *m == what).and_then(|(_, names)| names.get(pos - 1)) {
        Some(name) => format!("argument {pos} ({name})"),
        None => format!("argument {pos}"),
    }
}

/// The message for an argument of the wrong kind (or, for the right kind,
/// out of range).
pub fn bad_argument(what: &str, pos: usize, expect: Expect, got: &Value) -> String {
    let arg = describe(what, pos);
    if expect.kind == Kind::Int && expect.kind.accepts(got) {
        let value = got.to_string().unwrap_or_default();
        let range = if expect.unsigned { "a non-negative integer" } else { "an integer in range" };
        return format!("{what}: {arg} must be {range}, got {value}");
    }
    let or_nil = if expect.optional { " or nil" } else { "" };
    format!("{what}: {arg} must be {}{or_nil}, got {}", expect.kind.text(), got.type_name())
}

/// Converts `args` for `what`, whose arguments are `expects` (the first
/// `skip` of which are not the user's: a `self` passed as an argument).
fn convert<A: FromLuaMulti>(
    lua: &Lua,
    what: &str,
    expects: &[Expect],
    skip: usize,
    args: MultiValue,
) -> mlua::Result<A> {
    for (i, (v, e)) in args.iter().zip(expects).enumerate().skip(skip) {
        if !e.allows(v) {
            return Err(raise(lua, bad_argument(what, i + 1 - skip, *e, v)));
        }
    }
    let given: Vec<Value> = args.iter().cloned().collect();
    A::from_lua_args(args, 1, None, lua).map_err(|err| match err {
        mlua::Error::BadArgument { pos, .. } if pos > skip => {
            let got = given.get(pos - 1).cloned().unwrap_or(Value::Nil);
            let expect =
                expects.get(pos - 1).copied().unwrap_or(Expect { kind: Kind::Any, optional: false, unsigned: false });
            raise(lua, bad_argument(what, pos - skip, expect, &got))
        }
        other => other,
    })
}

/// Option `key` of table `t` given to `what`, converted to `T` with the
/// same strictness as arguments; a wrong type reads
/// `vm:run: option `env` must be a table or nil, got integer`.
pub fn field<T: mlua::FromLua>(lua: &Lua, what: &str, t: &mlua::Table, key: &str) -> mlua::Result<T> {
    let v: Value = t.raw_get(key)?;
    let expect =
        kinds_of::<T>().first().copied().unwrap_or(Expect { kind: Kind::Any, optional: true, unsigned: false });
    let wrong = |lua: &Lua, v: &Value| {
        let mut msg = bad_argument(what, 1, expect, v);
        msg = msg.replacen(&describe(what, 1), &format!("option `{key}`"), 1);
        raise(lua, msg)
    };
    if !expect.allows(&v) {
        return Err(wrong(lua, &v));
    }
    T::from_lua(v.clone(), lua).map_err(|_| wrong(lua, &v))
}

/// A method registry whose methods convert their arguments through
/// [`convert`]; everything else passes through to the wrapped registry.
pub struct Checked<'a, M> {
    inner: &'a mut M,
    object: &'static str,
}

impl<'a, M> Checked<'a, M> {
    /// `object` is how Lua code names the type (`vm`, `file`).
    pub fn new(inner: &'a mut M, object: &'static str) -> Checked<'a, M> {
        Checked { inner, object }
    }

    fn what(&self, name: &str) -> String {
        format!("{}:{name}", self.object)
    }
}

/// Whether an `add_function`'s first argument is the object itself.
fn self_first(expects: &[Expect]) -> usize {
    usize::from(expects.first().is_some_and(|e| e.kind == Kind::Userdata))
}

impl<T, M: UserDataMethods<T>> UserDataMethods<T> for Checked<'_, M> {
    fn add_method<F, A, R>(&mut self, name: impl ToString, method: F)
    where
        F: Fn(&Lua, &T, A) -> mlua::Result<R> + MaybeSend + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let name = name.to_string();
        let (what, expects) = (self.what(&name), kinds_of::<A>());
        self.inner.add_method(name, move |lua, this, args: MultiValue| {
            let a = convert::<A>(lua, &what, &expects, 0, args)?;
            method(lua, this, a)
        });
    }

    fn add_method_mut<F, A, R>(&mut self, name: impl ToString, mut method: F)
    where
        F: FnMut(&Lua, &mut T, A) -> mlua::Result<R> + MaybeSend + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let name = name.to_string();
        let (what, expects) = (self.what(&name), kinds_of::<A>());
        self.inner.add_method_mut(name, move |lua, this, args: MultiValue| {
            let a = convert::<A>(lua, &what, &expects, 0, args)?;
            method(lua, this, a)
        });
    }

    fn add_function<F, A, R>(&mut self, name: impl ToString, function: F)
    where
        F: Fn(&Lua, A) -> mlua::Result<R> + MaybeSend + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let name = name.to_string();
        let (what, expects) = (self.what(&name), kinds_of::<A>());
        let skip = self_first(&expects);
        self.inner.add_function(name, move |lua, args: MultiValue| {
            let a = convert::<A>(lua, &what, &expects, skip, args)?;
            function(lua, a)
        });
    }

    fn add_function_mut<F, A, R>(&mut self, name: impl ToString, mut function: F)
    where
        F: FnMut(&Lua, A) -> mlua::Result<R> + MaybeSend + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let name = name.to_string();
        let (what, expects) = (self.what(&name), kinds_of::<A>());
        let skip = self_first(&expects);
        self.inner.add_function_mut(name, move |lua, args: MultiValue| {
            let a = convert::<A>(lua, &what, &expects, skip, args)?;
            function(lua, a)
        });
    }

    fn add_meta_method<F, A, R>(&mut self, name: impl ToString, method: F)
    where
        F: Fn(&Lua, &T, A) -> mlua::Result<R> + MaybeSend + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        self.inner.add_meta_method(name, method)
    }

    fn add_meta_method_mut<F, A, R>(&mut self, name: impl ToString, method: F)
    where
        F: FnMut(&Lua, &mut T, A) -> mlua::Result<R> + MaybeSend + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        self.inner.add_meta_method_mut(name, method)
    }

    fn add_meta_function<F, A, R>(&mut self, name: impl ToString, function: F)
    where
        F: Fn(&Lua, A) -> mlua::Result<R> + MaybeSend + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        self.inner.add_meta_function(name, function)
    }

    fn add_meta_function_mut<F, A, R>(&mut self, name: impl ToString, function: F)
    where
        F: FnMut(&Lua, A) -> mlua::Result<R> + MaybeSend + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        self.inner.add_meta_function_mut(name, function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_argument_types() {
        let k = kinds_of::<(String, Option<mlua::Table>, mlua::String, i64, Option<Value>)>();
        let kinds: Vec<(Kind, bool)> = k.iter().map(|e| (e.kind, e.optional)).collect();
        assert_eq!(
            kinds,
            vec![(Kind::Str, false), (Kind::Table, true), (Kind::Str, false), (Kind::Int, false), (Kind::Any, true)]
        );
        assert_eq!(kinds_of::<String>().len(), 1);
        assert_eq!(kinds_of::<()>().len(), 0);
        assert_eq!(kinds_of::<(mlua::AnyUserData, Option<mlua::Table>)>()[0].kind, Kind::Userdata);
    }

    #[test]
    fn a_bad_argument_reads_as_the_user_wrote_it() {
        let lua = Lua::new();
        struct Probe;
        impl mlua::UserData for Probe {
            fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
                let methods = &mut Checked::new(methods, "vm");
                methods.add_method("write_file", |_, _, (_p, _d): (String, mlua::String)| Ok(()));
                methods.add_method("read", |_, _, _n: u64| Ok(()));
                methods.add_function("boot", |_, (_ud, _o): (mlua::AnyUserData, Option<mlua::Table>)| Ok(()));
            }
        }
        lua.globals().set("vm", Probe).unwrap();
        let err = |code: &str| lua.load(code).set_name("=t.test.lua").exec().unwrap_err().to_string();
        let e = err("vm:write_file('/x', nil)");
        assert!(e.contains("t.test.lua:1: vm:write_file: argument 2 (data) must be a string, got nil"), "{e}");
        let e = err("vm:write_file(42, 'x')");
        assert!(e.contains("vm:write_file: argument 1 (path) must be a string, got integer"), "{e}");
        let e = err("vm:read('5')");
        assert!(e.contains("vm:read: argument 1 must be an integer, got string"), "{e}");
        let e = err("vm:read(-1)");
        assert!(e.contains("vm:read: argument 1 must be a non-negative integer, got -1"), "{e}");
        let e = err("vm:boot(5)");
        assert!(e.contains("vm:boot: argument 1 (opts) must be a table or nil, got integer"), "{e}");
        lua.load("vm:write_file('/x', 'data'); vm:read(3); vm:boot(); vm:boot({})").exec().unwrap();
    }

    #[test]
    fn an_option_of_the_wrong_type_is_named() {
        let lua = Lua::new();
        let t: mlua::Table = lua.load("return {env = 5, cwd = 7, n = -2, ok = '/'}").eval().unwrap();
        let e = field::<Option<mlua::Table>>(&lua, "vm:run", &t, "env").unwrap_err().to_string();
        assert!(e.contains("vm:run: option `env` must be a table or nil, got integer"), "{e}");
        let e = field::<Option<String>>(&lua, "vm:run", &t, "cwd").unwrap_err().to_string();
        assert!(e.contains("option `cwd` must be a string or nil, got integer"), "{e}");
        let e = field::<Option<u32>>(&lua, "vm:open_file", &t, "n").unwrap_err().to_string();
        assert!(e.contains("option `n` must be a non-negative integer, got -2"), "{e}");
        assert_eq!(field::<Option<String>>(&lua, "vm:run", &t, "ok").unwrap().as_deref(), Some("/"));
        assert_eq!(field::<Option<String>>(&lua, "vm:run", &t, "absent").unwrap(), None);
    }

    #[test]
    fn every_named_method_exists_once() {
        let mut seen = std::collections::HashSet::new();
        for (m, _) in PARAMS {
            assert!(seen.insert(*m), "{m} twice");
        }
    }
}
