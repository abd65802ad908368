//! `Process`: a command running in the background (`vm:run_async`,
//! `vm:daemon`). Its output stays with the agent until the process object
//! closes, so it can be read after the process stopped.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use mlua::{Lua, UserData, UserDataMethods, Value};
use provium_protocol::{ExecOutput, ExitStatus, ProcState, StreamSource};

use super::errors::{raise, LuaResultExt};
use super::opts;
use super::result_ud::RunResult;
use super::stream_ud::StreamUd;
use super::vm_ud::VmRef;
use crate::vm::VmError;

/// How long `close()` lets a process react to SIGTERM before SIGKILL.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub struct ProcInner {
    pub vm: VmRef,
    pub handle: u64,
    pub pid: u32,
    pub command: String,
    /// The final state, once known (waited, stopped, killed).
    pub finished: Option<ProcState>,
    released: bool,
}

#[derive(Clone)]
pub struct ProcUd(pub Rc<RefCell<ProcInner>>);

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
            truncated: false,
        },
    }
}

impl ProcUd {
    pub fn new(vm: VmRef, handle: u64, pid: u32, command: &str) -> ProcUd {
        ProcUd(Rc::new(RefCell::new(ProcInner {
            vm,
            handle,
            pid,
            command: command.to_string(),
            finished: None,
            released: false,
        })))
    }

    fn op<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&crate::agent::AgentClient, u64) -> Result<T, crate::agent::AgentError>,
    ) -> Result<T, VmError> {
        let (vm, handle) = {
            let p = self.0.borrow();
            (p.vm.clone(), p.handle)
        };
        let mut vm = vm.lock().unwrap_or_else(|e| e.into_inner());
        vm.with_agent(op, |a| f(a, handle))
    }

    /// The current state without blocking.
    pub fn poll(&self) -> Result<ProcState, VmError> {
        if let Some(st) = &self.0.borrow().finished {
            return Ok(st.clone());
        }
        let st = self.op("status", |a, h| a.wait(h, Some(Duration::ZERO), false))?;
        if st.status.is_some() {
            self.0.borrow_mut().finished = Some(st.clone());
        }
        Ok(st)
    }

    /// Waits for the end; `kill_on_timeout` SIGKILLs the group at the deadline.
    pub fn wait(&self, timeout: Option<Duration>, kill_on_timeout: bool) -> Result<ProcState, VmError> {
        if let Some(st) = &self.0.borrow().finished {
            return Ok(st.clone());
        }
        let st = self.op("wait", |a, h| a.wait(h, timeout, kill_on_timeout))?;
        if st.status.is_some() {
            self.0.borrow_mut().finished = Some(st.clone());
        }
        Ok(st)
    }

    pub fn signal(&self, sig: i32) -> Result<(), VmError> {
        if self.0.borrow().finished.is_some() {
            return Ok(());
        }
        self.op("signal", |a, h| a.signal(h, sig))
    }

    /// SIGTERM, a grace period, SIGKILL; returns the final state.
    pub fn stop(&self) -> Result<ProcState, VmError> {
        self.signal(libc::SIGTERM)?;
        self.wait(Some(CLOSE_GRACE), true)
    }

    /// Stops the process if it runs and releases its handle; idempotent.
    /// Errors are ignored: the VM may already be gone.
    pub fn close(&self) {
        if self.0.borrow().released {
            return;
        }
        let _ = self.stop();
        let _ = self.op("release", |a, h| a.release(h));
        self.0.borrow_mut().released = true;
    }

    fn stream(&self, lua: &Lua, stdout: bool) -> mlua::Result<StreamUd> {
        let (vm, handle) = {
            let p = self.0.borrow();
            (p.vm.clone(), p.handle)
        };
        let source = if stdout { StreamSource::Stdout { handle } } else { StreamSource::Stderr { handle } };
        let kind = if stdout { "proc_stdout_stream" } else { "proc_stderr_stream" };
        super::vm_streams::open_stream(lua, &vm, kind, &handle.to_string(), source)
    }
}

impl UserData for ProcUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
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
            let st = this.wait(timeout, true).lua(lua)?;
            Ok(run_result(&this.0.borrow().command, &st))
        });
        methods.add_method("kill", |lua, this, sig: Option<Value>| {
            let sig = match sig {
                None | Some(Value::Nil) => libc::SIGTERM,
                Some(v) => signal_number(&v).map_err(|m| raise(lua, format!("proc:kill: {m}")))?,
            };
            this.signal(sig).lua(lua)
        });
        methods.add_method("signal", |lua, this, sig: Value| {
            let sig = signal_number(&sig).map_err(|m| raise(lua, format!("proc:signal: {m}")))?;
            this.signal(sig).lua(lua)
        });
        methods.add_method("pid", |_, this, ()| Ok(this.0.borrow().pid));
        methods.add_method("handle", |_, this, ()| Ok(this.0.borrow().handle));
        methods.add_method("status", |lua, this, ()| {
            let st = this.poll().lua(lua)?;
            Ok(if st.status.is_some() { "exited" } else { "running" })
        });
        methods.add_method("stdin_write", |lua, this, data: mlua::String| {
            let data = data.as_bytes().to_vec();
            this.op("stdin_write", |a, h| a.stdin_write(h, &data)).lua(lua)
        });
        methods.add_method("close_stdin", |lua, this, ()| this.op("close_stdin", |a, h| a.stdin_close(h)).lua(lua));
        methods.add_method("stdout_stream", |lua, this, ()| this.stream(lua, true));
        methods.add_method("stderr_stream", |lua, this, ()| this.stream(lua, false));
        methods.add_method("stop", |lua, this, ()| {
            let st = this.stop().lua(lua)?;
            Ok(run_result(&this.0.borrow().command, &st))
        });
        methods.add_method("stdout", |lua, this, ()| {
            let st = this.poll().lua(lua)?;
            lua.create_string(&st.stdout)
        });
        methods.add_method("stderr", |lua, this, ()| {
            let st = this.poll().lua(lua)?;
            lua.create_string(&st.stderr)
        });
        methods.add_method("close", |_, this, ()| {
            this.close();
            Ok(())
        });
        methods.add_meta_method("__tostring", |_, this, ()| Ok(format!("process({})", this.0.borrow().handle)));
    }
}
