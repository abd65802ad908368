//! `Process`: a command running in the background (`vm:run_async`,
//! `vm:daemon`). Its output is collected on the host as it comes, so it can
//! be read after the process stopped.

use mlua::{Lua, UserData, UserDataMethods, Value};
use provium_protocol::{ExecOutput, ExitStatus};

use super::errors::{creation_site, raise, LuaResultExt};
use super::opts;
use super::result_ud::RunResult;
use super::stream_ud::StreamUd;
use crate::vm::process::{GuestProcess, ProcState};

/// A background process as Lua sees it; the process itself is
/// `crate::vm::process::GuestProcess`.
#[derive(Clone)]
pub struct ProcUd(pub GuestProcess);

/// Parses a signal given as a number or a name (`"TERM"`, `"sigkill"`, …).
pub fn signal_number(v: &Value) -> Result<i32, String> {
    match v {
        Value::Integer(n) => Ok(*n as i32),
        Value::String(s) => {
            let name = s.to_string_lossy().to_ascii_lowercase();
            let name = name.strip_prefix("sig").unwrap_or(&name);
            Ok(match name {
                "hup" => libc::SIGHUP,
                "int" => libc::SIGINT,
                "quit" => libc::SIGQUIT,
                "kill" => libc::SIGKILL,
                "usr1" => libc::SIGUSR1,
                "usr2" => libc::SIGUSR2,
                "pipe" => libc::SIGPIPE,
                "alrm" => libc::SIGALRM,
                "term" => libc::SIGTERM,
                "chld" => libc::SIGCHLD,
                "cont" => libc::SIGCONT,
                "stop" => libc::SIGSTOP,
                "winch" => libc::SIGWINCH,
                other => return Err(format!("unknown signal name `{other}`")),
            })
        }
        other => Err(format!("signal must be an integer or a name like \"TERM\", got {}", other.type_name())),
    }
}

/// A `RunResult` for a finished process.
pub fn run_result(command: &str, st: &ProcState) -> RunResult {
    RunResult {
        command: command.to_string(),
        out: ExecOutput {
            status: st.status.unwrap_or(ExitStatus::Exited(-1)),
            stdout: st.stdout.clone(),
            stderr: st.stderr.clone(),
        },
    }
}

impl ProcUd {
    fn stream(&self, lua: &Lua, stdout: bool) -> mlua::Result<StreamUd> {
        let stream = self.0.stream(stdout, creation_site(lua)).lua(lua)?;
        Ok(super::vm_streams::tracked(lua, stream))
    }
}

impl UserData for ProcUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "proc");
        methods.add_method("wait", |lua, this, t: Option<Value>| {
            let timeout = match t {
                None | Some(Value::Nil) => None,
                Some(v) => {
                    let d = opts::duration(lua, "proc:wait", &v)?;
                    if d.is_zero() {
                        return Err(raise(
                            lua,
                            "proc:wait: timeout=0 would SIGKILL the process immediately; use proc:status() to poll, \
                             or pass a small positive timeout (e.g. \"100ms\")",
                        ));
                    }
                    Some(d)
                }
            };
            let st = this.0.wait(timeout, true).lua(lua)?;
            Ok(run_result(&this.0.command(), &st))
        });
        methods.add_method("kill", |lua, this, sig: Option<Value>| {
            let sig = match sig {
                None | Some(Value::Nil) => libc::SIGTERM,
                Some(v) => signal_number(&v).map_err(|m| raise(lua, format!("proc:kill: {m}")))?,
            };
            this.0.signal(sig).lua(lua)
        });
        methods.add_method("signal", |lua, this, sig: Value| {
            let sig = signal_number(&sig).map_err(|m| raise(lua, format!("proc:signal: {m}")))?;
            this.0.signal(sig).lua(lua)
        });
        methods.add_method("pid", |_, this, ()| Ok(this.0.pid()));
        methods.add_method("handle", |_, this, ()| Ok(this.0.handle()));
        methods.add_method("status", |lua, this, ()| {
            let st = this.0.poll().lua(lua)?;
            Ok(if st.status.is_some() { "exited" } else { "running" })
        });
        methods.add_method("stdin_write", |lua, this, data: mlua::String| {
            let data = data.as_bytes().to_vec();
            this.0.op("stdin_write", |a, h| a.stdin_write(h, &data)).lua(lua)
        });
        methods.add_method("close_stdin", |lua, this, ()| this.0.op("close_stdin", |a, h| a.stdin_close(h)).lua(lua));
        methods.add_method("stdout_stream", |lua, this, ()| this.stream(lua, true));
        methods.add_method("stderr_stream", |lua, this, ()| this.stream(lua, false));
        methods.add_method("stop", |lua, this, ()| {
            let st = this.0.stop().lua(lua)?;
            Ok(run_result(&this.0.command(), &st))
        });
        methods.add_method("stdout", |lua, this, ()| {
            let st = this.0.poll().lua(lua)?;
            lua.create_string(&st.stdout)
        });
        methods.add_method("stderr", |lua, this, ()| {
            let st = this.0.poll().lua(lua)?;
            lua.create_string(&st.stderr)
        });
        methods.add_method("close", |_, this, ()| {
            this.0.close();
            Ok(())
        });
        methods.add_meta_method("__tostring", |_, this, ()| Ok(format!("process({})", this.0.handle())));
    }
}
