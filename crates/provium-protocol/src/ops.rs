//! Requests the host makes and the replies the agent gives.
//!
//! A request opens a channel; the agent answers with exactly one [`Reply`]
//! on it. Bulk bytes never ride inside these messages when they can be large:
//!
//! ```text
//! host                                   agent
//!  | Request(ch=5, ReadFile)               |
//!  |-------------------------------------->|
//!  |                  Data(ch=5, 256 KiB)  |   zero or more
//!  |<--------------------------------------|
//!  |                  Reply(ch=5, Ok(Done))|   channel 5 closed
//!  |<--------------------------------------|
//!
//!  | Request(ch=6, WriteFile)              |
//!  | Data(ch=6) ... DataEnd(ch=6)          |   file contents
//!  |-------------------------------------->|
//!  |              Reply(ch=6, Ok(Done))    |
//!  |<--------------------------------------|
//! ```
//!
//! A [`Request::Worker`] is the same exchange with a *worker* agent (a
//! second agent process with credentials of its own): the main agent relays
//! the channel's frames both ways, so the host sees no difference but who
//! carried the request out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::layer0::{IoctlCall, IoctlOutcome, MemRead, SyscallCall, SyscallOutcome};

/// What to run for [`Request::Exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// `argv[0]` is resolved through `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Variables set on top of the agent's environment (or of an empty one
    /// with `env_clear`).
    pub env: BTreeMap<String, String>,
    pub env_clear: bool,
    pub cwd: Option<String>,
    /// When set, stdin arrives as `Data` frames on the channel, ended by
    /// `DataEnd` (any size); otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// Kill the whole process group after this long.
    pub timeout_ms: Option<u64>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ExitStatus {
    Exited(i32),
    Signalled(i32),
    TimedOut,
}

/// The result of a command that ran (whatever its exit status), as the
/// host assembles it: the status from [`Response::Exec`], the bytes from the
/// [`OutputPipe`]-tagged `Data` frames that came before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Which pipe a `Data` frame of an `Exec` (agent → host) comes from: its
/// body's first byte is this value, the rest is the pipe's bytes. Output is
/// never held back by the agent, so a command's output of any size arrives
/// whole; the host decides how much it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OutputPipe {
    Stdout = 1,
    Stderr = 2,
}

impl OutputPipe {
    /// The tag byte and the bytes of a tagged `Data` body.
    pub fn split(body: &[u8]) -> Option<(OutputPipe, &[u8])> {
        match body.split_first()? {
            (1, rest) => Some((OutputPipe::Stdout, rest)),
            (2, rest) => Some((OutputPipe::Stderr, rest)),
            _ => None,
        }
    }
}

/// How much of a spawned process's output the agent retains for streams
/// opened after the fact (stdout + stderr); the host collects the rest as
/// it comes.
pub const AGENT_RETAIN: usize = 12 * 1024 * 1024;

/// Type of a directory entry, as `stat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    BlockDevice,
    CharDevice,
    Other,
}

impl EntryType {
    /// The type of a file as the local file system reports it (the agent's
    /// `stat`, the host's side of a copy).
    pub fn of(ft: std::fs::FileType) -> EntryType {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_file() {
            EntryType::File
        } else if ft.is_dir() {
            EntryType::Directory
        } else if ft.is_symlink() {
            EntryType::Symlink
        } else if ft.is_fifo() {
            EntryType::Fifo
        } else if ft.is_socket() {
            EntryType::Socket
        } else if ft.is_block_device() {
            EntryType::BlockDevice
        } else if ft.is_char_device() {
            EntryType::CharDevice
        } else {
            EntryType::Other
        }
    }

    /// The snake_case name users see in Lua.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::File => "file",
            EntryType::Directory => "directory",
            EntryType::Symlink => "symlink",
            EntryType::Fifo => "fifo",
            EntryType::Socket => "socket",
            EntryType::BlockDevice => "block_device",
            EntryType::CharDevice => "char_device",
            EntryType::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub size: u64,
    pub mtime_ns: i64,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u32,
    pub entry_type: EntryType,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub entry_type: EntryType,
}

/// Where a stream of a file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum TailStart {
    Beginning,
    End,
    /// This many bytes into the file.
    Offset(u64),
    /// This many bytes before the current end (clamped at 0).
    FromEnd(u64),
}

/// What a [`Request::Stream`] follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreamSource {
    /// A file, followed as it grows (inotify), until the host cancels.
    File { path: String, start: TailStart },
    /// A spawned process's stdout from its first byte; ends after it exits.
    Stdout { handle: u64 },
    /// Likewise for stderr.
    Stderr { handle: u64 },
    /// An open file handle from its current offset to EOF.
    Fd { handle: u64 },
}

/// How to open a file with [`Request::OpenFile`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenMode {
    pub read: bool,
    pub write: bool,
    pub create: bool,
    pub truncate: bool,
    pub append: bool,
    pub exclusive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Whence {
    Set,
    Cur,
    End,
}

/// A spawned process as the agent sees it now. Its output is read with
/// [`StreamSource::Stdout`] / [`StreamSource::Stderr`] streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcState {
    pub pid: u32,
    /// `None` while it runs.
    pub status: Option<ExitStatus>,
}

/// Who a worker agent runs as ([`Request::SpawnWorker`]). `None` keeps the
/// main agent's (root's) value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Supplementary groups. `None`: none at all once `uid` or `gid` is
    /// set (root's are never kept by accident), else the agent's.
    pub groups: Option<Vec<u32>>,
}

/// Every operation the host can ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum Request {
    /// Round-trip check; answered with [`Response::Done`].
    Ping,
    /// Run a command to completion (stdin as `Data` frames when
    /// [`ExecRequest::stdin`]). stdout and stderr come back as they are
    /// written, in [`OutputPipe`]-tagged `Data` frames; then
    /// [`Response::Exec`].
    Exec(ExecRequest),
    /// File contents follow as `Data` frames, then [`Response::Done`].
    ReadFile {
        path: String,
    },
    /// The host sends the contents as `Data` frames and a `DataEnd`.
    /// Replaces the file (or appends); created with `perm` if new.
    WriteFile {
        path: String,
        perm: u32,
        append: bool,
    },
    Stat {
        path: String,
        follow_symlinks: bool,
    },
    ListDir {
        path: String,
    },
    Mkdir {
        path: String,
        parents: bool,
        perm: u32,
    },
    /// Removes a file or an empty directory.
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    /// Start a process and return at once ([`Response::Spawned`]). With
    /// `stdin` set its stdin pipe stays open for [`Request::StdinWrite`].
    /// The agent keeps its output until [`Request::Release`].
    Spawn(ExecRequest),
    /// Wait until the process exits or `timeout_ms` passes, then answer its
    /// [`ProcState`]. With `kill_on_timeout` the process group is SIGKILLed
    /// at the timeout and the status is `TimedOut`; without, a still-running
    /// process is answered as running. `timeout_ms: Some(0)` polls.
    Wait {
        handle: u64,
        timeout_ms: Option<u64>,
        kill_on_timeout: bool,
    },
    /// Sends `signal` to the process's group.
    Signal {
        handle: u64,
        signal: i32,
    },
    StdinWrite {
        handle: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    StdinClose {
        handle: u64,
    },
    /// Forgets a process (SIGKILLing its group if it still runs) or closes a
    /// file handle.
    Release {
        handle: u64,
    },
    OpenFile {
        path: String,
        mode: OpenMode,
        perm: u32,
    },
    /// Up to `max` bytes from the handle's offset, as `Data` frames.
    Read {
        handle: u64,
        max: u64,
    },
    Write {
        handle: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Seek {
        handle: u64,
        offset: i64,
        whence: Whence,
    },
    /// `Data` frames as bytes appear, at most `window` bytes ahead of the
    /// host's `Credit`; ends with `DataEnd` and a reply, or when the host
    /// sends `Cancel`.
    Stream {
        source: StreamSource,
        window: u32,
    },
    /// Returns once something listens on TCP `port` (or nothing does, with
    /// `open: false`); fails with `TimedOut` after `timeout_ms`.
    WaitPort {
        port: u16,
        open: bool,
        timeout_ms: u64,
    },
    /// Returns once `path` exists (or does not, with `exists: false`).
    WaitPath {
        path: String,
        exists: bool,
        timeout_ms: u64,
    },
    /// Sets CLOCK_REALTIME.
    SetTime {
        ns: i64,
    },
    /// Reads CLOCK_REALTIME ([`Response::Time`]).
    GetTime,
    /// Configures the interface whose permanent Ethernet address (the
    /// device's, as QEMU was told) is `mac` (`52:54:00:…`): first gives it
    /// the address `set_mac` if set; with `up`, gives it `address` (IPv4,
    /// with the subnet route of `prefix`) and brings it up; without, brings
    /// it down. Answered with [`Response::Interface`].
    NetConfig {
        mac: String,
        set_mac: Option<String>,
        up: bool,
        address: Option<String>,
        prefix: u8,
    },
    /// Adds (`present`) or removes the default IPv4 route via `gateway`.
    DefaultRoute {
        gateway: String,
        present: bool,
    },
    /// A raw syscall in the agent process ([`crate::layer0`]); answered
    /// with [`Response::Syscall`], whatever the syscall returned.
    Syscall(SyscallCall),
    /// `ioctl(2)` on an open file handle; answered with [`Response::Ioctl`].
    Ioctl(IoctlCall),
    /// Reads `len` bytes (at most [`crate::MAX_LAYER0_BYTES`]) of the
    /// agent's own memory at `addr` (`/proc/self/mem`); answered with
    /// [`Response::Memory`].
    ReadMem {
        addr: u64,
        len: u32,
    },
    /// Several ops in one round trip ([`crate::batch`]); answered with
    /// [`Response::Batch`].
    Batch {
        ops: Vec<crate::batch::BatchOp>,
    },
    /// Starts a *worker*: a second agent process in the guest, with the
    /// credentials of `WorkerSpec`, that serves requests sent to it with
    /// [`Request::Worker`]. Answered with [`Response::Worker`] once it
    /// serves. It lives until [`Request::Release`] of its handle.
    SpawnWorker(WorkerSpec),
    /// `request` carried out by worker `worker` instead of the main agent.
    /// The channel is relayed whole: `Data`, `DataEnd`, `Credit` and
    /// `Cancel` go through to the worker, its `Data` and its `Reply` come
    /// back, so any request (an `Exec` with its output, a `Stream`, a
    /// `Syscall`) works as it does on the main agent. Handles it returns
    /// belong to the worker. A worker whose process died answers
    /// [`OpErrorKind::WorkerGone`]. A worker may start workers of its own
    /// (they nest).
    Worker {
        worker: u64,
        request: Box<Request>,
    },
    /// Only inside [`Request::Worker`]: sends `signal` to the process group
    /// of every process the worker started that still runs;
    /// [`Response::Count`] of them.
    KillAll {
        signal: i32,
    },
    /// Only inside [`Request::Worker`]: waits until every process the
    /// worker started has exited (after `timeout_ms`, SIGKILLs the groups of
    /// those still running), then answers [`Response::Joined`]. The worker
    /// starts nothing new afterwards.
    Join {
        timeout_ms: Option<u64>,
    },
}

impl Request {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Exec(_) => "exec",
            Request::ReadFile { .. } => "read_file",
            Request::WriteFile { .. } => "write_file",
            Request::Stat { .. } => "stat",
            Request::ListDir { .. } => "listdir",
            Request::Mkdir { .. } => "mkdir",
            Request::Unlink { .. } => "unlink",
            Request::Rename { .. } => "rename",
            Request::Spawn(_) => "spawn",
            Request::Wait { .. } => "wait",
            Request::Signal { .. } => "signal",
            Request::StdinWrite { .. } => "stdin_write",
            Request::StdinClose { .. } => "stdin_close",
            Request::Release { .. } => "release",
            Request::OpenFile { .. } => "open_file",
            Request::Read { .. } => "read",
            Request::Write { .. } => "write",
            Request::Seek { .. } => "seek",
            Request::Stream { .. } => "stream",
            Request::WaitPort { .. } => "wait_port",
            Request::WaitPath { .. } => "wait_path",
            Request::SetTime { .. } => "set_time",
            Request::GetTime => "get_time",
            Request::NetConfig { .. } => "net_config",
            Request::DefaultRoute { .. } => "default_route",
            Request::Syscall(_) => "syscall",
            Request::Ioctl(_) => "ioctl",
            Request::ReadMem { .. } => "read_mem",
            Request::Batch { .. } => "batch",
            Request::SpawnWorker(_) => "spawn_worker",
            Request::Worker { .. } => "worker",
            Request::KillAll { .. } => "kill_all",
            Request::Join { .. } => "join",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Response {
    Done,
    /// How the command ended; its output came before, as tagged `Data`.
    Exec(ExitStatus),
    Stat(Metadata),
    ListDir(Vec<DirEntry>),
    Spawned {
        handle: u64,
        pid: u32,
    },
    Proc(ProcState),
    /// A new file handle.
    Handle(u64),
    /// Bytes written, or the new offset after a seek.
    Count(u64),
    /// CLOCK_REALTIME in nanoseconds.
    Time(i64),
    /// The guest's name for an interface (`eth0`).
    Interface(String),
    Syscall(SyscallOutcome),
    Ioctl(IoctlOutcome),
    Memory(MemRead),
    /// One item per op of a [`Request::Batch`], in order.
    Batch(Vec<crate::batch::BatchItem>),
    /// A worker that serves ([`Request::SpawnWorker`]).
    Worker {
        handle: u64,
        pid: u32,
    },
    /// The worst exit status of the processes a worker started
    /// ([`Request::Join`]), shell-like (`128 + n` for signal `n`); 0 if it
    /// started none.
    Joined {
        status: i32,
    },
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpError {
    pub kind: OpErrorKind,
    /// `errno` for [`OpErrorKind::Os`].
    pub errno: Option<i32>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpErrorKind {
    /// The guest OS refused (`ENOENT`, `EACCES`, …).
    Os,
    /// The request was malformed or not understood.
    BadRequest,
    /// The host cancelled the channel.
    Cancelled,
    /// The agent itself failed.
    Internal,
    /// A wait ran out of time.
    TimedOut,
    /// No process or file has that handle (released, or from an earlier
    /// session).
    UnknownHandle,
    /// The worker a [`Request::Worker`] names no longer serves: its process
    /// died or exited. The message says which worker and how it ended.
    WorkerGone,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The message already carries the OS's words for errno.
        f.write_str(&self.message)
    }
}

impl std::error::Error for OpError {}

/// The body of a `Reply` frame.
pub type Reply = Result<Response, OpError>;
