//! The Lua `Bridge` and `Nic` objects. They convert arguments (VMs given as
//! userdata or names, impairments as numbers, durations or tables) and
//! results; the bridge itself is `crate::net::Bridge`.

use std::time::Duration;

use mlua::{Lua, MetaMethod, Table, UserData, UserDataMethods, Value};

use super::errors::{creation_site, raise, LuaResultExt};
use super::stream_ud::StreamUd;
use super::vm_ud::VmUd;
use crate::lab::Lab;
use crate::net::{bridge, Bridge, BridgeOpts, Switch};
use crate::sync::lock;
use crate::vm::VmRef;

/// A bridge, with the lab whose names its VM arguments are looked up in.
#[derive(Clone)]
pub struct BridgeUd {
    pub bridge: Bridge,
    pub lab: Lab,
}

/// `provium:bridge(name[, opts])`: the bridge of that name in scope, or a
/// new one in `lab`.
pub fn declare(lua: &Lua, lab: &Lab, name: &str, opts: Option<Table>) -> mlua::Result<BridgeUd> {
    if opts.is_none() {
        if let Some(b) = lab.find_bridge(name) {
            return Ok(BridgeUd { bridge: b, lab: lab.clone() });
        }
    }
    let mut o = BridgeOpts::default();
    if let Some(t) = opts {
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair?;
            match (k.to_string()?.as_str(), v) {
                ("addresses", Value::Boolean(b)) => o.addresses = b,
                ("addresses", other) => {
                    return Err(raise(
                        lua,
                        format!(
                            "provium:bridge(\"{name}\", opts): addresses must be true or false, got {}",
                            other.type_name()
                        ),
                    ))
                }
                (key, _) => {
                    return Err(raise(
                        lua,
                        format!("provium:bridge(\"{name}\", opts): unknown option `{key}` (known: addresses)"),
                    ))
                }
            }
        }
    }
    lab.check_new_name("bridge", name).lua(lua)?;
    let ctx = super::lab_ud::ctx(lua).vms.net.clone();
    let bridge = Bridge::new(&ctx, name, o).lua(lua)?;
    lab.add_bridge(name, bridge.clone());
    Ok(BridgeUd { bridge, lab: lab.clone() })
}

/// A VM argument: userdata, or the name of a VM in `lab` (found through
/// its parents), as the same VM.
fn vm_arg(lua: &Lua, verb: &str, lab: &Lab, v: &Value) -> mlua::Result<(String, VmRef)> {
    match v {
        Value::UserData(ud) => match ud.borrow::<VmUd>() {
            Ok(vm) => Ok((lock(&vm.0).name().to_string(), vm.0.clone())),
            Err(_) => Err(raise(lua, format!("{verb}: expected a vm or a vm name, got another userdata"))),
        },
        Value::String(s) => {
            let name = s.to_string_lossy();
            let vm = lab.find_vm(&name).ok_or_else(|| {
                raise(
                    lua,
                    format!("{verb}: no vm named `{name}` in lab `{}` (declare it with provium:vm first)", lab.name()),
                )
            })?;
            Ok((name, vm))
        }
        other => Err(raise(lua, format!("{verb}: expected a vm or a vm name, got {}", other.type_name()))),
    }
}

/// A VM named by userdata or string, for graph state (the VM need not be
/// declared yet).
fn vm_name(lua: &Lua, verb: &str, v: &Value) -> mlua::Result<String> {
    match v {
        Value::UserData(ud) => match ud.borrow::<VmUd>() {
            Ok(vm) => Ok(lock(&vm.0).name().to_string()),
            Err(_) => Err(raise(lua, format!("{verb}: expected a vm or a vm name, got another userdata"))),
        },
        Value::String(s) => Ok(s.to_string_lossy()),
        other => Err(raise(lua, format!("{verb}: expected a vm or a vm name, got {}", other.type_name()))),
    }
}

/// `{from = a, to = b}` of a directional form.
fn direction(lua: &Lua, verb: &str, t: &Table) -> mlua::Result<Option<(String, String)>> {
    let (from, to): (Value, Value) = (t.get("from")?, t.get("to")?);
    match (&from, &to) {
        (Value::Nil, Value::Nil) => Ok(None),
        (Value::Nil, _) | (_, Value::Nil) => {
            Err(raise(lua, format!("{verb}: the directional form needs both `from` and `to`")))
        }
        _ => Ok(Some((vm_name(lua, verb, &from)?, vm_name(lua, verb, &to)?))),
    }
}

/// Milliseconds: a number, or a duration string (`"50ms"`, `"1s"`).
fn millis(lua: &Lua, verb: &'static str, v: &Value) -> mlua::Result<Duration> {
    match v {
        Value::Integer(n) => bridge::latency(verb, *n as f64).lua(lua),
        Value::Number(n) => bridge::latency(verb, *n).lua(lua),
        Value::String(s) => {
            let text = s.to_string_lossy();
            crate::units::parse_duration(&text).map_err(|_| {
                raise(lua, format!("{verb}: latency must be a number of ms or a duration like \"50ms\", got `{text}`"))
            })
        }
        other => Err(raise(
            lua,
            format!("{verb}: latency must be a number of ms or a duration like \"50ms\", got {}", other.type_name()),
        )),
    }
}

fn number(lua: &Lua, verb: &str, what: &str, v: &Value) -> mlua::Result<f64> {
    match v {
        Value::Integer(n) => Ok(*n as f64),
        Value::Number(n) => Ok(*n),
        other => Err(raise(lua, format!("{verb}: {what} must be a number, got {}", other.type_name()))),
    }
}

/// An impairment call's direction (if any), value, and table (if given).
type ImpairmentArg = (Option<(String, String)>, Value, Option<Table>);

/// The argument of an impairment call: a bare value (whole bridge), or a
/// table with `key` and optionally `from`/`to`.
fn impairment_arg(lua: &Lua, verb: &str, key: &str, v: Value, directional_only: bool) -> mlua::Result<ImpairmentArg> {
    match v {
        Value::Table(t) => {
            let dir = direction(lua, verb, &t)?;
            if dir.is_none() && directional_only {
                return Err(raise(lua, format!("{verb}: needs `from`, `to` and `{key}`")));
            }
            let value: Value = t.get(key)?;
            if value.is_nil() {
                return Err(raise(lua, format!("{verb}: the table form needs `{key}`")));
            }
            Ok((dir, value, Some(t)))
        }
        Value::Nil => Err(raise(lua, format!("{verb}: expected a value or a table, got nil"))),
        other if !directional_only => Ok((None, other, None)),
        other => Err(raise(lua, format!("{verb}: expected a table {{from, to, {key}}}, got {}", other.type_name()))),
    }
}

fn latency(lua: &Lua, this: &BridgeUd, verb: &'static str, v: Value, only_dir: bool) -> mlua::Result<()> {
    let (dir, value, t) = impairment_arg(lua, verb, "ms", v, only_dir)?;
    let ms = millis(lua, verb, &value)?;
    let jitter = match t.map(|t| t.get::<Value>("jitter_ms")).transpose()? {
        None | Some(Value::Nil) => Duration::ZERO,
        Some(j) => millis(lua, verb, &j)?,
    };
    let d = dir.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
    this.bridge
        .impair(verb, d, |i| {
            i.latency = ms;
            i.jitter = jitter;
        })
        .lua(lua)
}

fn drop_rate(lua: &Lua, this: &BridgeUd, verb: &'static str, v: Value, only_dir: bool) -> mlua::Result<()> {
    let (dir, value, _) = impairment_arg(lua, verb, "p", v, only_dir)?;
    let p = bridge::loss(verb, number(lua, verb, "the loss", &value)?).lua(lua)?;
    let d = dir.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
    this.bridge.impair(verb, d, |i| i.loss_pct = p).lua(lua)
}

fn bandwidth(lua: &Lua, this: &BridgeUd, verb: &'static str, v: Value, only_dir: bool) -> mlua::Result<()> {
    let (dir, value, _) = impairment_arg(lua, verb, "bps", v, only_dir)?;
    let bps = number(lua, verb, "the bandwidth", &value)?;
    if !bps.is_finite() || bps < 0.0 {
        return Err(raise(lua, format!("{verb}: the bandwidth must be a non-negative number of bits/s, got {bps}")));
    }
    let bps = (bps >= 1.0).then_some(bps as u64);
    let d = dir.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
    this.bridge.impair(verb, d, |i| i.bandwidth_bps = bps).lua(lua)
}

/// `partition(a, b)` or `partition{from = a, to = b}`.
fn pair_arg(lua: &Lua, verb: &str, a: Value, b: Option<Value>) -> mlua::Result<(String, String, bool)> {
    match (a, b) {
        (Value::Table(t), None | Some(Value::Nil)) => match direction(lua, verb, &t)? {
            Some((f, to)) => Ok((f, to, true)),
            None => Err(raise(lua, format!("{verb}: the table form needs `from` and `to`"))),
        },
        (a, Some(b)) => Ok((vm_name(lua, verb, &a)?, vm_name(lua, verb, &b)?, false)),
        (a, None) => Err(raise(lua, format!("{verb}: expected two VMs or {{from, to}}, got one {}", a.type_name()))),
    }
}

impl UserData for BridgeUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "bridge");
        methods.add_method("attach", |lua, this, v: Value| {
            let list: Vec<Value> = match v {
                Value::Table(t) => t.sequence_values::<Value>().collect::<mlua::Result<_>>()?,
                other => vec![other],
            };
            let lab = super::lab_ud::current(lua);
            let vms = list.iter().map(|v| vm_arg(lua, "bridge:attach", &lab, v)).collect::<mlua::Result<Vec<_>>>()?;
            this.bridge.attach(&vms).lua(lua)
        });
        methods.add_method("detach", |lua, this, v: Value| {
            let name = vm_name(lua, "bridge:detach", &v)?;
            this.bridge.detach(&name).lua(lua)
        });
        methods.add_method("members", |_, this, ()| Ok(this.bridge.members()));
        methods.add_method("partition", |lua, this, (a, b): (Value, Option<Value>)| {
            let (a, b, directional) = pair_arg(lua, "bridge:partition", a, b)?;
            if directional { this.bridge.partition_one_way(&a, &b) } else { this.bridge.partition(&a, &b) }.lua(lua)
        });
        methods.add_method("unpartition", |lua, this, (a, b): (Value, Option<Value>)| {
            let (a, b, directional) = pair_arg(lua, "bridge:unpartition", a, b)?;
            if directional { this.bridge.unpartition_one_way(&a, &b) } else { this.bridge.unpartition(&a, &b) }.lua(lua)
        });
        methods.add_method("partition_all", |lua, this, ()| this.bridge.partition_all().lua(lua));
        methods.add_method("restore_all", |lua, this, ()| this.bridge.restore_all().lua(lua));
        methods.add_method("is_partitioned", |lua, this, (a, b): (Value, Value)| {
            let (a, b) = (vm_name(lua, "bridge:is_partitioned", &a)?, vm_name(lua, "bridge:is_partitioned", &b)?);
            Ok(this.bridge.is_partitioned(&a, &b))
        });
        methods.add_method("isolate", |lua, this, v: Value| {
            this.bridge.isolate(&vm_name(lua, "bridge:isolate", &v)?).lua(lua)
        });
        methods.add_method("unisolate", |lua, this, v: Value| {
            this.bridge.unisolate(&vm_name(lua, "bridge:unisolate", &v)?).lua(lua)
        });
        methods.add_method("is_isolated", |lua, this, v: Value| {
            Ok(this.bridge.is_isolated(&vm_name(lua, "bridge:is_isolated", &v)?))
        });
        methods.add_method("add_latency", |lua, this, v: Value| latency(lua, this, "bridge:add_latency", v, false));
        methods.add_method("add_directional_latency", |lua, this, v: Value| {
            latency(lua, this, "bridge:add_directional_latency", v, true)
        });
        methods.add_method("drop_rate", |lua, this, v: Value| drop_rate(lua, this, "bridge:drop_rate", v, false));
        methods.add_method("directional_drop_rate", |lua, this, v: Value| {
            drop_rate(lua, this, "bridge:directional_drop_rate", v, true)
        });
        methods.add_method("bandwidth_limit", |lua, this, v: Value| {
            bandwidth(lua, this, "bridge:bandwidth_limit", v, false)
        });
        methods.add_method("directional_bandwidth_limit", |lua, this, v: Value| {
            bandwidth(lua, this, "bridge:directional_bandwidth_limit", v, true)
        });
        methods.add_method("reset", |lua, this, ()| this.bridge.reset().lua(lua));
        methods.add_method("latency_ms", |_, this, ()| Ok(this.bridge.whole().latency.as_secs_f64() * 1000.0));
        methods.add_method("drop_rate_pct", |_, this, ()| Ok(this.bridge.whole().loss_pct));
        methods.add_method("bandwidth_bps", |_, this, ()| Ok(this.bridge.whole().bandwidth_bps.unwrap_or(0)));
        methods.add_method("capture", |lua, this, ()| {
            let stream = this.bridge.capture_stream(None, creation_site(lua)).lua(lua)?;
            super::lab_ud::track(lua, stream.clone());
            Ok(StreamUd(stream))
        });
        methods.add_method("nic", |lua, this, v: Value| {
            let lab = super::lab_ud::current(lua);
            let (name, vm) = vm_arg(lua, "bridge:nic", &lab, &v)?;
            if !this.bridge.is_member(&name) {
                let e = crate::net::BridgeError::NotAttached {
                    verb: "bridge:nic",
                    vm: name,
                    bridge: this.bridge.name(),
                    attached: this.bridge.members().join(", "),
                };
                return Err(super::errors::raise_err(lua, &e));
            }
            Ok(NicUd { vm, vm_name: name, bridge: this.bridge.clone() })
        });
        methods.add_method("address", |lua, this, v: Value| {
            let name = vm_name(lua, "bridge:address", &v)?;
            Ok(this.bridge.address_of(&name).map(|a| a.to_string()))
        });
        methods.add_method("subnet", |_, this, ()| Ok(this.bridge.subnet()));
        methods
            .add_method("enable_uplink", |lua, this, ()| this.bridge.enable_uplink().map(|gw| gw.to_string()).lua(lua));
        methods.add_method("disable_uplink", |lua, this, ()| this.bridge.disable_uplink().lua(lua));
        methods.add_method("uplink_gateway", |_, this, ()| Ok(this.bridge.uplink_gateway().map(|g| g.to_string())));
        methods.add_method("name", |_, this, ()| Ok(this.bridge.name()));
        methods.add_method("close", |_, this, ()| {
            // Out of its lab (only if the lab's bridge of that name is this one).
            let name = this.bridge.name();
            if this.lab.own_bridge(&name).is_some_and(|b| b.is(&this.bridge)) {
                this.lab.remove_bridge(&name);
            }
            this.bridge.close();
            Ok(())
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("bridge({}; {} member(s))", this.bridge.name(), this.bridge.members().len()))
        });
    }
}

/// One VM's NIC on one bridge.
#[derive(Clone)]
pub struct NicUd {
    pub vm: VmRef,
    pub vm_name: String,
    pub bridge: Bridge,
}

impl NicUd {
    fn switch(&self) -> Switch {
        self.bridge.switch()
    }
}

impl UserData for NicUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "nic");
        methods.add_method("counters", |lua, this, ()| {
            let c = this.switch().counters(&this.vm_name).unwrap_or_default();
            let t = lua.create_table()?;
            t.set("rx_bytes", c.rx_bytes)?;
            t.set("tx_bytes", c.tx_bytes)?;
            t.set("rx_packets", c.rx_packets)?;
            t.set("tx_packets", c.tx_packets)?;
            t.set("errors", c.errors)?;
            Ok(t)
        });
        methods.add_method("capture", |lua, this, ()| {
            let stream = this.bridge.capture_stream(Some(&this.vm_name), creation_site(lua)).lua(lua)?;
            super::lab_ud::track(lua, stream.clone());
            Ok(StreamUd(stream))
        });
        methods.add_method("disconnect", |lua, this, ()| {
            lock(&this.vm).set_connected(&this.bridge.name(), false).lua(lua)
        });
        methods
            .add_method("reconnect", |lua, this, ()| lock(&this.vm).set_connected(&this.bridge.name(), true).lua(lua));
        methods.add_method("vm_name", |_, this, ()| Ok(this.vm_name.clone()));
        methods.add_method("bridge", |_, this, ()| Ok(this.bridge.name()));
        methods.add_method("address", |_, this, ()| Ok(this.bridge.address_of(&this.vm_name).map(|a| a.to_string())));
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("nic({} on {})", this.vm_name, this.bridge.name()))
        });
    }
}

/// `vm:nic(name)`: a bridge name, or `eth<N>` / `ens<N>` / `enp0s<N>` for
/// the N-th attachment in bridge-name order.
pub fn vm_nic(lua: &Lua, vm: &VmRef, name: &str) -> mlua::Result<NicUd> {
    let (vm_name, bridges) = {
        let v = lock(vm);
        let mut names: Vec<String> = v.attachments().iter().map(|a| a.bridge.clone()).collect();
        names.sort();
        (v.name().to_string(), names)
    };
    let index = ["eth", "ens", "enp0s"].iter().find_map(|p| name.strip_prefix(p).and_then(|n| n.parse::<usize>().ok()));
    let bridge_name = match index {
        Some(i) => bridges.get(i).cloned(),
        None => bridges.iter().find(|b| *b == name).cloned(),
    };
    let no_nic = || {
        raise(
            lua,
            format!(
                "vm:nic: no NIC `{name}` on vm `{vm_name}` (try a bridge name like `lan` or a guest iface like `eth0`)"
            ),
        )
    };
    let bridge_name = bridge_name.ok_or_else(no_nic)?;
    let bridge = super::lab_ud::current(lua).find_bridge(&bridge_name).ok_or_else(no_nic)?;
    Ok(NicUd { vm: vm.clone(), vm_name, bridge })
}
