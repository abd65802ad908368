//! `File`: a handle on a guest file opened with `vm:open_file`, read and
//! written in place; `tail_stream()` follows it from the current offset.
//! The handle is `crate::vm::file::GuestFile`.

use mlua::{Lua, UserData, UserDataMethods};
use provium_protocol::{StreamSource, TailStart, Whence};

use super::errors::{raise, LuaResultExt};
use crate::vm::file::GuestFile;

#[derive(Clone)]
pub struct FileUd(pub GuestFile);

const READ_ALL_CHUNK: u64 = 64 * 1024;

impl UserData for FileUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "file");
        methods.add_method("read", |lua, this, n: u64| {
            let data = this.0.op("read", |a, h| a.read(h, n)).lua(lua)?;
            lua.create_string(&data)
        });
        methods.add_method("read_all", |lua, this, ()| {
            let mut all = Vec::new();
            loop {
                let data = this.0.op("read_all", |a, h| a.read(h, READ_ALL_CHUNK)).lua(lua)?;
                if data.is_empty() {
                    break;
                }
                all.extend_from_slice(&data);
            }
            lua.create_string(&all)
        });
        methods.add_method("write", |lua, this, data: mlua::String| {
            let data = data.as_bytes().to_vec();
            this.0.op("write", |a, h| a.write(h, &data)).lua(lua)
        });
        methods.add_method("seek", |lua, this, (offset, whence): (i64, Option<String>)| {
            let whence = match whence.as_deref() {
                None | Some("set") => Whence::Set,
                Some("cur") => Whence::Cur,
                Some("end") => Whence::End,
                Some(other) => return Err(raise(lua, format!("file:seek: whence must be set/cur/end, got `{other}`"))),
            };
            this.0.op("seek", |a, h| a.seek(h, offset, whence)).lua(lua)
        });
        methods.add_method("tell", |lua, this, ()| this.0.op("tell", |a, h| a.seek(h, 0, Whence::Cur)).lua(lua));
        methods.add_method("fd", |_, this, ()| Ok(this.0.handle().unwrap_or(0)));
        methods.add_method("close", |_, this, ()| {
            this.0.close();
            Ok(())
        });
        methods.add_method("tail_stream", |lua, this, ()| {
            let offset = this.0.op("tail_stream", |a, h| a.seek(h, 0, Whence::Cur)).lua(lua)?;
            let path = this.0.path();
            let source = StreamSource::File { path: path.clone(), start: TailStart::Offset(offset) };
            super::vm_streams::open_stream(lua, &this.0.vm(), "file_tail_stream", &path, source)
        });
    }
}

/// Used by `vm:fd_stream(file)`.
pub fn handle_of(lua: &Lua, f: &FileUd) -> mlua::Result<u64> {
    f.0.handle().ok_or_else(|| raise(lua, "vm:fd_stream: file is closed"))
}
