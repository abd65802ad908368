//! The lab tree of one test file: which VMs and sub-labs each lab holds, how
//! names are found through scopes, and what a scope closes when it ends.
//!
//! ```text
//! provium (file root) ── vms, sub-labs, file-scope resources
//!   ▲ parent
//! test:<name> (one per running test) ── its vms, sub-labs, resources
//! sub-lab from lab:lab() ── no parent: `dc1.web` never falls through
//! ```

use std::cell::RefCell;
use std::rc::Rc;

use super::vm_ud::VmRef;

pub type LabRef = Rc<RefCell<LabNode>>;

/// A stream, process or file handle owned by a scope.
#[derive(Clone)]
pub enum Resource {
    Stream(super::stream_ud::StreamUd),
    Proc(super::proc_ud::ProcUd),
    File(super::file_ud::FileUd),
}

impl Resource {
    /// Close order at scope end: streams, then processes, then files.
    fn rank(&self) -> u8 {
        match self {
            Resource::Stream(_) => 0,
            Resource::Proc(_) => 1,
            Resource::File(_) => 2,
        }
    }

    fn close(&self) {
        match self {
            Resource::Stream(s) => s.close(),
            Resource::Proc(p) => p.close(),
            Resource::File(f) => f.close(),
        }
    }
}

/// Closes resources by kind (streams → processes → files), oldest first.
pub fn close_resources(mut res: Vec<Resource>) {
    res.sort_by_key(Resource::rank);
    for r in res {
        r.close();
    }
}

pub struct LabNode {
    pub name: String,
    pub vms: Vec<(String, VmRef)>,
    pub labs: Vec<(String, LabRef)>,
    /// Test scopes fall through to the file root; sub-labs have no parent.
    pub parent: Option<LabRef>,
    /// Streams, processes and files opened while this scope was current.
    pub resources: Vec<Resource>,
    next_anonymous: usize,
}

impl LabNode {
    pub fn new(name: &str, parent: Option<LabRef>) -> LabRef {
        Rc::new(RefCell::new(LabNode {
            name: name.to_string(),
            vms: Vec::new(),
            labs: Vec::new(),
            parent,
            resources: Vec::new(),
            next_anonymous: 0,
        }))
    }

    pub fn own_vm(&self, name: &str) -> Option<VmRef> {
        self.vms.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    pub fn own_lab(&self, name: &str) -> Option<LabRef> {
        self.labs.iter().find(|(n, _)| n == name).map(|(_, l)| l.clone())
    }

    /// A VM by name: this lab, then its parents.
    pub fn find_vm(&self, name: &str) -> Option<VmRef> {
        self.own_vm(name).or_else(|| self.parent.as_ref().and_then(|p| p.borrow().find_vm(name)))
    }

    /// A sub-lab by name: this lab, then its parents.
    pub fn find_lab(&self, name: &str) -> Option<LabRef> {
        self.own_lab(name).or_else(|| self.parent.as_ref().and_then(|p| p.borrow().find_lab(name)))
    }

    /// The name of the ancestor lab that already declares `name`, if any.
    pub fn declared_above(&self, name: &str) -> Option<String> {
        let parent = self.parent.as_ref()?.borrow();
        if parent.own_vm(name).is_some() || parent.own_lab(name).is_some() {
            Some(parent.name.clone())
        } else {
            parent.declared_above(name)
        }
    }

    /// `__lab_0`, `__lab_1`, … for sub-labs created without a name.
    pub fn anonymous_name(&mut self) -> String {
        let n = self.next_anonymous;
        self.next_anonymous += 1;
        format!("__lab_{n}")
    }

    /// This lab's own VMs that are in `state`.
    pub fn vms_in(&self, state: crate::vm::VmState) -> Vec<(String, VmRef)> {
        let is = |vm: &VmRef| vm.lock().unwrap_or_else(|p| p.into_inner()).state() == state;
        self.vms.iter().filter(|(_, vm)| is(vm)).cloned().collect()
    }

    /// Every VM of this lab and its sub-labs (not its parents).
    pub fn all_vms(&self) -> Vec<(String, VmRef)> {
        let mut v = self.vms.clone();
        for (_, lab) in &self.labs {
            v.extend(lab.borrow().all_vms());
        }
        v
    }

    /// Ends the scope: its resources, then its sub-labs, then its VMs
    /// (newest first). The lab is empty afterwards.
    pub fn close(&mut self) {
        close_resources(std::mem::take(&mut self.resources));
        for (_, lab) in std::mem::take(&mut self.labs).into_iter().rev() {
            lab.borrow_mut().close();
        }
        for (_, vm) in std::mem::take(&mut self.vms).into_iter().rev() {
            vm.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
        }
    }
}
