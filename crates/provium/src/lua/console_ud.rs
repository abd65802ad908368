//! `vm:console()`: the guest's serial console. provium logs everything the
//! console prints (`read_log`); `read()` is a stream of what appears from
//! now on, `expect` waits for text, `write` types into the console.
//!
//! The stream follows the console log file on the host (QEMU appends to it);
//! it ends when the VM stops.

use std::io::Write;
use std::time::{Duration, Instant};

use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::errors::{creation_site, raise};
use super::opts;
use crate::sync::lock;
use crate::vm::console::POLL;
use crate::vm::VmRef;
const EXPECT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ConsoleUd(pub VmRef);

fn console_paths(lua: &Lua, vm: &VmRef, what: &str) -> mlua::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let g = lock(vm);
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
        let methods = &mut super::args::Checked::new(methods, "console");
        methods.add_method("read", |lua, this, ()| {
            match crate::vm::console::open(&this.0, creation_site(lua)) {
                Some(Ok(stream)) => Ok(super::vm_streams::tracked(lua, stream)),
                Some(Err(e)) => Err(raise(lua, format!("console:read: {e}"))),
                // No console: the VM does not run, which is what this says.
                None => Err(console_paths(lua, &this.0, "console:read").expect_err("a VM without a console")),
            }
        });
        methods.add_method("read_log", |lua, this, ()| {
            let g = lock(&this.0);
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
