//! [`GuestFile`]: a handle on a guest file opened with `vm:open_file`, read
//! and written in place. It counts as open on its VM (snapshots refuse while
//! it is) until it closes.

use std::sync::{Arc, Mutex};

use provium_protocol::OpenMode;

use super::resources::{Class, ResourceGuard, Site};
use super::{VmError, VmRef};
use crate::agent::{AgentClient, AgentError};
use crate::lab::{Close, CloseRank};
use crate::sync::lock;

struct Inner {
    vm: VmRef,
    path: String,
    /// `None` once closed.
    handle: Option<u64>,
    _guard: Option<ResourceGuard>,
}

/// A guest file handle; clones share it.
#[derive(Clone)]
pub struct GuestFile(Arc<Mutex<Inner>>);

impl GuestFile {
    /// Opens `path` on `vm` with `mode` (`perm` for a created file).
    pub fn open(vm: &VmRef, path: &str, mode: OpenMode, perm: u32, site: Option<Site>) -> Result<GuestFile, VmError> {
        let mut g = lock(vm);
        let handle = g.with_agent("open_file", |a| a.open_file(path, mode, perm))?;
        let guard = g.resources().register(Class::File, "open_file", path, site);
        Ok(GuestFile(Arc::new(Mutex::new(Inner {
            vm: vm.clone(),
            path: path.to_string(),
            handle: Some(handle),
            _guard: Some(guard),
        }))))
    }

    pub fn path(&self) -> String {
        lock(&self.0).path.clone()
    }

    pub fn vm(&self) -> VmRef {
        lock(&self.0).vm.clone()
    }

    /// The agent's handle, `None` once closed.
    pub fn handle(&self) -> Option<u64> {
        lock(&self.0).handle
    }

    /// Runs `f` with the agent and the handle; fails if the file is closed.
    pub fn op<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&AgentClient, u64) -> Result<T, AgentError>,
    ) -> Result<T, VmError> {
        let (vm, handle, path) = {
            let i = lock(&self.0);
            (i.vm.clone(), i.handle, i.path.clone())
        };
        let mut vm = lock(&vm);
        let Some(handle) = handle else {
            return Err(VmError::HandleClosed { vm: vm.name().to_string(), op, what: format!("file `{path}`") });
        };
        vm.with_agent(op, |a| f(a, handle))
    }

    /// Closes the handle; idempotent (errors ignored: the VM may be gone).
    pub fn close(&self) {
        let (vm, handle) = {
            let mut i = lock(&self.0);
            i._guard = None;
            (i.vm.clone(), i.handle.take())
        };
        if let Some(h) = handle {
            let _: Result<(), VmError> = lock(&vm).with_agent("close", |a| a.release(h));
        }
    }
}

impl Close for GuestFile {
    fn rank(&self) -> CloseRank {
        CloseRank::File
    }

    fn close(&self) {
        GuestFile::close(self)
    }
}
