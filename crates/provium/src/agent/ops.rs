//! One typed method per request. Each sends the request on a fresh channel
//! and turns the reply into the value the caller wants; an unexpected reply
//! kind is a protocol error. A syscall can also be sent now and its reply
//! read later ([`PendingSyscall`]), from any thread.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use provium_protocol::frame::FrameKind;
use provium_protocol::{
    DirEntry, ExecOutput, ExecRequest, IoctlCall, IoctlOutcome, MemRead, Metadata, OpenMode, OutputPipe, ProcState,
    Request, Response, SyscallCall, SyscallOutcome, Whence, WorkerSpec,
};

use super::client::{AgentClient, AgentError, Incoming};
use super::output::{OutputBuf, MAX_OUTPUT};

pub(super) fn unexpected(op: &'static str, resp: &Response) -> AgentError {
    AgentError::Unexpected { op, answer: format!("{resp:?}") }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl AgentClient {
    pub fn ping(&self) -> Result<(), AgentError> {
        self.call(&Request::Ping).map(|_| ())
    }

    /// Runs a command; `stdin` (any size) is streamed after the request,
    /// and its whole output comes back, up to [`MAX_OUTPUT`]: past that the
    /// command is cancelled (its process group killed) and the call fails.
    pub fn exec(&self, mut req: ExecRequest, stdin: &[u8]) -> Result<ExecOutput, AgentError> {
        req.stdin = !stdin.is_empty();
        let (id, rx) = self.open(&Request::Exec(req))?;
        if !stdin.is_empty() {
            self.send_data(id, stdin)?;
        }
        let mut out = OutputBuf::default();
        let reply = loop {
            match rx.recv() {
                Ok(Incoming::Data(body)) => {
                    let Some((pipe, bytes)) = OutputPipe::split(&body) else {
                        return Err(AgentError::Unexpected { op: "exec", answer: "an untagged output frame".into() });
                    };
                    if !out.overflowed && !out.push(pipe, bytes, MAX_OUTPUT) {
                        self.cancel(id);
                    }
                }
                Ok(Incoming::DataEnd) => {}
                Ok(Incoming::Reply(reply)) => break reply.map_err(AgentError::Op)?,
                Ok(Incoming::BadReply(e)) => return Err(AgentError::BadReply(e)),
                Err(_) => return Err(self.disconnected()),
            }
        };
        if out.overflowed {
            return Err(AgentError::OutputTooLarge { cap: MAX_OUTPUT });
        }
        match reply {
            Response::Exec(status) => Ok(ExecOutput { status, stdout: out.stdout, stderr: out.stderr }),
            other => Err(unexpected("exec", &other)),
        }
    }

    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        let (_, rx) = self.open(&Request::ReadFile { path: path.to_string() })?;
        let mut data = Vec::new();
        self.finish(rx, Some(&mut data))?;
        Ok(data)
    }

    pub fn write_file(&self, path: &str, data: &[u8], perm: u32, append: bool) -> Result<(), AgentError> {
        let (id, rx) = self.open(&Request::WriteFile { path: path.to_string(), perm, append })?;
        self.send_data(id, data)?;
        self.finish(rx, None).map(|_| ())
    }

    pub fn stat(&self, path: &str, follow_symlinks: bool) -> Result<Metadata, AgentError> {
        match self.call(&Request::Stat { path: path.to_string(), follow_symlinks })? {
            Response::Stat(md) => Ok(md),
            other => Err(unexpected("stat", &other)),
        }
    }

    pub fn listdir(&self, path: &str) -> Result<Vec<DirEntry>, AgentError> {
        match self.call(&Request::ListDir { path: path.to_string() })? {
            Response::ListDir(entries) => Ok(entries),
            other => Err(unexpected("listdir", &other)),
        }
    }

    pub fn mkdir(&self, path: &str, parents: bool, perm: u32) -> Result<(), AgentError> {
        self.call(&Request::Mkdir { path: path.into(), parents, perm }).map(drop)
    }

    pub fn unlink(&self, path: &str) -> Result<(), AgentError> {
        self.call(&Request::Unlink { path: path.into() }).map(drop)
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<(), AgentError> {
        self.call(&Request::Rename { from: from.into(), to: to.into() }).map(drop)
    }

    /// Starts a background process; returns `(handle, pid)`. With `stdin`
    /// the process's stdin stays open for [`AgentClient::stdin_write`].
    pub fn spawn(&self, mut req: ExecRequest, stdin: bool) -> Result<(u64, u32), AgentError> {
        req.stdin = stdin;
        match self.call(&Request::Spawn(req))? {
            Response::Spawned { handle, pid } => Ok((handle, pid)),
            other => Err(unexpected("spawn", &other)),
        }
    }

    /// Waits for a process (see [`Request::Wait`]).
    pub fn wait(&self, handle: u64, timeout: Option<Duration>, kill_on_timeout: bool) -> Result<ProcState, AgentError> {
        let req = Request::Wait { handle, timeout_ms: timeout.map(millis), kill_on_timeout };
        match self.call(&req)? {
            Response::Proc(p) => Ok(p),
            other => Err(unexpected("wait", &other)),
        }
    }

    pub fn signal(&self, handle: u64, signal: i32) -> Result<(), AgentError> {
        self.call(&Request::Signal { handle, signal }).map(drop)
    }

    pub fn stdin_write(&self, handle: u64, data: &[u8]) -> Result<u64, AgentError> {
        self.count("stdin_write", &Request::StdinWrite { handle, data: data.to_vec() })
    }

    pub fn stdin_close(&self, handle: u64) -> Result<(), AgentError> {
        self.call(&Request::StdinClose { handle }).map(drop)
    }

    /// Forgets a process (killing it if it runs) or closes a file handle.
    pub fn release(&self, handle: u64) -> Result<(), AgentError> {
        self.call(&Request::Release { handle }).map(drop)
    }

    pub fn open_file(&self, path: &str, mode: OpenMode, perm: u32) -> Result<u64, AgentError> {
        match self.call(&Request::OpenFile { path: path.into(), mode, perm })? {
            Response::Handle(h) => Ok(h),
            other => Err(unexpected("open_file", &other)),
        }
    }

    /// Up to `max` bytes from a file handle ("" at EOF).
    pub fn read(&self, handle: u64, max: u64) -> Result<Vec<u8>, AgentError> {
        let (_, rx) = self.open(&Request::Read { handle, max })?;
        let mut data = Vec::new();
        self.finish(rx, Some(&mut data))?;
        Ok(data)
    }

    pub fn write(&self, handle: u64, data: &[u8]) -> Result<u64, AgentError> {
        self.count("write", &Request::Write { handle, data: data.to_vec() })
    }

    pub fn seek(&self, handle: u64, offset: i64, whence: Whence) -> Result<u64, AgentError> {
        self.count("seek", &Request::Seek { handle, offset, whence })
    }

    fn count(&self, op: &'static str, req: &Request) -> Result<u64, AgentError> {
        match self.call(req)? {
            Response::Count(n) => Ok(n),
            other => Err(unexpected(op, &other)),
        }
    }

    /// Waits in the guest until TCP `port` is listening (`open`) or not.
    pub fn wait_port(&self, port: u16, open: bool, timeout: Duration) -> Result<(), AgentError> {
        self.call(&Request::WaitPort { port, open, timeout_ms: millis(timeout) }).map(drop)
    }

    /// Waits in the guest until `path` exists (`exists`) or not.
    pub fn wait_path(&self, path: &str, exists: bool, timeout: Duration) -> Result<(), AgentError> {
        self.call(&Request::WaitPath { path: path.into(), exists, timeout_ms: millis(timeout) }).map(drop)
    }

    /// The guest's CLOCK_REALTIME in nanoseconds.
    pub fn get_time(&self) -> Result<i64, AgentError> {
        match self.call(&Request::GetTime)? {
            Response::Time(ns) => Ok(ns),
            other => Err(unexpected("get_time", &other)),
        }
    }

    pub fn set_time(&self, ns: i64) -> Result<(), AgentError> {
        self.call(&Request::SetTime { ns }).map(drop)
    }

    /// Configures the guest interface with Ethernet address `mac`: `up`
    /// with `address/prefix`, or down. Returns the guest's name for it.
    /// Adds (`present`) or removes the guest's default route via `gateway`.
    pub fn default_route(&self, gateway: &str, present: bool) -> Result<(), AgentError> {
        self.call(&Request::DefaultRoute { gateway: gateway.into(), present }).map(drop)
    }

    /// With `set_mac`, the interface takes that Ethernet address first.
    pub fn net_config(
        &self,
        mac: &str,
        set_mac: Option<&str>,
        up: bool,
        address: Option<(String, u8)>,
    ) -> Result<String, AgentError> {
        let (address, prefix) = address.map_or((None, 0), |(a, p)| (Some(a), p));
        let set_mac = set_mac.map(str::to_string);
        match self.call(&Request::NetConfig { mac: mac.into(), set_mac, up, address, prefix })? {
            Response::Interface(name) => Ok(name),
            other => Err(unexpected("net_config", &other)),
        }
    }

    /// Asks the agent to stop the work behind a channel.
    pub(super) fn cancel(&self, channel: u32) {
        let _ = self.send(channel, FrameKind::Cancel, &[]);
    }
}

/// Layer-0 requests: the kernel as the agent process sees it.
impl AgentClient {
    /// Makes a raw syscall in the agent; a failing syscall is an `Ok`
    /// outcome with `errno` set.
    pub fn syscall(&self, call: SyscallCall) -> Result<SyscallOutcome, AgentError> {
        self.syscall_async(call)?.wait()
    }

    /// Sends a syscall and returns at once; the agent makes it on a thread
    /// of its own, so it may block there while other requests go on.
    pub fn syscall_async(&self, call: SyscallCall) -> Result<PendingSyscall, AgentError> {
        let (channel, rx) = self.open(&Request::Syscall(call))?;
        Ok(PendingSyscall { client: self.clone(), channel, rx: Some(rx) })
    }

    /// Several ops in one round trip; one item per op, in order.
    pub fn batch(&self, ops: Vec<provium_protocol::BatchOp>) -> Result<Vec<provium_protocol::BatchItem>, AgentError> {
        let n = ops.len();
        match self.call(&Request::Batch { ops })? {
            Response::Batch(items) if items.len() == n => Ok(items),
            other => Err(unexpected("batch", &other)),
        }
    }

    /// `ioctl(2)` on the descriptor of an open file handle.
    pub fn ioctl(&self, call: IoctlCall) -> Result<IoctlOutcome, AgentError> {
        match self.call(&Request::Ioctl(call))? {
            Response::Ioctl(out) => Ok(out),
            other => Err(unexpected("ioctl", &other)),
        }
    }

    /// `len` bytes of the agent's own memory at `addr`.
    pub fn read_mem(&self, addr: u64, len: u32) -> Result<MemRead, AgentError> {
        match self.call(&Request::ReadMem { addr, len })? {
            Response::Memory(m) => Ok(m),
            other => Err(unexpected("read_mem", &other)),
        }
    }
}

/// Workers: second agent processes with credentials of their own. Requests
/// reach one through [`AgentClient::for_worker`]; these are the requests
/// only a worker takes, and the one that starts it.
impl AgentClient {
    /// Starts a worker; returns `(handle, pid)` once it serves.
    pub fn spawn_worker(&self, spec: WorkerSpec) -> Result<(u64, u32), AgentError> {
        match self.call(&Request::SpawnWorker(spec))? {
            Response::Worker { handle, pid } => Ok((handle, pid)),
            other => Err(unexpected("spawn_worker", &other)),
        }
    }

    /// Sends `signal` to every process the worker started that still runs;
    /// returns how many it reached (on a [`AgentClient::for_worker`] view).
    pub fn kill_all(&self, signal: i32) -> Result<u64, AgentError> {
        self.count("kill_all", &Request::KillAll { signal })
    }

    /// Waits for every process the worker started (SIGKILLing the rest
    /// after `timeout`); returns their worst status, shell-like.
    pub fn join(&self, timeout: Option<Duration>) -> Result<i32, AgentError> {
        match self.call(&Request::Join { timeout_ms: timeout.map(millis) })? {
            Response::Joined { status } => Ok(status),
            other => Err(unexpected("join", &other)),
        }
    }
}

/// A syscall sent by [`AgentClient::syscall_async`] whose reply has not
/// been read. Dropping it unread stops routing the reply (the syscall itself
/// still runs to its end in the guest).
pub struct PendingSyscall {
    client: AgentClient,
    channel: u32,
    rx: Option<Receiver<Incoming>>,
}

impl PendingSyscall {
    /// Waits for the reply.
    pub fn wait(mut self) -> Result<SyscallOutcome, AgentError> {
        let rx = self.rx.take().expect("a pending syscall is waited for once");
        match self.client.finish(rx, None)? {
            Response::Syscall(out) => Ok(out),
            other => Err(unexpected("syscall", &other)),
        }
    }
}

impl Drop for PendingSyscall {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.client.forget(self.channel);
        }
    }
}
