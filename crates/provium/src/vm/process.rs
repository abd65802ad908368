//! [`GuestProcess`]: a command running in the background in a guest
//! (`vm:run_async`, `vm:daemon`, `vm:background`). Its output is collected
//! on the host as it is written ([`ProcessOutput`]), whole up to
//! [`MAX_OUTPUT`](crate::agent::output::MAX_OUTPUT), so it can be read
//! after the process stopped; closing stops it (SIGTERM, a grace period,
//! SIGKILL) and releases the agent's handle. A process of a worker
//! (`worker:run_async`) is the worker's: every operation on it goes through
//! that worker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use provium_protocol::{ExecRequest, ExitStatus, StreamSource};

use super::resources::Site;
use super::stream::Stream;
use super::worker::GuestWorker;
use super::{VmError, VmRef};
use crate::agent::output::ProcessOutput;
use crate::agent::{AgentClient, AgentError};
use crate::lab::{Close, CloseRank};
use crate::sync::lock;

/// How long `close()` lets a process react to SIGTERM before SIGKILL.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long after its exit a process's output may take to arrive.
const OUTPUT_TAIL: Duration = Duration::from_secs(30);

/// A process's state and its output so far (all of it once it ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcState {
    pub pid: u32,
    /// `None` while it runs.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

struct Inner {
    vm: VmRef,
    /// The worker it runs under, if not the main agent.
    worker: Option<GuestWorker>,
    handle: u64,
    pid: u32,
    command: String,
    output: ProcessOutput,
    /// The final state, once known (waited, stopped, killed).
    finished: Option<ProcState>,
    released: bool,
}

/// A handle on a guest process; clones share it.
#[derive(Clone)]
pub struct GuestProcess(Arc<Mutex<Inner>>);

impl GuestProcess {
    /// Starts `req` on `vm`; a non-empty `stdin` is written to it, and its
    /// stdin stays open until `close_stdin` (or the process is released).
    pub fn spawn(vm: &VmRef, command: &str, req: ExecRequest, stdin: &[u8]) -> Result<GuestProcess, VmError> {
        GuestProcess::spawn_on(vm, None, "run_async", command, req, stdin)
    }

    /// Like [`GuestProcess::spawn`], under `worker` when given; `op` names
    /// the call in errors.
    pub fn spawn_on(
        vm: &VmRef,
        worker: Option<&GuestWorker>,
        op: &'static str,
        command: &str,
        req: ExecRequest,
        stdin: &[u8],
    ) -> Result<GuestProcess, VmError> {
        let via = match worker {
            Some(w) => Some(w.relay_handle(op)?),
            None => None,
        };
        let (handle, pid, output) = {
            let mut g = lock(vm);
            let (h, pid) = g.with_agent(op, |a| a.via(via).spawn(req, true))?;
            let output = g.with_agent(op, |a| ProcessOutput::collect(&a.via(via), h))?;
            if !stdin.is_empty() {
                g.with_agent(op, |a| a.via(via).stdin_write(h, stdin))?;
            }
            (h, pid, output)
        };
        Ok(GuestProcess(Arc::new(Mutex::new(Inner {
            vm: vm.clone(),
            worker: worker.cloned(),
            handle,
            pid,
            command: command.to_string(),
            output,
            finished: None,
            released: false,
        }))))
    }

    pub fn pid(&self) -> u32 {
        lock(&self.0).pid
    }

    /// The agent's handle (also the `id` of a `vm:background` job).
    pub fn handle(&self) -> u64 {
        lock(&self.0).handle
    }

    pub fn command(&self) -> String {
        lock(&self.0).command.clone()
    }

    /// The VM, this process's handle, and the worker it runs under (which
    /// must not be closed).
    fn target(&self, op: &'static str) -> Result<(VmRef, u64, Option<u64>), VmError> {
        let (vm, handle, worker) = {
            let p = lock(&self.0);
            (p.vm.clone(), p.handle, p.worker.clone())
        };
        let via = match worker {
            Some(w) => Some(w.relay_handle(op)?),
            None => None,
        };
        Ok((vm, handle, via))
    }

    /// Runs `f` with the agent (or the worker it runs under) and this
    /// process's handle.
    pub fn op<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&AgentClient, u64) -> Result<T, AgentError>,
    ) -> Result<T, VmError> {
        let (vm, handle, via) = self.target(op)?;
        let mut vm = lock(&vm);
        vm.with_agent(op, |a| f(&a.via(via), handle))
    }

    fn finished(&self) -> Option<ProcState> {
        lock(&self.0).finished.clone()
    }

    /// Adds the output to the agent's answer (all of it once the process
    /// ended) and remembers a final state.
    fn complete(&self, op: &'static str, st: provium_protocol::ProcState) -> Result<ProcState, VmError> {
        let (vm, output) = {
            let p = lock(&self.0);
            (p.vm.clone(), p.output.clone())
        };
        // Not under the VM's lock: the last bytes may still be on their way.
        let collected = match st.status {
            Some(_) => output.wait_end(OUTPUT_TAIL),
            None => output.so_far(),
        };
        let (stdout, stderr) = collected.map_err(|e| lock(&vm).failed(op, e))?;
        let st = ProcState { pid: st.pid, status: st.status, stdout, stderr };
        if st.status.is_some() {
            lock(&self.0).finished = Some(st.clone());
        }
        Ok(st)
    }

    /// The current state without blocking.
    pub fn poll(&self) -> Result<ProcState, VmError> {
        if let Some(st) = self.finished() {
            return Ok(st);
        }
        let st = self.op("status", |a, h| a.wait(h, Some(Duration::ZERO), false))?;
        self.complete("status", st)
    }

    /// Waits for the end; `kill_on_timeout` SIGKILLs the group at the deadline.
    pub fn wait(&self, timeout: Option<Duration>, kill_on_timeout: bool) -> Result<ProcState, VmError> {
        if let Some(st) = self.finished() {
            return Ok(st);
        }
        let st = self.op("wait", |a, h| a.wait(h, timeout, kill_on_timeout))?;
        self.complete("wait", st)
    }

    pub fn signal(&self, sig: i32) -> Result<(), VmError> {
        if self.finished().is_some() {
            return Ok(());
        }
        self.op("signal", |a, h| a.signal(h, sig))
    }

    /// SIGTERM, a grace period, SIGKILL; returns the final state.
    pub fn stop(&self) -> Result<ProcState, VmError> {
        self.signal(libc::SIGTERM)?;
        self.wait(Some(CLOSE_GRACE), true)
    }

    /// A stream of its stdout (or stderr).
    pub fn stream(&self, stdout: bool, site: Option<Site>) -> Result<Stream, VmError> {
        let kind = if stdout { "proc_stdout_stream" } else { "proc_stderr_stream" };
        let (vm, handle, via) = self.target(kind)?;
        let source = if stdout { StreamSource::Stdout { handle } } else { StreamSource::Stderr { handle } };
        Stream::open_on(&vm, via, kind, &handle.to_string(), source, site)
    }

    /// Stops the process if it runs and releases its handle; idempotent.
    /// Errors are ignored: the VM may already be gone.
    pub fn close(&self) {
        if lock(&self.0).released {
            return;
        }
        let _ = self.stop();
        let _ = self.op("release", |a, h| a.release(h));
        lock(&self.0).released = true;
    }
}

impl Close for GuestProcess {
    fn rank(&self) -> CloseRank {
        CloseRank::Process
    }

    fn close(&self) {
        GuestProcess::close(self)
    }
}
