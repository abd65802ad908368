//! `vm:console()`: the guest's serial console. provium logs everything the
//! console prints (`read_log`); `read()` is a stream of what appears from
//! now on, `expect` waits for text, `write` types into the console.
//!
//! The stream follows the console log file on the host (QEMU appends to it);
//! it ends when the VM stops.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::errors::{creation_site, raise};
use super::lab::Resource;
use super::lab_ud::track;
use super::opts;
use super::stream_ud::{ChunkSource, StreamUd};
use super::vm_ud::VmRef;
use crate::agent::Chunk;
use crate::vm::resources::Class;
use crate::vm::VmState;

/// How often the console log is looked at for new bytes.
const POLL: Duration = Duration::from_millis(10);
const EXPECT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ConsoleUd(pub VmRef);

/// New console bytes, read from the log file from where it was opened.
struct ConsoleSource {
    vm: VmRef,
    log: Option<std::fs::File>,
}

impl ConsoleSource {
    fn alive(&self) -> bool {
        self.vm.lock().map(|v| v.state() == VmState::Booted).unwrap_or(false)
    }
}

impl ChunkSource for ConsoleSource {
    fn next(&mut self, timeout: Duration) -> Chunk {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Some(log) = self.log.as_mut() else { return Chunk::Eof };
            match log.read(&mut buf) {
                Ok(n) if n > 0 => {
                    buf.truncate(n);
                    return Chunk::Data(buf);
                }
                Ok(_) => {}
                Err(e) => return Chunk::Failed(format!("console: {e}")),
            }
            if !self.alive() {
                return Chunk::Eof;
            }
            if Instant::now() >= deadline {
                return Chunk::Timeout;
            }
            std::thread::sleep(POLL);
        }
    }

    fn close(&mut self) {
        self.log = None;
    }
}

fn console_paths(lua: &Lua, vm: &VmRef, what: &str) -> mlua::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let g = vm.lock().unwrap_or_else(|e| e.into_inner());
    g.console_paths().ok_or_else(|| {
        raise(lua, format!("{what}: vm `{}` is {} (the console exists while it runs)", g.name(), g.state().as_str()))
    })
}

/// The console log, decoded, with `\r\n` turned into `\n`.
fn log_text(path: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).replace("\r\n", "\n")
}

impl UserData for ConsoleUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("read", |lua, this, ()| {
            let (log_path, _) = console_paths(lua, &this.0, "console:read")?;
            let mut log = std::fs::File::open(&log_path).map_err(|e| raise(lua, format!("console:read: {e}")))?;
            let _ = log.seek(SeekFrom::End(0));
            let site = creation_site(lua);
            let guard = this.0.lock().unwrap_or_else(|e| e.into_inner()).resources().register(
                Class::Stream,
                "console_read",
                "console",
                site.clone(),
            );
            let source = ConsoleSource { vm: this.0.clone(), log: Some(log) };
            let ud = StreamUd::new(Box::new(source), "console closed", site, guard);
            track(lua, Resource::Stream(ud.clone()));
            Ok(ud)
        });
        methods.add_method("read_log", |lua, this, ()| {
            let g = this.0.lock().unwrap_or_else(|e| e.into_inner());
            let text = match g.console_paths() {
                Some((log, _)) => log_text(&log),
                None => g.console_tail(usize::MAX),
            };
            lua.create_string(&text)
        });
        methods.add_method("expect", |lua, this, (pattern, t): (String, Option<Value>)| {
            let timeout = match t {
                None | Some(Value::Nil) => EXPECT_TIMEOUT,
                Some(v) => opts::duration(lua, "console:expect", &v)?,
            };
            let (log_path, _) = console_paths(lua, &this.0, "console:expect")?;
            let start = std::fs::metadata(&log_path).map(|m| m.len() as usize).unwrap_or(0);
            let deadline = Instant::now() + timeout;
            loop {
                let bytes = std::fs::read(&log_path).unwrap_or_default();
                let new = String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).replace("\r\n", "\n");
                if new.contains(&pattern) {
                    return Ok(pattern);
                }
                if Instant::now() >= deadline {
                    return Err(raise(lua, format!("console:expect timed out waiting for `{pattern}` ({timeout:?})")));
                }
                std::thread::sleep(POLL);
            }
        });
        methods.add_method("write", |lua, this, (data, o): (mlua::String, Option<Table>)| {
            if let Some(t) = &o {
                opts::check_keys(lua, "console:write", t, &["timeout"])?;
            }
            let (_, sock) = console_paths(lua, &this.0, "console:write")?;
            let mut s = std::os::unix::net::UnixStream::connect(&sock)
                .map_err(|e| raise(lua, format!("console:write: {e}")))?;
            s.write_all(&data.as_bytes()).map_err(|e| raise(lua, format!("console:write: {e}")))?;
            Ok(())
        });
        methods.add_method("close", |_, _, ()| Ok(()));
    }
}
