//! `vm:clock()`: the guest's wall clock (CLOCK_REALTIME), read and moved by
//! the agent. Seconds are floats; `_ns` variants take integers.

use std::time::Duration;

use mlua::{Lua, UserData, UserDataMethods, Value};

use super::errors::{raise, LuaResultExt};
use super::opts;
use crate::sync::lock;
use crate::vm::VmRef;

pub struct ClockUd(pub VmRef);

impl ClockUd {
    fn get_ns(&self, lua: &Lua) -> mlua::Result<i64> {
        lock(&self.0).with_agent("clock:get", |a| a.get_time()).lua(lua)
    }

    fn set_ns(&self, lua: &Lua, ns: i64) -> mlua::Result<()> {
        lock(&self.0).with_agent("clock:set", |a| a.set_time(ns)).lua(lua)
    }
}

/// Seconds (negative allowed) as nanoseconds; NaN/inf rejected.
fn finite_ns(lua: &Lua, what: &str, v: &Value) -> mlua::Result<i64> {
    let secs = match v {
        Value::Integer(n) => *n as f64,
        Value::Number(f) if f.is_finite() => *f,
        Value::Number(_) => return Err(raise(lua, format!("{what}: value must be a finite number (got NaN/inf)"))),
        Value::String(s) => {
            let text = s.to_string_lossy();
            let (neg, body) = match text.strip_prefix('-') {
                Some(rest) => (true, rest.to_string()),
                None => (false, text.clone()),
            };
            let d = crate::units::parse_duration(&body)
                .map_err(|_| raise(lua, format!("{what}: cannot parse `{text}`")))?;
            if neg {
                -d.as_secs_f64()
            } else {
                d.as_secs_f64()
            }
        }
        other => return Err(raise(lua, format!("{what}: expected seconds, got {}", other.type_name()))),
    };
    Ok((secs * 1e9).round() as i64)
}

impl UserData for ClockUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "clock");
        methods.add_method("get", |lua, this, ()| Ok(this.get_ns(lua)? as f64 / 1e9));
        methods.add_method("get_ns", |lua, this, ()| this.get_ns(lua));
        methods.add_method("set", |lua, this, v: Value| {
            let ns = finite_ns(lua, "clock:set", &v)?;
            this.set_ns(lua, ns)
        });
        methods.add_method("set_ns", |lua, this, ns: i64| this.set_ns(lua, ns));
        methods.add_method("advance", |lua, this, v: Value| {
            let delta = finite_ns(lua, "clock:advance", &v)?;
            let now = this.get_ns(lua)?;
            this.set_ns(lua, now.saturating_add(delta))
        });
        methods.add_method("sleep", |lua, _, v: Value| {
            let d: Duration = opts::duration(lua, "clock:sleep", &v)?;
            std::thread::sleep(d);
            Ok(())
        });
    }
}
