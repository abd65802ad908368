//! The stream objects (`Tail`, `ConsoleStream`, process output streams) as
//! Lua sees them: `next`, `read_until`, `expect`, `drain`, `close`, `eof`,
//! `creation_site`. The stream itself is `crate::vm::Stream`.

use std::time::Duration;

use mlua::{Lua, UserData, UserDataMethods, Value};

use super::errors::raise;
use super::opts;
use crate::vm::stream::{DEFAULT_TIMEOUT, DRAIN_TIMEOUT};
use crate::vm::Stream;

/// A stream handle; clones share the stream.
#[derive(Clone)]
pub struct StreamUd(pub Stream);

fn timeout_arg(lua: &Lua, what: &str, v: Option<Value>, default: Duration) -> mlua::Result<Duration> {
    match v {
        None | Some(Value::Nil) => Ok(default),
        Some(v) => opts::duration(lua, what, &v),
    }
}

impl UserData for StreamUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "stream");
        methods.add_method("next", |lua, this, t: Option<Value>| {
            let timeout = timeout_arg(lua, "stream:next", t, DEFAULT_TIMEOUT)?;
            let got = this.0.next(timeout).map_err(|m| raise(lua, m))?;
            got.map(|b| lua.create_string(&b)).transpose()
        });
        methods.add_method("read_until", |lua, this, (p, t): (mlua::String, Option<Value>)| {
            let timeout = timeout_arg(lua, "stream:read_until", t, DEFAULT_TIMEOUT)?;
            let got = this.0.read_until("read_until", &p.as_bytes(), timeout).map_err(|m| raise(lua, m))?;
            lua.create_string(&got)
        });
        methods.add_method("expect", |lua, this, (p, t): (mlua::String, Option<Value>)| {
            let timeout = timeout_arg(lua, "stream:expect", t, DEFAULT_TIMEOUT)?;
            this.0.read_until("expect", &p.as_bytes(), timeout).map_err(|m| raise(lua, m))?;
            Ok(())
        });
        methods.add_method("drain", |lua, this, t: Option<Value>| {
            let timeout = timeout_arg(lua, "stream:drain", t, DRAIN_TIMEOUT)?;
            let chunks = this.0.drain(timeout).map_err(|m| raise(lua, m))?;
            let out = lua.create_table()?;
            for (i, c) in chunks.iter().enumerate() {
                out.set(i + 1, lua.create_string(c)?)?;
            }
            Ok(out)
        });
        methods.add_method("close", |_, this, ()| {
            this.0.close();
            Ok(())
        });
        methods.add_method("eof", |_, this, ()| Ok(this.0.eof()));
        methods.add_method("creation_site", |lua, this, ()| match &this.0.site() {
            Some(site) => {
                let t = lua.create_table()?;
                t.set("file", site.file.as_str())?;
                t.set("line", site.line)?;
                Ok(Value::Table(t))
            }
            None => Ok(Value::Nil),
        });
    }
}
