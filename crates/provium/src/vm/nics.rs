//! A VM's network cards and what each is attached to.
//!
//! `microvm` cannot hot-plug devices, so every VM boots with
//! [`DEFAULT_NICS`] NICs (more if it is attached to more bridges), each
//! link-down until attached. Attaching plugs a NIC's host socket into the
//! bridge's switch, raises its link (QMP `set_link`) and has the agent give
//! it its address; the guest's `/etc/hosts` lists every member of every
//! bridge the VM is on as `<vm>.<bridge>`.
//!
//! Which NIC is which: attachments known at boot take NICs in bridge-name
//! order (`eth0` for the first name), later ones the lowest free NIC. A
//! NIC's Ethernet address is derived from the VM's name and its index.
//!
//! The bridge (`crate::net::Bridge`) decides membership and addresses; this
//! module only carries them out on the VM, so nothing here locks a bridge.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use crate::net::Switch;
use crate::sync::lock;
use crate::vmm::{Device, Instance, Mac, Machine};

/// NICs every VM boots with (so it can join bridges after boot).
pub const DEFAULT_NICS: u8 = 4;

/// The names and addresses a bridge publishes into its members' hosts
/// files: `(vm, address)`, in attach order. Shared by the bridge and its
/// members' attachments; only ever locked on its own.
#[derive(Clone, Default)]
pub struct HostsTable(Arc<Mutex<Vec<(String, Ipv4Addr)>>>);

impl HostsTable {
    pub fn set(&self, entries: Vec<(String, Ipv4Addr)>) {
        *lock(&self.0) = entries;
    }

    pub fn entries(&self) -> Vec<(String, Ipv4Addr)> {
        lock(&self.0).clone()
    }
}

/// One bridge a VM is attached to.
#[derive(Clone)]
pub struct Attachment {
    pub bridge: String,
    pub switch: Switch,
    /// The member's address and the subnet's prefix length (`None` on a
    /// bridge with `addresses = false`).
    pub address: Option<(Ipv4Addr, u8)>,
    pub hosts: HostsTable,
    /// `nic:disconnect()` clears it (cable pulled).
    pub connected: bool,
    /// The NIC it uses, once the VM has booted (or as recorded in a lab
    /// snapshot).
    pub nic: Option<u8>,
    /// The bridge's uplink gateway: the guest's default route, while set.
    pub gateway: Option<Ipv4Addr>,
}

/// What a NIC operation on a running guest failed at.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("vm `{vm}` is already attached to bridge `{bridge}`")]
    AlreadyAttached { vm: String, bridge: String },
    #[error(
        "vm `{vm}` has no free NIC for bridge `{bridge}`: it booted with {count} and all are attached ({attached}). \
         Attach it before boot, or boot it with {{nics = {}}}",
        count + 1
    )]
    NoFreeNic { vm: String, bridge: String, count: usize, attached: String },
    #[error("vm `{vm}`: plugging NIC {nic} into bridge `{bridge}` failed: {why}")]
    Plug { vm: String, bridge: String, nic: u8, why: String },
    #[error("vm `{vm}`: configuring its NIC on bridge `{bridge}` in the guest failed")]
    Configure {
        vm: String,
        bridge: String,
        #[source]
        source: crate::agent::AgentError,
    },
    #[error("vm `{vm}`: writing /etc/hosts failed")]
    Hosts {
        vm: String,
        #[source]
        source: crate::agent::AgentError,
    },
}

/// A VM's attachments.
#[derive(Default)]
pub struct Nics {
    attachments: Vec<Attachment>,
}

impl Nics {
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    pub fn find(&self, bridge: &str) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.bridge == bridge)
    }

    fn find_mut(&mut self, bridge: &str) -> Option<&mut Attachment> {
        self.attachments.iter_mut().find(|a| a.bridge == bridge)
    }

    /// The NIC devices a boot creates, and the NIC each attachment takes
    /// (bridge-name order).
    pub fn plan_boot(&mut self, vm: &str, wanted: Option<u8>, machine: &mut Machine) {
        let count = wanted.unwrap_or(DEFAULT_NICS).max(self.attachments.len() as u8);
        for index in 0..count {
            machine.devices.push(Device::Nic { index, mac: Mac::derived(&format!("{vm}#{index}")) });
        }
        let mut order: Vec<usize> = (0..self.attachments.len()).collect();
        order.sort_by(|&a, &b| self.attachments[a].bridge.cmp(&self.attachments[b].bridge));
        for (nic, i) in order.into_iter().enumerate() {
            self.attachments[i].nic = Some(nic as u8);
        }
    }

    /// Records an attachment; on a running guest it takes the lowest free
    /// NIC of `machine`.
    pub fn add(&mut self, vm: &str, mut att: Attachment, machine: Option<&Machine>) -> Result<&Attachment, NicError> {
        if self.find(&att.bridge).is_some() {
            return Err(NicError::AlreadyAttached { vm: vm.to_string(), bridge: att.bridge });
        }
        if let Some(machine) = machine {
            let nics = machine.nics();
            let used: Vec<u8> = self.attachments.iter().filter_map(|a| a.nic).collect();
            let Some((free, _)) = nics.iter().find(|(i, _)| !used.contains(i)) else {
                let attached = self.attachments.iter().map(|a| a.bridge.as_str()).collect::<Vec<_>>().join(", ");
                return Err(NicError::NoFreeNic {
                    vm: vm.to_string(),
                    bridge: att.bridge,
                    count: nics.len(),
                    attached,
                });
            };
            att.nic = Some(*free);
        } else {
            att.nic = None;
        }
        self.attachments.push(att);
        Ok(self.attachments.last().expect("just pushed"))
    }

    /// Gives every attachment without a NIC the lowest free one of
    /// `machine` (attached while the VM was not running, then restored).
    /// Attachments beyond the machine's NICs keep none and stay unplugged.
    pub fn assign_free(&mut self, machine: &Machine) {
        let nics = machine.nics();
        for i in 0..self.attachments.len() {
            let valid = self.attachments[i].nic.is_some_and(|n| nics.iter().any(|(x, _)| *x == n));
            if valid {
                continue;
            }
            let used: Vec<u8> = self.attachments.iter().filter_map(|a| a.nic).collect();
            self.attachments[i].nic = nics.iter().map(|(x, _)| *x).find(|x| !used.contains(x));
        }
    }

    /// Forgets the attachment to `bridge`.
    pub fn remove(&mut self, bridge: &str) -> Option<Attachment> {
        let i = self.attachments.iter().position(|a| a.bridge == bridge)?;
        Some(self.attachments.remove(i))
    }

    /// Sets the uplink gateway of the attachment to `bridge`.
    pub fn set_gateway(&mut self, bridge: &str, gateway: Option<Ipv4Addr>) -> Option<Attachment> {
        let a = self.find_mut(bridge)?;
        let old = a.clone();
        a.gateway = gateway;
        Some(old)
    }

    /// Sets whether the cable of the NIC on `bridge` is plugged in.
    pub fn set_connected(&mut self, bridge: &str, connected: bool) -> Option<&Attachment> {
        let a = self.find_mut(bridge)?;
        a.connected = connected;
        Some(a)
    }

    /// The attachments sorted by bridge name (what `eth<N>` indexes).
    pub fn by_bridge_name(&self) -> Vec<&Attachment> {
        let mut v: Vec<&Attachment> = self.attachments.iter().collect();
        v.sort_by(|a, b| a.bridge.cmp(&b.bridge));
        v
    }

    /// The guest's `/etc/hosts` lines provium owns, each ending in the
    /// marker so a rewrite replaces exactly them.
    pub fn hosts_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for a in self.by_bridge_name() {
            for (vm, ip) in a.hosts.entries() {
                lines.push(format!("{ip}\t{vm}.{} {HOSTS_MARK}", a.bridge));
            }
        }
        lines
    }
}

/// The comment that marks provium's lines in `/etc/hosts`.
pub const HOSTS_MARK: &str = "# provium";

/// `current` with provium's lines replaced by `ours`.
pub fn merge_hosts(current: &str, ours: &[String]) -> String {
    let mut out: Vec<&str> = current.lines().filter(|l| !l.ends_with(HOSTS_MARK)).collect();
    if !out.iter().any(|l| l.split_whitespace().nth(1) == Some("localhost")) {
        out.insert(0, "127.0.0.1\tlocalhost");
    }
    let mut s = out.join("\n");
    for l in ours {
        s.push('\n');
        s.push_str(l);
    }
    s.push('\n');
    s
}

/// Plugs `att`'s NIC of the running `inst` into its switch under port
/// `vm`, and sets the link as the guest sees it.
pub fn plug(vm: &str, inst: &Instance, att: &Attachment) -> Result<(), NicError> {
    let nic = att.nic.expect("a plugged attachment has a NIC");
    let fail = |why: String| NicError::Plug { vm: vm.to_string(), bridge: att.bridge.clone(), nic, why };
    let end = inst.nic_end(nic).ok_or_else(|| fail("the running guest has no such NIC".into()))?;
    let end = end.map_err(|e| fail(e.to_string()))?;
    att.switch.add_port(vm, end.socket, end.peer).map_err(|e| fail(crate::errors::chain(&e)))?;
    att.switch.set_link(vm, att.connected);
    inst.set_link(nic, att.connected).map_err(|e| fail(crate::errors::chain(&e)))
}

/// Gives the guest interface of `att` its address and brings it up (or
/// down when `up` is false); returns the guest's name for it.
pub fn configure(vm: &str, inst: &Instance, att: &Attachment, up: bool) -> Result<String, NicError> {
    let nic = att.nic.expect("a configured attachment has a NIC");
    let mac = inst.nic_mac(nic).ok_or_else(|| NicError::Plug {
        vm: vm.to_string(),
        bridge: att.bridge.clone(),
        nic,
        why: "the running guest has no such NIC".into(),
    })?;
    let address = if up { att.address.map(|(ip, p)| (ip.to_string(), p)) } else { None };
    // A guest restored from another VM's snapshot has that VM's device
    // addresses; each VM's interfaces take its own, so two copies of one
    // snapshot can share a bridge.
    let own = Mac::derived(&format!("{vm}#{nic}"));
    let set_mac = (own != mac).then(|| own.to_string());
    let fail = |source| NicError::Configure { vm: vm.to_string(), bridge: att.bridge.clone(), source };
    let name = inst.agent.net_config(&mac.to_string(), set_mac.as_deref(), up, address).map_err(fail)?;
    if let (true, Some(gw)) = (up, att.gateway) {
        inst.agent.default_route(&gw.to_string(), true).map_err(fail)?;
    }
    Ok(name)
}

/// Rewrites provium's lines of the guest's `/etc/hosts`.
pub fn write_hosts(vm: &str, inst: &Instance, nics: &Nics) -> Result<(), NicError> {
    let fail = |source| NicError::Hosts { vm: vm.to_string(), source };
    let current = match inst.agent.read_file("/etc/hosts") {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(crate::agent::AgentError::Op(e)) if e.errno == Some(libc::ENOENT) => String::new(),
        Err(e) => return Err(fail(e)),
    };
    let merged = merge_hosts(&current, &nics.hosts_lines());
    if merged != current {
        inst.agent.write_file("/etc/hosts", merged.as_bytes(), 0o644, false).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lines_replace_only_provium_lines() {
        let cur = "127.0.0.1 localhost\n10.0.0.9 mine\n10.1.1.2\told.lan # provium\n";
        let ours = vec![format!("10.1.1.3\tb.lan {HOSTS_MARK}")];
        assert_eq!(merge_hosts(cur, &ours), "127.0.0.1 localhost\n10.0.0.9 mine\n10.1.1.3\tb.lan # provium\n");
        assert_eq!(merge_hosts("", &[]), "127.0.0.1\tlocalhost\n");
    }
}
