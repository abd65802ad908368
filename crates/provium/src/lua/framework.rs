//! The test framework inside each Lua state: `test(name, [meta,] fn)`, the
//! `t` context with its assertions, and the classification of a test's end.
//!
//! A failed assertion marks `t` failed *and* raises, so a test that catches
//! the error with `pcall` still fails (the flag is sticky). `t:skip()`
//! raises a sentinel that the classifier recognises.

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{Function, Lua, MultiValue, RegistryKey, Table, UserData, UserDataFields, UserDataMethods, Value};

use super::errors::{location, message, raise};
pub use crate::events::Outcome;

/// Raised by `t:skip()`; never shown to users.
pub const SKIP_SENTINEL: &str = "__PROVIUM_SKIP__";

/// One `test(...)` registration.
pub struct TestDef {
    pub name: String,
    pub meta: Option<RegistryKey>,
    pub func: RegistryKey,
    /// Registered with `todo(name, fn)`: reported, never run.
    pub todo: bool,
}

/// Tests registered by the file's chunk, in declaration order.
#[derive(Default)]
pub struct Registry {
    pub tests: Vec<TestDef>,
    /// Set by a file-scope `todo(reason?)`: every test is skipped so.
    pub file_todo: Option<String>,
}

/// State behind `t`, shared with the runner.
#[derive(Debug, Default)]
pub struct TestState {
    pub name: String,
    /// The test's `meta` table (`t.meta`), if it had one.
    pub meta: Option<Table>,
    pub failed: Option<String>,
    pub skipped: Option<String>,
    pub log: Vec<String>,
}

/// The `t` userdata.
#[derive(Clone)]
pub struct TestCtx(pub Rc<RefCell<TestState>>);

/// `test(name, [meta,] fn)` and `todo(name, [meta,] fn)` as registration.
fn register(lua: &Lua, what: &str, args: MultiValue, todo: bool) -> mlua::Result<()> {
    let args: Vec<Value> = args.into_iter().collect();
    let (name, meta, func) = match args.as_slice() {
        [Value::String(n), Value::Function(f)] => (n.to_str()?.to_string(), None, f.clone()),
        [Value::String(n), Value::Table(m), Value::Function(f)] => {
            (n.to_str()?.to_string(), Some(m.clone()), f.clone())
        }
        _ => {
            return Err(raise(
                lua,
                format!(
                    "{what}(name, [meta,] fn): bad arguments (expected a name, an optional meta table, and a function)"
                ),
            ))
        }
    };
    let meta = meta.map(|m| lua.create_registry_value(m)).transpose()?;
    let func = lua.create_registry_value(func)?;
    let mut reg = lua.app_data_mut::<Registry>().expect("registry installed");
    if reg.tests.iter().any(|t| t.name == name) {
        drop(reg);
        return Err(raise(lua, format!("{what}: duplicate name `{name}` in this file")));
    }
    reg.tests.push(TestDef { name, meta, func, todo });
    Ok(())
}

/// Installs `test` and `todo` into the globals.
///
/// `todo(name, fn)` registers a test that is reported as skipped (`todo`)
/// without running; `todo()` / `todo(reason)` marks the whole file so.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    lua.set_app_data(Registry::default());
    let test = lua.create_function(|lua, args: MultiValue| register(lua, "test", args, false))?;
    lua.globals().set("test", test)?;
    let todo = lua.create_function(|lua, args: MultiValue| match args.len() {
        0 | 1 => {
            let reason = match args.front() {
                None | Some(Value::Nil) => "todo".to_string(),
                Some(Value::String(s)) => format!("todo: {}", s.to_string_lossy()),
                Some(other) => {
                    return Err(raise(
                        lua,
                        format!("todo(reason): the reason must be a string, got {}", other.type_name()),
                    ))
                }
            };
            lua.app_data_mut::<Registry>().expect("registry installed").file_todo = Some(reason);
            Ok(())
        }
        _ => register(lua, "todo", args, true),
    })?;
    lua.globals().set("todo", todo)?;
    Ok(())
}

/// The reason a file-scope `todo(reason)` gave, if it was called.
pub fn file_todo(lua: &Lua) -> Option<String> {
    lua.app_data_ref::<Registry>().and_then(|r| r.file_todo.clone())
}

/// Takes the registered tests out of the state.
pub fn take_tests(lua: &Lua) -> Vec<TestDef> {
    std::mem::take(&mut lua.app_data_mut::<Registry>().expect("registry installed").tests)
}

/// `meta.todo` (`true` or a reason) and `meta.skip`: `true`/non-zero →
/// default reason; a string → that reason.
pub fn meta_skip(meta: Option<&Table>) -> Option<String> {
    match meta?.get::<Value>("todo").ok()? {
        Value::Boolean(true) => return Some("todo".into()),
        Value::String(s) => return Some(format!("todo: {}", s.to_string_lossy())),
        _ => {}
    }
    match meta?.get::<Value>("skip").ok()? {
        Value::Boolean(true) => Some("skipped (meta.skip)".into()),
        Value::Integer(n) if n != 0 => Some("skipped (meta.skip)".into()),
        Value::String(s) => Some(format!("skipped: {}", s.to_string_lossy())),
        _ => None,
    }
}

/// Runs one test body and classifies how it ended.
pub fn run_test(lua: &Lua, func: &Function, ctx: &TestCtx) -> Outcome {
    let result = call_showing_tables(lua, func, ctx.clone());
    let st = ctx.0.borrow();
    if let Some(reason) = &st.skipped {
        return Outcome::Skipped(reason.clone());
    }
    match result {
        Err(e) => {
            let msg = message(&e);
            if msg.contains(SKIP_SENTINEL) {
                Outcome::Skipped(st.skipped.clone().unwrap_or_else(|| "skipped".into()))
            } else {
                Outcome::Failed(msg)
            }
        }
        Ok(()) => match &st.failed {
            Some(m) => Outcome::Failed(format!("{m} (the error was caught, but the assertion still fails the test)")),
            None => {
                let _ = lua;
                Outcome::Passed
            }
        },
    }
}

/// Calls `func(arg)`; an error *value* that is a table (`error({code = 1})`)
/// comes back as its contents (`{code = 1}`), not as `table: 0x…`, which is
/// all a plain call would keep of it.
pub fn call_showing_tables(lua: &Lua, func: &Function, arg: impl mlua::IntoLua) -> mlua::Result<()> {
    let handler = lua.create_function(|lua, e: Value| {
        Ok(match e {
            Value::Table(_) => {
                Value::String(lua.create_string(format!("error raised with a table: {}", render(&e, 0)))?)
            }
            other => other,
        })
    })?;
    let xpcall: Function = lua.globals().get("xpcall")?;
    let (ok, err): (bool, Value) = xpcall.call((func.clone(), handler, arg))?;
    match (ok, err) {
        (true, _) => Ok(()),
        (false, Value::Error(e)) => Err(*e),
        (false, Value::String(s)) => Err(mlua::Error::RuntimeError(s.to_string_lossy())),
        (false, other) => Err(mlua::Error::RuntimeError(render(&other, 0))),
    }
}

/// A Lua value as source-like text: `{code = 1, msg = "x"}`, nested tables
/// to a few levels, keys sorted.
pub fn render(v: &Value, depth: usize) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(n) => n.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        Value::Table(t) if depth < 3 => {
            let mut items: Vec<(String, String)> = t
                .clone()
                .pairs::<Value, Value>()
                .flatten()
                .map(|(k, v)| {
                    let key = match &k {
                        Value::String(s) => s.to_string_lossy(),
                        other => format!("[{}]", render(other, depth + 1)),
                    };
                    (key, render(&v, depth + 1))
                })
                .collect();
            items.sort();
            let body: Vec<String> = items.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{{}}}", body.join(", "))
        }
        Value::Table(_) => "{…}".into(),
        other => other.type_name().to_string(),
    }
}

/// Renders a value for an assertion message: strings quoted with escapes,
/// everything else through Lua's `tostring`.
fn show(lua: &Lua, v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        other => lua
            .globals()
            .get::<Function>("tostring")
            .and_then(|f| f.call::<String>(other.clone()))
            .unwrap_or_else(|_| format!("{other:?}")),
    }
}

impl TestCtx {
    fn fail(&self, lua: &Lua, msg: String) -> mlua::Error {
        let full = format!("{}{}", location(lua), msg);
        self.0.borrow_mut().failed.get_or_insert(full.clone());
        mlua::Error::RuntimeError(full)
    }
}

impl UserData for TestCtx {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, this| Ok(this.0.borrow().name.clone()));
        fields.add_field_method_get("meta", |lua, this| match &this.0.borrow().meta {
            Some(m) => Ok(m.clone()),
            None => lua.create_table(),
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "t");
        methods.add_method("assert", |lua, this, (cond, msg): (Value, Option<String>)| {
            let truthy = !matches!(cond, Value::Nil | Value::Boolean(false));
            if truthy {
                Ok(())
            } else {
                Err(this.fail(lua, msg.unwrap_or_else(|| "assertion failed".into())))
            }
        });
        methods.add_method("assert_eq", |lua, this, (a, b, msg): (Value, Value, Option<String>)| {
            if a.equals(&b)? {
                return Ok(());
            }
            let m = msg.unwrap_or_else(|| "assert_eq failed".into());
            Err(this.fail(lua, format!("{m}: {} ~= {}", show(lua, &a), show(lua, &b))))
        });
        methods.add_method("assert_neq", |lua, this, (a, b, msg): (Value, Value, Option<String>)| {
            if !a.equals(&b)? {
                return Ok(());
            }
            let m = msg.unwrap_or_else(|| "assert_neq failed".into());
            Err(this.fail(lua, format!("{m}: {} == {}", show(lua, &a), show(lua, &b))))
        });
        methods.add_method("assert_contains", |lua, this, (hay, needle, msg): (Value, Value, Option<String>)| {
            let (Value::String(h), Value::String(n)) = (&hay, &needle) else {
                return Err(this.fail(lua, "assert_contains: both arguments must be strings".into()));
            };
            let (h, n) = (h.as_bytes(), n.as_bytes());
            if n.is_empty() || h.windows(n.len()).any(|w| w == &n[..]) {
                return Ok(());
            }
            let m = msg.unwrap_or_else(|| "assert_contains failed".into());
            Err(this.fail(lua, format!("{m}: {} not found in: {}", show(lua, &needle), show(lua, &hay))))
        });
        methods.add_method("assert_raises", |lua, this, (f, msg): (Function, Option<String>)| {
            let before = this.0.borrow().failed.clone();
            match f.call::<MultiValue>(()) {
                Ok(_) => {
                    let m = msg.unwrap_or_else(|| "assert_raises".into());
                    Err(this.fail(lua, format!("{m}: expected to raise")))
                }
                Err(e) => {
                    // An assertion failing inside fn is the expected raise.
                    this.0.borrow_mut().failed = before;
                    Ok(message(&e))
                }
            }
        });
        methods.add_method("fail", |lua, this, msg: Option<String>| -> mlua::Result<()> {
            Err(this.fail(lua, msg.unwrap_or_else(|| "explicit failure (t:fail)".into())))
        });
        methods.add_method("skip", |_, this, reason: Option<String>| -> mlua::Result<()> {
            this.0.borrow_mut().skipped = Some(reason.unwrap_or_else(|| "skipped".into()));
            Err(mlua::Error::RuntimeError(SKIP_SENTINEL.into()))
        });
        methods.add_method("log", |lua, this, v: Value| {
            let text = show(lua, &v);
            let text = match &v {
                Value::String(s) => s.to_string_lossy(),
                _ => text,
            };
            this.0.borrow_mut().log.push(text);
            Ok(())
        });
    }
}
