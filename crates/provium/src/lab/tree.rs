//! The lab tree of one test file: which VMs and sub-labs each lab holds, how
//! names are found through scopes, and what a scope closes when it ends.
//!
//! ```text
//! provium (file root) ── vms, sub-labs, file-scope resources
//!   ▲ parent
//! test:<name> (one per running test) ── its vms, sub-labs, resources
//! sub-lab from lab:lab() ── no parent: `dc1.web` never falls through
//! ```
//!
//! A [`Lab`] is `Send`: a handle onto a shared node, so a thread of its own
//! (a bridge's switch, a batch boot) can hold it. Locks are only ever taken
//! from a lab towards its parent (lookups) or its sub-labs (which have no
//! parent), so they cannot deadlock.

use std::sync::{Arc, Mutex, MutexGuard};

use super::close::{close_all, Close};
use super::error::LabError;
use crate::net::Bridge;
use crate::sync::lock;
use crate::vm::{VmRef, VmState};

struct LabNode {
    name: String,
    vms: Vec<(String, VmRef)>,
    labs: Vec<(String, Lab)>,
    bridges: Vec<(String, Bridge)>,
    /// Test scopes fall through to the file root; sub-labs have no parent.
    parent: Option<Lab>,
    /// Streams, processes and files opened while this scope was current.
    resources: Vec<Box<dyn Close>>,
    next_anonymous: usize,
    /// Members added with [`Lab::include`]: reachable here, closed by the
    /// scope that made them.
    included: Vec<String>,
    /// Members [`Lab::remove`]d from the graph that this scope still owns
    /// (and closes when it ends: removing is not shutting down).
    removed: Vec<Resource>,
}

/// The members of `list` that were not included (so are the lab's own).
fn owned<T>(list: Vec<(String, T)>, included: &[String]) -> Vec<(String, T)> {
    list.into_iter().filter(|(n, _)| !included.contains(n)).collect()
}

/// A VM, bridge or lab, as [`Lab::include`] takes it.
#[derive(Clone)]
pub enum Resource {
    Vm(VmRef),
    Bridge(Bridge),
    Lab(Lab),
}

/// A lab: the file root, a test's scope, or a sub-lab. Clones share it.
#[derive(Clone)]
pub struct Lab(Arc<Mutex<LabNode>>);

/// What a lab holds, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Vm(String),
    Bridge(String),
    SubLab(String),
}

/// Whether `name` can name a VM or lab: it also names files and
/// directories of lab snapshots.
/// Names `lab.<name>` resolves to something else first (functions and file
/// settings), so a VM, bridge or lab called so could not be reached.
pub const RESERVED_NAMES: &[&str] = &["pack", "unpack", "vm_fixture", "lab_fixture", "reset_between_tests", "timeout"];

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Lab {
    /// A lab named `name`; lookups fall through to `parent`.
    pub fn new(name: &str, parent: Option<&Lab>) -> Lab {
        Lab(Arc::new(Mutex::new(LabNode {
            name: name.to_string(),
            vms: Vec::new(),
            labs: Vec::new(),
            bridges: Vec::new(),
            parent: parent.cloned(),
            resources: Vec::new(),
            next_anonymous: 0,
            included: Vec::new(),
            removed: Vec::new(),
        })))
    }

    /// The scope of test `test`, falling through to this lab.
    pub fn test_scope(&self, test: &str) -> Lab {
        Lab::new(&format!("test:{test}"), Some(self))
    }

    fn node(&self) -> MutexGuard<'_, LabNode> {
        lock(&self.0)
    }

    pub fn name(&self) -> String {
        self.node().name.clone()
    }

    /// Whether `self` and `other` are the same lab.
    pub fn is(&self, other: &Lab) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn own_vm(&self, name: &str) -> Option<VmRef> {
        self.node().vms.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    pub fn own_lab(&self, name: &str) -> Option<Lab> {
        self.node().labs.iter().find(|(n, _)| n == name).map(|(_, l)| l.clone())
    }

    pub fn own_bridge(&self, name: &str) -> Option<Bridge> {
        self.node().bridges.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone())
    }

    /// A bridge by name: this lab, then its parents.
    pub fn find_bridge(&self, name: &str) -> Option<Bridge> {
        self.own_bridge(name).or_else(|| self.parent()?.find_bridge(name))
    }

    /// Adds a bridge under `name` (checked by the caller with
    /// [`Lab::check_new_name`]).
    pub fn add_bridge(&self, name: &str, bridge: Bridge) {
        self.node().bridges.push((name.to_string(), bridge));
    }

    /// Takes the bridge `name` out of this lab (not closing it).
    pub fn remove_bridge(&self, name: &str) -> Option<Bridge> {
        let mut node = self.node();
        let i = node.bridges.iter().position(|(n, _)| n == name)?;
        Some(node.bridges.remove(i).1)
    }

    /// This lab's own bridges, in declaration order.
    pub fn bridges(&self) -> Vec<(String, Bridge)> {
        self.node().bridges.clone()
    }

    pub fn bridge_names(&self) -> Vec<String> {
        self.node().bridges.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The scope this one falls through to (a test's scope: the file's).
    pub(super) fn parent(&self) -> Option<Lab> {
        self.node().parent.clone()
    }

    /// A VM by name: this lab, then its parents.
    pub fn find_vm(&self, name: &str) -> Option<VmRef> {
        self.own_vm(name).or_else(|| self.parent()?.find_vm(name))
    }

    /// A sub-lab by name: this lab, then its parents.
    pub fn find_lab(&self, name: &str) -> Option<Lab> {
        self.own_lab(name).or_else(|| self.parent()?.find_lab(name))
    }

    /// [`Lab::find_vm`], failing with the lab's name.
    pub fn vm(&self, name: &str) -> Result<VmRef, LabError> {
        self.find_vm(name).ok_or_else(|| LabError::NoSuchVm { name: name.to_string(), lab: self.name() })
    }

    /// The name of the ancestor lab that already declares `name`, if any.
    pub fn declared_above(&self, name: &str) -> Option<String> {
        let parent = self.parent()?;
        if parent.taken(name) {
            Some(parent.name())
        } else {
            parent.declared_above(name)
        }
    }

    fn taken(&self, name: &str) -> bool {
        self.own_vm(name).is_some() || self.own_lab(name).is_some() || self.own_bridge(name).is_some()
    }

    /// Rejects a malformed name, or one this lab or a parent scope already
    /// uses; `what` is the call (`vm`, `lab`) for the message.
    pub fn check_new_name(&self, what: &'static str, name: &str) -> Result<(), LabError> {
        if !valid_name(name) {
            return Err(LabError::BadName { what, name: name.to_string() });
        }
        if RESERVED_NAMES.contains(&name) {
            return Err(LabError::Reserved { what, name: name.to_string() });
        }
        if let Some(parent) = self.declared_above(name) {
            return Err(LabError::DeclaredAbove { what, name: name.to_string(), parent });
        }
        if self.taken(name) {
            return Err(LabError::Taken { what, name: name.to_string(), lab: self.name() });
        }
        Ok(())
    }

    /// `base`, or `base-2`, `base-3`, … : the first name this lab does not
    /// use yet.
    pub fn unique_name(&self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 2;
        while self.taken(&name) {
            name = format!("{base}-{i}");
            i += 1;
        }
        name
    }

    /// Adds a VM under `name` (checked by the caller).
    pub fn add_vm(&self, name: &str, vm: VmRef) {
        self.node().vms.push((name.to_string(), vm));
    }

    /// Creates and adds a sub-lab: `name` checked, or `__lab_0`, `__lab_1`, …
    pub fn add_sub_lab(&self, name: Option<&str>) -> Result<Lab, LabError> {
        let name = match name {
            Some(n) => {
                self.check_new_name("lab", n)?;
                n.to_string()
            }
            None => {
                let mut node = self.node();
                let n = node.next_anonymous;
                node.next_anonymous += 1;
                format!("__lab_{n}")
            }
        };
        Ok(self.sub_lab_named(&name))
    }

    /// The sub-lab `name`, created (unchecked) if it is not there.
    pub fn sub_lab_named(&self, name: &str) -> Lab {
        if let Some(l) = self.own_lab(name) {
            return l;
        }
        let lab = Lab::new(name, None);
        self.node().labs.push((name.to_string(), lab.clone()));
        lab
    }

    /// This lab's own VMs, in declaration order.
    pub fn vms(&self) -> Vec<(String, VmRef)> {
        self.node().vms.clone()
    }

    /// This lab's own sub-labs, in declaration order.
    pub fn sub_labs(&self) -> Vec<(String, Lab)> {
        self.node().labs.clone()
    }

    pub fn vm_names(&self) -> Vec<String> {
        self.node().vms.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn sub_lab_names(&self) -> Vec<String> {
        self.node().labs.iter().map(|(n, _)| n.clone()).collect()
    }

    /// VMs, then bridges, then sub-labs.
    pub fn members(&self) -> Vec<Member> {
        let node = self.node();
        let vms = node.vms.iter().map(|(n, _)| Member::Vm(n.clone()));
        let bridges = node.bridges.iter().map(|(n, _)| Member::Bridge(n.clone()));
        vms.chain(bridges).chain(node.labs.iter().map(|(n, _)| Member::SubLab(n.clone()))).collect()
    }

    /// This lab's own VMs that are in `state`.
    pub fn vms_in(&self, state: VmState) -> Vec<(String, VmRef)> {
        self.vms().into_iter().filter(|(_, vm)| lock(vm).state() == state).collect()
    }

    /// Every VM of this lab and its sub-labs (not its parents).
    pub fn all_vms(&self) -> Vec<(String, VmRef)> {
        let (mut v, labs) = {
            let node = self.node();
            (node.vms.clone(), node.labs.clone())
        };
        for (_, lab) in labs {
            v.extend(lab.all_vms());
        }
        v
    }

    /// Adds an existing VM, bridge or lab to this lab under its own name
    /// (checked like a new one). The scope that made it still closes it.
    pub fn include(&self, r: Resource) -> Result<(), LabError> {
        let (what, name) = match &r {
            Resource::Vm(vm) => ("vm", lock(vm).name().to_string()),
            Resource::Bridge(b) => ("bridge", b.name()),
            Resource::Lab(l) => ("lab", l.name()),
        };
        if let Resource::Lab(l) = &r {
            if l.is(self) {
                return Err(LabError::IncludeSelf { lab: self.name() });
            }
        }
        self.check_new_name(what, &name)?;
        let mut node = self.node();
        match r {
            Resource::Vm(vm) => node.vms.push((name.clone(), vm)),
            Resource::Bridge(b) => node.bridges.push((name.clone(), b)),
            Resource::Lab(l) => node.labs.push((name.clone(), l)),
        }
        node.included.push(name);
        Ok(())
    }

    /// Takes `name` out of this lab's graph (a VM, else a bridge, else a
    /// sub-lab) without shutting it down; what this lab made, it still
    /// closes when its scope ends. Returns what it was.
    pub fn remove(&self, name: &str) -> Result<Member, LabError> {
        let mut node = self.node();
        let owned = !node.included.iter().any(|n| n == name);
        node.included.retain(|n| n != name);
        let (member, resource) = if let Some(i) = node.vms.iter().position(|(n, _)| n == name) {
            (Member::Vm(name.into()), Resource::Vm(node.vms.remove(i).1))
        } else if let Some(i) = node.bridges.iter().position(|(n, _)| n == name) {
            (Member::Bridge(name.into()), Resource::Bridge(node.bridges.remove(i).1))
        } else if let Some(i) = node.labs.iter().position(|(n, _)| n == name) {
            (Member::SubLab(name.into()), Resource::Lab(node.labs.remove(i).1))
        } else {
            return Err(LabError::NoSuchMember { name: name.into(), lab: node.name.clone() });
        };
        if owned {
            node.removed.push(resource);
        }
        Ok(member)
    }

    /// Makes `r` this scope's: it closes when the scope ends.
    pub fn track(&self, r: Box<dyn Close>) {
        self.node().resources.push(r);
    }

    /// Ends the scope: its resources, then its sub-labs, then its VMs, then
    /// its bridges (newest first). The lab is empty afterwards.
    pub fn close(&self) {
        let (resources, bridges, labs, vms) = {
            let mut node = self.node();
            let included = std::mem::take(&mut node.included);
            let mut vms = owned(std::mem::take(&mut node.vms), &included);
            let mut bridges = owned(std::mem::take(&mut node.bridges), &included);
            let mut labs = owned(std::mem::take(&mut node.labs), &included);
            for r in std::mem::take(&mut node.removed) {
                match r {
                    Resource::Vm(vm) => {
                        let name = lock(&vm).name().to_string();
                        vms.insert(0, (name, vm))
                    }
                    Resource::Bridge(b) => bridges.insert(0, (b.name(), b)),
                    Resource::Lab(l) => labs.insert(0, (l.name(), l)),
                }
            }
            (std::mem::take(&mut node.resources), bridges, labs, vms)
        };
        close_all(resources);
        for (_, lab) in labs.into_iter().rev() {
            lab.close();
        }
        for (name, vm) in vms.into_iter().rev() {
            let attached: Vec<String> = {
                let mut v = lock(&vm);
                v.shutdown();
                v.attachments().iter().map(|a| a.bridge.clone()).collect()
            };
            // A VM that ends with its scope leaves the bridges of outer
            // scopes too (this scope's own bridges close just below).
            for bridge in attached.iter().filter_map(|b| self.find_bridge(b)) {
                let _ = bridge.detach(&name);
            }
        }
        // After the scope's own VMs are down, so only VMs of outer scopes
        // have a running guest to detach.
        for (_, bridge) in bridges.into_iter().rev() {
            bridge.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lab::close::{CloseRank, Probe};
    use crate::vm::Vm;

    fn vm(name: &str) -> VmRef {
        let images = Arc::new(crate::image::Images::new(Default::default()));
        Arc::new(Mutex::new(Vm::new(name, "default", Default::default(), images, crate::vmm::Accel::Tcg)))
    }

    #[test]
    fn test_scopes_fall_through_to_the_root_and_sub_labs_do_not() {
        let root = Lab::new("provium", None);
        root.add_vm("db", vm("db"));
        let sub = root.add_sub_lab(Some("dc1")).unwrap();
        sub.add_vm("web", vm("web"));
        let scope = root.test_scope("t");
        assert!(scope.find_vm("db").is_some(), "a test scope sees the root's VMs");
        assert!(scope.find_lab("dc1").is_some());
        assert!(scope.own_vm("db").is_none());
        assert!(sub.find_vm("db").is_none(), "a sub-lab has no parent");
        assert!(root.find_vm("web").is_none(), "a sub-lab's VMs are its own");
        assert_eq!(root.all_vms().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec!["db", "web"]);
        let e = scope.vm("nope").err().unwrap().to_string();
        assert_eq!(e, "provium:vm: no vm named `nope` in lab `test:t`");
        assert_eq!(root.members(), vec![Member::Vm("db".into()), Member::SubLab("dc1".into())]);
    }

    #[test]
    fn names_are_checked_and_a_parent_scope_name_is_not_shadowed() {
        let root = Lab::new("provium", None);
        root.add_vm("db", vm("db"));
        let scope = root.test_scope("t");
        let e = scope.check_new_name("vm", "db").unwrap_err().to_string();
        assert!(e.contains("name already declared at a parent scope (lab `provium`)"), "{e}");
        let e = root.check_new_name("vm", "db").unwrap_err().to_string();
        assert_eq!(e, "provium:vm: name `db` already used in lab `provium`");
        for bad in ["", ".hidden", "a/b", "a b"] {
            assert!(matches!(root.check_new_name("lab", bad), Err(LabError::BadName { .. })), "{bad:?}");
        }
        assert!(scope.check_new_name("vm", "web").is_ok());
        assert_eq!(root.unique_name("db"), "db-2");
        assert_eq!(root.add_sub_lab(None).unwrap().name(), "__lab_0");
        assert_eq!(root.add_sub_lab(None).unwrap().name(), "__lab_1");
    }

    #[test]
    fn a_scope_closes_its_resources_then_its_sub_labs_then_its_vms() {
        let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let root = Lab::new("provium", None);
        let scope = root.test_scope("t");
        let a = vm("a");
        scope.add_vm("a", a.clone());
        let sub = scope.add_sub_lab(Some("s")).unwrap();
        sub.track(Box::new(Probe("sub-file", CloseRank::File, log.clone())));
        scope.track(Box::new(Probe("file", CloseRank::File, log.clone())));
        scope.track(Box::new(Probe("stream", CloseRank::Stream, log.clone())));
        scope.close();
        assert_eq!(*log.lock().unwrap(), vec!["stream", "file", "sub-file"]);
        assert_eq!(lock(&a).state(), VmState::Shutdown, "the scope's VM was shut down");
        assert!(scope.vms().is_empty() && scope.sub_labs().is_empty());
        // The root is untouched, and closing twice is harmless.
        scope.close();
        assert_eq!(root.name(), "provium");
    }

    #[test]
    fn labs_can_move_to_other_threads() {
        fn send<T: Send + Sync>(_: &T) {}
        let root = Lab::new("provium", None);
        send(&root);
        let r = root.clone();
        std::thread::spawn(move || r.add_vm("x", vm("x"))).join().unwrap();
        assert_eq!(root.vm_names(), vec!["x"]);
    }
}
