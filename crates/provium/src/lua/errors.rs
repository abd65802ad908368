//! Turning Rust errors into Lua errors that read well.
//!
//! Every error raised from a Rust callback becomes a plain Lua string of the
//! form `file.test.lua:12: vm `v`: boot failed: <cause>: <cause>` — the Lua
//! line that made the call, then the whole cause chain — so `pcall` gets a
//! string and reports need no unwrapping.

use mlua::Lua;

/// `short_src:line: ` of the innermost Lua frame calling into Rust.
pub fn location(lua: &Lua) -> String {
    for level in 1..8 {
        let Some(dbg) = lua.inspect_stack(level) else {
            break;
        };
        let line = dbg.curr_line();
        if line > 0 {
            let src = dbg.source();
            let short = src.short_src.as_deref().unwrap_or("?").to_string();
            return format!("{short}:{line}: ");
        }
    }
    String::new()
}

/// The innermost frame of a `*.test.lua` / `*.fixture.lua` file on the
/// stack: where a test author opened something.
pub fn creation_site(lua: &Lua) -> Option<crate::vm::resources::Site> {
    for level in 1..64 {
        let dbg = lua.inspect_stack(level)?;
        let src = dbg.source();
        // The full chunk name (`@path`), not `short_src`, which Lua cuts.
        let Some(name) = src.source.as_deref().and_then(|s| s.strip_prefix('@')) else { continue };
        if name.ends_with(".test.lua") || name.ends_with(".fixture.lua") {
            return Some(crate::vm::resources::Site { file: name.to_string(), line: dbg.curr_line() as i64 });
        }
    }
    None
}

/// The directory of the innermost Lua file on the stack (its `@path` chunk
/// name), where relative host paths in that file resolve; `None` outside
/// any file.
pub fn calling_dir(lua: &Lua) -> Option<std::path::PathBuf> {
    for level in 1..64 {
        let dbg = lua.inspect_stack(level)?;
        let src = dbg.source();
        if let Some(name) = src.source.as_deref().and_then(|s| s.strip_prefix('@')) {
            let dir = std::path::Path::new(name).parent()?;
            return Some(if dir.as_os_str().is_empty() { std::path::PathBuf::from(".") } else { dir.to_path_buf() });
        }
    }
    None
}

/// A host path as a Lua file wrote it: a relative one is relative to that
/// file's directory ([`calling_dir`]), else to the current directory.
pub fn host_path(lua: &Lua, path: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(path);
    match calling_dir(lua) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

/// The error and its `source()` chain, joined with `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// A Lua runtime error carrying the caller's location and `msg`.
pub fn raise(lua: &Lua, msg: impl AsRef<str>) -> mlua::Error {
    mlua::Error::RuntimeError(format!("{}{}", location(lua), msg.as_ref()))
}

/// A Lua runtime error for a Rust error, with its cause chain.
pub fn raise_err(lua: &Lua, e: &dyn std::error::Error) -> mlua::Error {
    raise(lua, chain(e))
}

/// The text of an error as a report shows it: runtime errors as they are,
/// callback errors reduced to their innermost cause.
pub fn message(e: &mlua::Error) -> String {
    match e {
        // Lua errors come with a traceback appended; the first part is what
        // the user raised.
        mlua::Error::RuntimeError(s) => s.split("\nstack traceback:").next().unwrap_or(s).to_string(),
        mlua::Error::SyntaxError { message: s, .. } => s.clone(),
        mlua::Error::CallbackError { cause, .. } => message(cause),
        mlua::Error::WithContext { cause, .. } => message(cause),
        other => other.to_string(),
    }
}

/// Shorthand for converting `Result<T, E: Error>` in callbacks.
pub trait LuaResultExt<T> {
    fn lua(self, lua: &Lua) -> mlua::Result<T>;
}

impl<T, E: std::error::Error> LuaResultExt<T> for Result<T, E> {
    fn lua(self, lua: &Lua) -> mlua::Result<T> {
        self.map_err(|e| raise_err(lua, &e))
    }
}
