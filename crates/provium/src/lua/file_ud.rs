//! `File`: a handle on a guest file opened with `vm:open_file`, read and
//! written in place; `tail_stream()` follows it from the current offset.

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{Lua, UserData, UserDataMethods};
use provium_protocol::{StreamSource, TailStart, Whence};

use super::errors::{creation_site, raise, LuaResultExt};
use super::vm_ud::VmRef;
use crate::agent::{AgentClient, AgentError};
use crate::vm::resources::{Class, ResourceGuard};
use crate::vm::VmError;

pub struct FileInner {
    pub vm: VmRef,
    pub path: String,
    /// `None` once closed.
    pub handle: Option<u64>,
    _guard: Option<ResourceGuard>,
}

#[derive(Clone)]
pub struct FileUd(pub Rc<RefCell<FileInner>>);

impl FileUd {
    pub fn new(vm: VmRef, path: &str, handle: u64, guard: ResourceGuard) -> FileUd {
        FileUd(Rc::new(RefCell::new(FileInner {
            vm,
            path: path.to_string(),
            handle: Some(handle),
            _guard: Some(guard),
        })))
    }

    fn op<T>(
        &self,
        lua: &Lua,
        op: &'static str,
        f: impl FnOnce(&AgentClient, u64) -> Result<T, AgentError>,
    ) -> mlua::Result<T> {
        let (vm, handle) = {
            let i = self.0.borrow();
            (i.vm.clone(), i.handle)
        };
        let Some(handle) = handle else {
            return Err(raise(lua, format!("file:{op}: file `{}` is closed", self.0.borrow().path)));
        };
        let mut vm = vm.lock().unwrap_or_else(|e| e.into_inner());
        vm.with_agent(op, |a| f(a, handle)).lua(lua)
    }

    /// Closes the handle; idempotent (errors ignored: the VM may be gone).
    pub fn close(&self) {
        let (vm, handle) = {
            let mut i = self.0.borrow_mut();
            i._guard = None;
            (i.vm.clone(), i.handle.take())
        };
        if let Some(h) = handle {
            let mut vm = vm.lock().unwrap_or_else(|e| e.into_inner());
            let _: Result<(), VmError> = vm.with_agent("close", |a| a.release(h));
        }
    }
}

const READ_ALL_CHUNK: u64 = 64 * 1024;

impl UserData for FileUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("read", |lua, this, n: u64| {
            let data = this.op(lua, "read", |a, h| a.read(h, n))?;
            lua.create_string(&data)
        });
        methods.add_method("read_all", |lua, this, ()| {
            let mut all = Vec::new();
            loop {
                let data = this.op(lua, "read_all", |a, h| a.read(h, READ_ALL_CHUNK))?;
                if data.is_empty() {
                    break;
                }
                all.extend_from_slice(&data);
            }
            lua.create_string(&all)
        });
        methods.add_method("write", |lua, this, data: mlua::String| {
            let data = data.as_bytes().to_vec();
            this.op(lua, "write", |a, h| a.write(h, &data))
        });
        methods.add_method("seek", |lua, this, (offset, whence): (i64, Option<String>)| {
            let whence = match whence.as_deref() {
                None | Some("set") => Whence::Set,
                Some("cur") => Whence::Cur,
                Some("end") => Whence::End,
                Some(other) => return Err(raise(lua, format!("file:seek: whence must be set/cur/end, got `{other}`"))),
            };
            this.op(lua, "seek", |a, h| a.seek(h, offset, whence))
        });
        methods.add_method("tell", |lua, this, ()| this.op(lua, "tell", |a, h| a.seek(h, 0, Whence::Cur)));
        methods.add_method("fd", |_, this, ()| Ok(this.0.borrow().handle.unwrap_or(0)));
        methods.add_method("close", |_, this, ()| {
            this.close();
            Ok(())
        });
        methods.add_method("tail_stream", |lua, this, ()| {
            let offset = this.op(lua, "tail_stream", |a, h| a.seek(h, 0, Whence::Cur))?;
            let (vm, path) = {
                let i = this.0.borrow();
                (i.vm.clone(), i.path.clone())
            };
            let source = StreamSource::File { path: path.clone(), start: TailStart::Offset(offset) };
            super::vm_streams::open_stream(lua, &vm, "file_tail_stream", &path, source)
        });
    }
}

/// Used by `vm:fd_stream(file)`.
pub fn handle_of(lua: &Lua, f: &FileUd) -> mlua::Result<u64> {
    f.0.borrow().handle.ok_or_else(|| raise(lua, "vm:fd_stream: file is closed"))
}

/// Registers an open file on its VM.
pub fn register(vm: &VmRef, lua: &Lua, path: &str) -> ResourceGuard {
    let reg = vm.lock().unwrap_or_else(|e| e.into_inner()).resources();
    reg.register(Class::File, "open_file", path, creation_site(lua))
}
