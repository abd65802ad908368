//! [`Bridge`]: one L2 segment of a lab — its members, their addresses, its
//! partitions and impairments — carried out by its [`Switch`].
//!
//! A bridge is graph state plus a running switch. Every change to the graph
//! (a member, a partition, an impairment) is turned into one [`Rules`] value
//! and handed to the switch whole, so the switch never sees half a change.
//! Members are VMs; the bridge tells each VM what to plug in
//! (`crate::vm::nics`), and the VM does it when it runs.
//!
//! Addresses (unless the bridge was made with `addresses = false`): the
//! bridge gets a /24 in `10.0.0.0/8` from its name (the next free one if two
//! bridges of a file collide), members get `.2`, `.3`, … in attach order,
//! the lowest free first. `.1` is left for a gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::uplink::{Uplink, UPLINK_PORT};
use super::{Capture, CaptureScope, Impairment, PortCounters, Rules, Switch};
use crate::sync::lock;
use crate::vm::nics::{Attachment, HostsTable};
use crate::vm::resources::{Class, ResourceGuard, Site};
use crate::vm::{ChunkSource, Stream, VmError, VmRef};

/// What every bridge of one test file shares: the run's seed (loss draws
/// from it) and the subnets in use.
#[derive(Clone, Default)]
pub struct NetContext {
    pub seed: u64,
    subnets: Arc<Mutex<BTreeSet<u16>>>,
}

impl NetContext {
    pub fn new(seed: u64) -> NetContext {
        NetContext { seed, subnets: Arc::default() }
    }

    /// The subnet for a bridge named `name`: `10.a.b.0/24` from a hash of
    /// the name, the next free one on a collision.
    fn claim_subnet(&self, name: &str, wanted: Option<u16>) -> u16 {
        let mut used = lock(&self.subnets);
        // A recorded subnet is kept as it is: the restored guests hold
        // addresses in it. Separate switches cannot clash anyway; only a VM
        // on two bridges of one subnet would be confused.
        if let Some(s) = wanted {
            used.insert(s);
            return s;
        }
        let h = crate::vmm::spec::fnv1a32(name.as_bytes());
        let mut h = (h ^ (h >> 16)) as u16;
        // 10.0.x is where user-mode networking usually lives; keep clear.
        while used.contains(&h) || h >> 8 == 0 {
            h = h.wrapping_add(1);
        }
        used.insert(h);
        h
    }

    fn release_subnet(&self, s: u16) {
        lock(&self.subnets).remove(&s);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge `{bridge}` is closed")]
    Closed { bridge: String },
    #[error(
        "{verb}: vm `{vm}` is not attached to bridge `{bridge}` (attached: [{attached}]). Call bridge:attach(\"{vm}\") \
         first."
    )]
    NotAttached { verb: &'static str, vm: String, bridge: String, attached: String },
    #[error("bridge:attach: bridge `{bridge}` already has a member named `{vm}` (another VM of that name)")]
    NameClash { bridge: String, vm: String },
    #[error("bridge:attach: bridge `{bridge}` has no free address left in {subnet}")]
    Full { bridge: String, subnet: String },
    #[error("{verb}: {message}")]
    BadValue { verb: &'static str, message: String },
    #[error("cannot start the switch of bridge `{bridge}`")]
    Switch {
        bridge: String,
        #[source]
        source: super::NetError,
    },
    #[error(
        "bridge:enable_uplink: bridge `{bridge}` was made with addresses = false; an uplink routes the bridge's subnet"
    )]
    UplinkWithoutAddresses { bridge: String },
    #[error("bridge:enable_uplink: bridge `{bridge}`")]
    Uplink {
        bridge: String,
        #[source]
        source: super::uplink::UplinkError,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// Options of `lab:bridge(name, opts)`.
#[derive(Debug, Clone, Copy)]
pub struct BridgeOpts {
    /// Give members addresses and names (default true).
    pub addresses: bool,
}

impl Default for BridgeOpts {
    fn default() -> BridgeOpts {
        BridgeOpts { addresses: true }
    }
}

struct Member {
    name: String,
    vm: VmRef,
    /// Host part of its address.
    host: Option<u8>,
}

/// The graph state a lab snapshot records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Symmetric partitions, each pair sorted.
    pub partitions: BTreeSet<(String, String)>,
    /// Directional partitions (from, to).
    pub one_way: BTreeSet<(String, String)>,
    pub partition_all: bool,
    pub isolated: BTreeSet<String>,
    pub whole: Impairment,
    pub directional: BTreeMap<(String, String), Impairment>,
}

struct State {
    name: String,
    subnet: Option<u16>,
    members: Vec<Member>,
    graph: Graph,
    switch: Switch,
    hosts: HostsTable,
    ctx: NetContext,
    uplink: Option<Uplink>,
    closed: bool,
}

/// A bridge handle; clones share it.
#[derive(Clone)]
pub struct Bridge(Arc<Mutex<State>>);

/// One member as a lab snapshot records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub vm: String,
    pub host: Option<u8>,
    pub nic: Option<u8>,
    pub connected: bool,
}

/// A bridge as a lab snapshot records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeRecord {
    pub name: String,
    pub subnet: Option<u16>,
    pub members: Vec<MemberRecord>,
    pub graph: Graph,
    #[serde(default)]
    pub uplink: bool,
}

fn subnet_ip(subnet: u16, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, (subnet >> 8) as u8, subnet as u8, host)
}

fn sorted(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Bridge {
    /// A bridge named `name` with its switch running.
    pub fn new(ctx: &NetContext, name: &str, opts: BridgeOpts) -> Result<Bridge, BridgeError> {
        Bridge::with_subnet(ctx, name, opts.addresses.then_some(None))
    }

    /// `subnet`: `None` for no addresses, `Some(None)` for the name's,
    /// `Some(Some(s))` for a recorded one.
    fn with_subnet(ctx: &NetContext, name: &str, subnet: Option<Option<u16>>) -> Result<Bridge, BridgeError> {
        let switch = Switch::start(name, super::derive_seed(ctx.seed, name))
            .map_err(|source| BridgeError::Switch { bridge: name.to_string(), source })?;
        let subnet = subnet.map(|wanted| ctx.claim_subnet(name, wanted));
        Ok(Bridge(Arc::new(Mutex::new(State {
            name: name.to_string(),
            subnet,
            members: Vec::new(),
            graph: Graph::default(),
            switch,
            hosts: HostsTable::default(),
            ctx: ctx.clone(),
            uplink: None,
            closed: false,
        }))))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0)
    }

    fn open(&self) -> Result<MutexGuard<'_, State>, BridgeError> {
        let s = self.state();
        if s.closed {
            return Err(BridgeError::Closed { bridge: s.name.clone() });
        }
        Ok(s)
    }

    pub fn name(&self) -> String {
        self.state().name.clone()
    }

    pub fn is(&self, other: &Bridge) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Member names, sorted.
    pub fn members(&self) -> Vec<String> {
        let mut v: Vec<String> = self.state().members.iter().map(|m| m.name.clone()).collect();
        v.sort();
        v
    }

    pub fn is_member(&self, vm: &str) -> bool {
        self.state().members.iter().any(|m| m.name == vm)
    }

    /// The subnet (`10.a.b.0/24`), if the bridge gives addresses.
    pub fn subnet(&self) -> Option<String> {
        self.state().subnet.map(|s| format!("{}/24", subnet_ip(s, 0)))
    }

    /// A member's address.
    pub fn address_of(&self, vm: &str) -> Option<Ipv4Addr> {
        let s = self.state();
        let m = s.members.iter().find(|m| m.name == vm)?;
        Some(subnet_ip(s.subnet?, m.host?))
    }

    /// Attaches every VM of `vms` (validated together first; a VM already
    /// attached is left as it is). Running guests are plugged in and
    /// configured at once; every member's hosts file is rewritten.
    pub fn attach(&self, vms: &[(String, VmRef)]) -> Result<(), BridgeError> {
        let mut s = self.open()?;
        let mut new: Vec<(String, VmRef)> = Vec::new();
        for (name, vm) in vms {
            match s.members.iter().find(|m| &m.name == name) {
                Some(m) if Arc::ptr_eq(&m.vm, vm) => {}
                Some(_) => return Err(BridgeError::NameClash { bridge: s.name.clone(), vm: name.clone() }),
                None if new.iter().any(|(n, v)| n == name && !Arc::ptr_eq(v, vm)) => {
                    return Err(BridgeError::NameClash { bridge: s.name.clone(), vm: name.clone() })
                }
                None if new.iter().any(|(n, _)| n == name) => {}
                None => new.push((name.clone(), vm.clone())),
            }
        }
        let mut hosts: Vec<Option<u8>> = Vec::new();
        if let Some(subnet) = s.subnet {
            let mut used: BTreeSet<u8> = s.members.iter().filter_map(|m| m.host).collect();
            for _ in &new {
                let free = (2..=254).find(|h| !used.contains(h)).ok_or_else(|| BridgeError::Full {
                    bridge: s.name.clone(),
                    subnet: format!("{}/24", subnet_ip(subnet, 0)),
                })?;
                used.insert(free);
                hosts.push(Some(free));
            }
        } else {
            hosts = vec![None; new.len()];
        }
        let mut done: Vec<VmRef> = Vec::new();
        for ((name, vm), host) in new.into_iter().zip(hosts) {
            s.members.push(Member { name: name.clone(), vm: vm.clone(), host });
            publish_hosts(&s);
            let att = attachment(&s, host, true, None);
            if let Err(e) = lock(&vm).attach(att) {
                // Undo this call's attachments: all of it, or none.
                s.members.retain(|m| !done.iter().chain([&vm]).any(|d| Arc::ptr_eq(d, &m.vm)));
                publish_hosts(&s);
                let bridge = s.name.clone();
                for d in &done {
                    let _ = lock(d).detach(&bridge);
                }
                return Err(e.into());
            }
            done.push(vm);
        }
        self.apply(&s);
        refresh_all(&s)
    }

    /// Detaches `vm`, forgetting its partitions, isolation and directional
    /// rules.
    pub fn detach(&self, vm: &str) -> Result<(), BridgeError> {
        let mut s = self.open()?;
        let Some(i) = s.members.iter().position(|m| m.name == vm) else { return Ok(()) };
        let m = s.members.remove(i);
        let g = &mut s.graph;
        g.partitions.retain(|(a, b)| a != vm && b != vm);
        g.one_way.retain(|(a, b)| a != vm && b != vm);
        g.isolated.remove(vm);
        g.directional.retain(|(a, b), _| a != vm && b != vm);
        publish_hosts(&s);
        self.apply(&s);
        let bridge = s.name.clone();
        lock(&m.vm).detach(&bridge)?;
        refresh_all(&s)
    }

    fn require_member(s: &State, verb: &'static str, vm: &str) -> Result<(), BridgeError> {
        if s.members.iter().any(|m| m.name == vm) {
            return Ok(());
        }
        let mut names: Vec<&str> = s.members.iter().map(|m| m.name.as_str()).collect();
        names.sort();
        Err(BridgeError::NotAttached { verb, vm: vm.to_string(), bridge: s.name.clone(), attached: names.join(", ") })
    }

    /// Changes the graph with `f` (after checking that `need` are members)
    /// and hands the switch the new rules.
    fn change(&self, verb: &'static str, need: &[&str], f: impl FnOnce(&mut Graph)) -> Result<(), BridgeError> {
        let mut s = self.open()?;
        for vm in need {
            Bridge::require_member(&s, verb, vm)?;
        }
        f(&mut s.graph);
        self.apply(&s);
        Ok(())
    }

    /// Cuts `a` and `b` apart both ways (graph state: works before attach).
    pub fn partition(&self, a: &str, b: &str) -> Result<(), BridgeError> {
        self.change("bridge:partition", &[], |g| {
            g.partitions.insert(sorted(a, b));
        })
    }

    /// Drops frames from `from` to `to` only.
    pub fn partition_one_way(&self, from: &str, to: &str) -> Result<(), BridgeError> {
        self.change("bridge:partition", &[from, to], |g| {
            g.one_way.insert((from.to_string(), to.to_string()));
        })
    }

    pub fn unpartition(&self, a: &str, b: &str) -> Result<(), BridgeError> {
        self.change("bridge:unpartition", &[], |g| {
            g.partitions.remove(&sorted(a, b));
        })
    }

    pub fn unpartition_one_way(&self, from: &str, to: &str) -> Result<(), BridgeError> {
        self.change("bridge:unpartition", &[], |g| {
            g.one_way.remove(&(from.to_string(), to.to_string()));
        })
    }

    pub fn partition_all(&self) -> Result<(), BridgeError> {
        self.change("bridge:partition_all", &[], |g| g.partition_all = true)
    }

    /// Undoes [`Bridge::partition_all`] (only that).
    pub fn restore_all(&self) -> Result<(), BridgeError> {
        self.change("bridge:restore_all", &[], |g| g.partition_all = false)
    }

    /// Symmetric partition of the pair, or the whole bridge's.
    pub fn is_partitioned(&self, a: &str, b: &str) -> bool {
        let s = self.state();
        s.graph.partition_all || s.graph.partitions.contains(&sorted(a, b))
    }

    pub fn isolate(&self, vm: &str) -> Result<(), BridgeError> {
        self.change("bridge:isolate", &[vm], |g| {
            g.isolated.insert(vm.to_string());
        })
    }

    pub fn unisolate(&self, vm: &str) -> Result<(), BridgeError> {
        self.change("bridge:unisolate", &[], |g| {
            g.isolated.remove(vm);
        })
    }

    pub fn is_isolated(&self, vm: &str) -> bool {
        self.state().graph.isolated.contains(vm)
    }

    /// Changes the whole-bridge impairment (`dir: None`) or the one from
    /// `dir.0` to `dir.1`.
    pub fn impair(
        &self,
        verb: &'static str,
        dir: Option<(&str, &str)>,
        f: impl FnOnce(&mut Impairment),
    ) -> Result<(), BridgeError> {
        let need: Vec<&str> = dir.map(|(a, b)| vec![a, b]).unwrap_or_default();
        self.change(verb, &need, |g| match dir {
            None => f(&mut g.whole),
            Some((a, b)) => f(g.directional.entry((a.to_string(), b.to_string())).or_default()),
        })
    }

    /// Clears impairments and partitions (isolation stays).
    pub fn reset(&self) -> Result<(), BridgeError> {
        self.change("bridge:reset", &[], |g| {
            let isolated = std::mem::take(&mut g.isolated);
            *g = Graph { isolated, ..Graph::default() };
        })
    }

    /// The whole-bridge impairment.
    pub fn whole(&self) -> Impairment {
        self.state().graph.whole.clone()
    }

    /// A capture of the whole bridge (`vm: None`) or of one member's port.
    pub fn capture(&self, vm: Option<&str>) -> Result<Capture, BridgeError> {
        let s = self.open()?;
        let scope = match vm {
            None => CaptureScope::Bridge,
            Some(vm) => {
                Bridge::require_member(&s, "nic:capture", vm)?;
                CaptureScope::Port(vm.to_string())
            }
        };
        Ok(s.switch.capture(scope))
    }

    /// A capture as a stream, counted as an open stream on every member
    /// (so their snapshots refuse while it lives).
    pub fn capture_stream(&self, vm: Option<&str>, site: Option<Site>) -> Result<Stream, BridgeError> {
        let capture = self.capture(vm)?;
        let name = self.name();
        let detail = match vm {
            None => format!("bridge {name}"),
            Some(v) => format!("nic {v} on bridge {name}"),
        };
        let guards = self
            .member_vms()
            .iter()
            .map(|(_, vm)| lock(vm).resources().register(Class::Stream, "capture", &detail, site.clone()))
            .collect();
        let closed = "capture closed";
        Ok(Stream::new(Box::new(Guarded { capture, _guards: guards }), closed, site, None))
    }

    /// The switch (what a Nic handle reads counters and captures from).
    pub fn switch(&self) -> Switch {
        self.state().switch.clone()
    }

    /// The member VMs (for snapshot guards).
    pub fn member_vms(&self) -> Vec<(String, VmRef)> {
        self.state().members.iter().map(|m| (m.name.clone(), m.vm.clone())).collect()
    }

    /// A member's counters as its guest sees them (zeros when not plugged).
    pub fn counters(&self, vm: &str) -> PortCounters {
        self.state().switch.counters(vm).unwrap_or_default()
    }

    pub fn switch_stats(&self) -> super::SwitchStats {
        self.state().switch.stats()
    }

    /// Gives the members a route to the host's network (see
    /// [`super::uplink`]); the gateway is the subnet's `.1`.
    pub fn enable_uplink(&self) -> Result<Ipv4Addr, BridgeError> {
        let mut s = self.open()?;
        if let Some(u) = &s.uplink {
            return Ok(u.gateway);
        }
        let subnet = s.subnet.ok_or_else(|| BridgeError::UplinkWithoutAddresses { bridge: s.name.clone() })?;
        let bridge = s.name.clone();
        let (uplink, port) = Uplink::start(&bridge, subnet_ip(subnet, 0))
            .map_err(|source| BridgeError::Uplink { bridge: bridge.clone(), source })?;
        s.switch
            .add_port(UPLINK_PORT, port.socket, port.peer)
            .map_err(|source| BridgeError::Switch { bridge: bridge.clone(), source })?;
        let gateway = uplink.gateway;
        s.uplink = Some(uplink);
        for m in &s.members {
            lock(&m.vm).set_gateway(&bridge, Some(gateway))?;
        }
        Ok(gateway)
    }

    /// Takes the members' route to the host away again; idempotent.
    pub fn disable_uplink(&self) -> Result<(), BridgeError> {
        let mut s = self.open()?;
        let Some(uplink) = s.uplink.take() else { return Ok(()) };
        s.switch.remove_port(UPLINK_PORT);
        uplink.stop();
        let bridge = s.name.clone();
        for m in &s.members {
            lock(&m.vm).set_gateway(&bridge, None)?;
        }
        Ok(())
    }

    /// The uplink's gateway, while there is one.
    pub fn uplink_gateway(&self) -> Option<Ipv4Addr> {
        self.state().uplink.as_ref().map(|u| u.gateway)
    }

    /// Hands the switch the rules of the current graph.
    fn apply(&self, s: &State) {
        s.switch.set_rules(rules(s));
    }

    /// What a lab snapshot records.
    pub fn record(&self) -> BridgeRecord {
        let s = self.state();
        let members = s
            .members
            .iter()
            .map(|m| {
                let vm = lock(&m.vm);
                let att = vm.attachments().iter().find(|a| a.bridge == s.name);
                MemberRecord {
                    vm: m.name.clone(),
                    host: m.host,
                    nic: att.and_then(|a| a.nic),
                    connected: att.is_none_or(|a| a.connected),
                }
            })
            .collect();
        BridgeRecord {
            name: s.name.clone(),
            subnet: s.subnet,
            members,
            graph: s.graph.clone(),
            uplink: s.uplink.is_some(),
        }
    }

    /// A bridge as `record` saved it, its members found by `vm`. The VMs
    /// must not be running yet: they plug in when they are restored.
    pub fn from_record(
        ctx: &NetContext,
        record: &BridgeRecord,
        vm: impl Fn(&str) -> Option<VmRef>,
    ) -> Result<Bridge, BridgeError> {
        let bridge = Bridge::with_subnet(ctx, &record.name, record.subnet.map(Some))?;
        {
            let mut s = bridge.state();
            s.graph = record.graph.clone();
            for m in &record.members {
                let Some(vmref) = vm(&m.vm) else { continue };
                s.members.push(Member { name: m.vm.clone(), vm: vmref.clone(), host: m.host });
                let mut v = lock(&vmref);
                let _ = v.detach(&record.name);
                v.attach(attachment(&s, m.host, m.connected, m.nic))?;
            }
            publish_hosts(&s);
            bridge.apply(&s);
        }
        if record.uplink {
            bridge.enable_uplink()?;
        }
        Ok(bridge)
    }

    /// Detaches every member and stops the switch; idempotent.
    pub fn close(&self) {
        let (members, name) = {
            let mut s = self.state();
            if s.closed {
                return;
            }
            s.closed = true;
            if let Some(sub) = s.subnet {
                s.ctx.release_subnet(sub);
            }
            if let Some(u) = s.uplink.take() {
                s.switch.remove_port(UPLINK_PORT);
                u.stop();
            }
            (std::mem::take(&mut s.members), s.name.clone())
        };
        for m in &members {
            let _ = lock(&m.vm).detach(&name);
        }
        self.state().switch.stop();
    }
}

/// A capture holding its members' open-stream guards until it drops.
struct Guarded {
    capture: Capture,
    _guards: Vec<ResourceGuard>,
}

impl ChunkSource for Guarded {
    fn next(&mut self, timeout: Duration) -> crate::agent::Chunk {
        self.capture.next(timeout)
    }

    fn close(&mut self) {
        self.capture.close();
        self._guards.clear();
    }
}

/// The attachment a member's VM carries out.
fn attachment(s: &State, host: Option<u8>, connected: bool, nic: Option<u8>) -> Attachment {
    Attachment {
        bridge: s.name.clone(),
        switch: s.switch.clone(),
        address: s.subnet.zip(host).map(|(sub, h)| (subnet_ip(sub, h), 24)),
        hosts: s.hosts.clone(),
        connected,
        nic,
        gateway: s.uplink.as_ref().map(|u| u.gateway),
    }
}

fn publish_hosts(s: &State) {
    let entries =
        s.members.iter().filter_map(|m| Some((m.name.clone(), subnet_ip(s.subnet?, m.host?)))).collect::<Vec<_>>();
    s.hosts.set(entries);
}

/// Rewrites every running member's hosts file.
fn refresh_all(s: &State) -> Result<(), BridgeError> {
    if s.subnet.is_none() {
        return Ok(());
    }
    for m in &s.members {
        lock(&m.vm).refresh_hosts()?;
    }
    Ok(())
}

/// The switch's rules for a graph and its members.
fn rules(s: &State) -> Rules {
    let g = &s.graph;
    let mut partitioned = BTreeSet::new();
    for (a, b) in &g.partitions {
        partitioned.insert((a.clone(), b.clone()));
        partitioned.insert((b.clone(), a.clone()));
    }
    partitioned.extend(g.one_way.iter().cloned());
    if g.partition_all {
        for a in &s.members {
            for b in &s.members {
                if a.name != b.name {
                    partitioned.insert((a.name.clone(), b.name.clone()));
                }
            }
        }
    }
    Rules { partitioned, isolated: g.isolated.clone(), whole: g.whole.clone(), directional: g.directional.clone() }
}

/// A latency (`ms`), checked: finite and not negative.
pub fn latency(verb: &'static str, ms: f64) -> Result<Duration, BridgeError> {
    if !ms.is_finite() || ms < 0.0 {
        return Err(BridgeError::BadValue {
            verb,
            message: format!("latency must be a non-negative number of ms, got {ms}"),
        });
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// A loss percentage, checked: 0 to 100.
pub fn loss(verb: &'static str, pct: f64) -> Result<f64, BridgeError> {
    if !(0.0..=100.0).contains(&pct) {
        return Err(BridgeError::BadValue {
            verb,
            message: format!("loss must be a percentage from 0 to 100, got {pct}"),
        });
    }
    Ok(pct)
}
