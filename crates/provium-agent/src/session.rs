//! Serving the host over the port: the reader loop, channel routing, and the
//! shared writer.
//!
//! The reader thread decodes frames. A `Hello` starts a new session: it bumps
//! the *generation*, which silences every handler of the old session (their
//! late replies are dropped, so reused channel ids cannot get stale answers).
//! A `Request` that cannot block (`Ping`, `SetTime`, `GetTime`) is answered
//! on the reader thread; any other goes to a [`crate::pool`] worker (an idle
//! one if there is one, else a new thread) with an inbox for the channel's
//! `Data`/`DataEnd`/`Credit`/`Cancel` frames. Processes and files opened by
//! requests belong to [`crate::handles`], not to the session: they survive a
//! new `Hello`. When the host disconnects the port reads EOF; the agent drops
//! its partial frame, cancels the channels and waits for the host to come
//! back.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender as MpscSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use provium_protocol::frame::{self, Decoder, FrameKind};
use provium_protocol::{
    decode_msg, encode_msg, Hello, HelloErr, HelloOk, OpError, OpErrorKind, OutputPipe, Reply, Request, Response,
    PROTOCOL_VERSION,
};

use crate::sys::{poll_one, set_nonblocking, CancelFlag};
use crate::{batch, exec, files, fsops, handles, log, net, proc, stream, syscall, waits, worker_mode, workers};

pub struct AgentInfo {
    pub start_uptime_ms: u64,
    pub standalone: bool,
    /// The kernel release, read once (every Hello reports it).
    pub kernel: String,
}

/// What the reader routes to a channel's handler.
pub enum Inbound {
    Data(Vec<u8>),
    DataEnd,
    /// The host can take this many more bytes (streams).
    Credit(u32),
    Cancel,
    /// The worker this channel is relayed to answered ([`crate::workers`]
    /// only; never from the host).
    Relayed(Reply),
}

/// What the session runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The virtio-serial port: the host may close it and come back.
    Port,
    /// A worker's socket to the main agent: its end is the worker's end.
    Worker,
}

/// The port's write side, shared by all handlers.
struct Writer {
    port: Mutex<File>,
    generation: AtomicU64,
}

impl Writer {
    /// Writes one whole frame. The port is non-blocking: a write to a port
    /// whose host end is closed would otherwise block until the host comes
    /// back (holding the lock the next Hello's answer needs). On `POLLHUP`
    /// the frame is dropped, as is everything else of that session.
    fn send(&self, generation: u64, channel: u32, kind: FrameKind, body: &[u8]) {
        let port = self.port.lock().unwrap();
        let bytes = frame::encode(channel, kind, body);
        let mut done = 0;
        while done < bytes.len() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return; // the session this frame belongs to is gone
            }
            match (&*port).write(&bytes[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if poll_one(port.as_raw_fd(), libc::POLLOUT, 100) & libc::POLLHUP != 0 {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// A handler's way to answer on its channel.
#[derive(Clone)]
pub struct Sender {
    writer: Arc<Writer>,
    generation: u64,
    channel: u32,
    /// Inside a batch: bytes are kept here instead of sent.
    capture: Option<Arc<Mutex<Captured>>>,
}

/// What an op of a batch produced, up to a budget.
#[derive(Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes still allowed (all ops of the batch together).
    pub budget: usize,
    pub overflowed: bool,
}

impl Captured {
    fn keep(&mut self, pipe: OutputPipe, bytes: &[u8]) {
        if bytes.len() > self.budget {
            self.overflowed = true;
            return;
        }
        self.budget -= bytes.len();
        match pipe {
            OutputPipe::Stdout => self.stdout.extend_from_slice(bytes),
            OutputPipe::Stderr => self.stderr.extend_from_slice(bytes),
        }
    }
}

impl Sender {
    /// A sender on the same channel that keeps bytes in `capture`.
    pub fn capturing(&self, capture: Arc<Mutex<Captured>>) -> Sender {
        Sender {
            writer: self.writer.clone(),
            generation: self.generation,
            channel: self.channel,
            capture: Some(capture),
        }
    }

    pub fn data(&self, bytes: &[u8]) {
        if let Some(c) = &self.capture {
            c.lock().unwrap().keep(OutputPipe::Stdout, bytes);
            return;
        }
        for chunk in bytes.chunks(frame::CHUNK) {
            self.writer.send(self.generation, self.channel, FrameKind::Data, chunk);
        }
    }

    /// Bytes of a command's stdout or stderr, tagged with their pipe.
    pub fn output(&self, pipe: OutputPipe, bytes: &[u8]) {
        if let Some(c) = &self.capture {
            c.lock().unwrap().keep(pipe, bytes);
            return;
        }
        for chunk in bytes.chunks(frame::CHUNK) {
            let mut body = Vec::with_capacity(chunk.len() + 1);
            body.push(pipe as u8);
            body.extend_from_slice(chunk);
            self.writer.send(self.generation, self.channel, FrameKind::Data, &body);
        }
    }

    pub fn data_end(&self) {
        if self.capture.is_some() {
            return;
        }
        self.writer.send(self.generation, self.channel, FrameKind::DataEnd, &[]);
    }

    /// One frame as it is (a worker's `Data` or `DataEnd`, relayed).
    pub fn raw(&self, kind: FrameKind, body: &[u8]) {
        self.writer.send(self.generation, self.channel, kind, body);
    }

    fn reply(&self, reply: &Reply) {
        self.writer.send(self.generation, self.channel, FrameKind::Reply, &encode_msg(reply));
    }
}

struct Channel {
    inbox: MpscSender<Inbound>,
    cancel: CancelFlag,
}

type Channels = Arc<Mutex<HashMap<u32, Channel>>>;

/// Serves the host (or, for a worker, the main agent) over `port`. On the
/// [`Link::Port`] it never returns; on [`Link::Worker`] it returns when the
/// other end closes.
pub fn serve(mut port: File, info: &AgentInfo, link: Link) {
    // The flag belongs to the open file, so the writer's dup below shares it.
    set_nonblocking(port.as_raw_fd());
    let writer =
        Arc::new(Writer { port: Mutex::new(port.try_clone().expect("dup port fd")), generation: AtomicU64::new(0) });
    let channels: Channels = Arc::default();
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        poll_one(port.as_raw_fd(), libc::POLLIN, 1000);
        let n = match port.read(&mut buf) {
            Ok(0) => {
                // Host side closed: forget the partial frame and the channels.
                decoder.reset();
                cancel_all(&channels);
                if link == Link::Worker {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted || e.kind() == std::io::ErrorKind::WouldBlock => {
                continue
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        decoder.feed(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => dispatch(f, &writer, &channels, info),
                Ok(None) => break,
                Err(e) => {
                    log::warn(&format!("bad frame from host ({e}); waiting for a new Hello"));
                    decoder.reset();
                    cancel_all(&channels);
                    if link == Link::Worker {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

fn cancel_all(channels: &Channels) {
    for (_, ch) in channels.lock().unwrap().drain() {
        ch.cancel.store(true, Ordering::SeqCst);
        let _ = ch.inbox.send(Inbound::Cancel);
    }
}

fn dispatch(f: frame::Frame, writer: &Arc<Writer>, channels: &Channels, info: &AgentInfo) {
    match f.kind {
        FrameKind::Hello => hello(&f.body, writer, channels, info),
        FrameKind::Request => {
            let generation = writer.generation.load(Ordering::SeqCst);
            let out = Sender { writer: writer.clone(), generation, channel: f.channel, capture: None };
            let req: Request = match decode_msg("request", &f.body) {
                Ok(r) => r,
                Err(e) => {
                    // One line for the host: the message and its cause.
                    let message = format!("{e}: {}", e.source);
                    let err = OpError { kind: OpErrorKind::BadRequest, errno: None, message };
                    out.reply(&Err(err));
                    return;
                }
            };
            // Requests that cannot block are answered here, in order, without
            // a thread: cheaper, and a clock set before a command is in
            // effect when the command runs.
            if let Some(reply) = instant(&req) {
                out.reply(&reply);
                return;
            }
            let (tx, rx) = channel();
            let cancel: CancelFlag = Arc::new(AtomicBool::new(false));
            channels.lock().unwrap().insert(f.channel, Channel { inbox: tx.clone(), cancel: cancel.clone() });
            let channels = channels.clone();
            crate::pool::run(move || {
                let name = req.name();
                let inbox = Inbox { rx, me: tx };
                let reply =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(req, &out, inbox, &cancel)))
                        .unwrap_or_else(|_| {
                            Err(OpError {
                                kind: OpErrorKind::Internal,
                                errno: None,
                                message: format!("{name}: agent handler panicked"),
                            })
                        });
                let finish: crate::pool::Finish = Box::new(move || {
                    channels.lock().unwrap().remove(&out.channel);
                    out.reply(&reply);
                });
                finish
            });
        }
        FrameKind::Data | FrameKind::DataEnd | FrameKind::Credit | FrameKind::Cancel => {
            let chans = channels.lock().unwrap();
            if let Some(ch) = chans.get(&f.channel) {
                let msg = match f.kind {
                    FrameKind::Data => Inbound::Data(f.body),
                    FrameKind::DataEnd => Inbound::DataEnd,
                    FrameKind::Credit => match <[u8; 4]>::try_from(f.body.as_slice()) {
                        Ok(n) => Inbound::Credit(u32::from_le_bytes(n)),
                        Err(_) => {
                            log::warn(&format!(
                                "credit frame on channel {} with a {}-byte body",
                                f.channel,
                                f.body.len()
                            ));
                            return;
                        }
                    },
                    _ => {
                        ch.cancel.store(true, Ordering::SeqCst);
                        Inbound::Cancel
                    }
                };
                let _ = ch.inbox.send(msg);
            }
        }
        // Agent-bound kinds only.
        _ => {}
    }
}

fn hello(body: &[u8], writer: &Arc<Writer>, channels: &Channels, info: &AgentInfo) {
    cancel_all(channels);
    let generation = writer.generation.fetch_add(1, Ordering::SeqCst) + 1;
    let host_version = decode_msg::<Hello>("hello", body).map(|h| h.protocol_version).unwrap_or(0);
    if host_version != PROTOCOL_VERSION {
        let err = HelloErr { host_version, agent_version: PROTOCOL_VERSION };
        writer.send(generation, 0, FrameKind::HelloErr, &encode_msg(&err));
        return;
    }
    let ok = HelloOk {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: info.kernel.clone(),
        agent_start_uptime_ms: info.start_uptime_ms,
        standalone: info.standalone,
    };
    writer.send(generation, 0, FrameKind::HelloOk, &encode_msg(&ok));
}

/// The answer to a request that never blocks, or `None` for the others.
fn instant(req: &Request) -> Option<Reply> {
    match req {
        Request::Ping => Some(Ok(Response::Done)),
        Request::SetTime { ns } => Some(waits::set_time(*ns)),
        Request::GetTime => Some(waits::get_time()),
        _ => None,
    }
}

/// A channel's inbound frames, and a way to add to them (a relayed
/// request's answer arrives there too).
pub struct Inbox {
    pub rx: Receiver<Inbound>,
    pub me: MpscSender<Inbound>,
}

fn handle(req: Request, out: &Sender, inbox: Inbox, cancel: &CancelFlag) -> Reply {
    if let Some(refusal) = crate::worker_mode::refusal(&req) {
        return Err(refusal);
    }
    let Inbox { rx: inbox, me } = inbox;
    match req {
        Request::Ping | Request::SetTime { .. } | Request::GetTime => instant(&req).expect("instant requests"),
        Request::Exec(e) => exec::run(e, out, inbox, cancel).map(Response::Exec),
        Request::ReadFile { path } => fsops::read_file(&path, out),
        Request::WriteFile { path, perm, append } => fsops::write_file(&path, perm, append, &inbox),
        Request::Stat { path, follow_symlinks } => fsops::stat(&path, follow_symlinks),
        Request::ListDir { path } => fsops::listdir(&path),
        Request::Mkdir { path, parents, perm } => fsops::mkdir(&path, parents, perm),
        Request::Unlink { path } => fsops::unlink(&path),
        Request::Rename { from, to } => fsops::rename(&from, &to),
        Request::Spawn(e) => proc::spawn(e),
        Request::Wait { handle, timeout_ms, kill_on_timeout } => {
            proc::wait(handle, timeout_ms, kill_on_timeout, cancel)
        }
        Request::Signal { handle, signal } => proc::signal(handle, signal),
        Request::StdinWrite { handle, data } => proc::stdin_write(handle, &data, cancel),
        Request::StdinClose { handle } => proc::stdin_close(handle),
        Request::Release { handle } => release(handle),
        Request::OpenFile { path, mode, perm } => files::open(&path, mode, perm),
        Request::Read { handle, max } => files::read(handle, max, out),
        Request::Write { handle, data } => files::write(handle, &data),
        Request::Seek { handle, offset, whence } => files::seek(handle, offset, whence),
        Request::Stream { source, window } => stream::run(source, window, out, &inbox, cancel),
        Request::WaitPort { port, open, timeout_ms } => waits::wait_port(port, open, timeout_ms, cancel),
        Request::WaitPath { path, exists, timeout_ms } => waits::wait_path(&path, exists, timeout_ms, cancel),
        Request::NetConfig { mac, set_mac, up, address, prefix } => {
            net::configure(&mac, set_mac.as_deref(), up, address.as_deref(), prefix)
        }
        Request::DefaultRoute { gateway, present } => net::default_route(&gateway, present),
        Request::Syscall(call) => syscall::syscall(call),
        Request::Ioctl(call) => syscall::ioctl(call),
        Request::ReadMem { addr, len } => syscall::read_mem(addr, len),
        Request::Batch { ops } => Ok(batch::run(ops, out, cancel)),
        Request::SpawnWorker(spec) => workers::spawn(&spec),
        Request::Worker { worker, request } => workers::relay(worker, *request, out, Inbox { rx: inbox, me }),
        Request::KillAll { signal } => Ok(worker_mode::kill_all(signal)),
        Request::Join { timeout_ms } => worker_mode::join(timeout_ms, cancel),
    }
}

/// Forgets a handle: a process's group is SIGKILLed if it still runs; a
/// file is closed once no stream reads it any more; a worker is told to
/// end (and killed if it does not).
fn release(handle: u64) -> Reply {
    match handles::remove(handle)? {
        handles::Handle::Proc(p) => proc::release(&p),
        handles::Handle::File(_) => {}
        handles::Handle::Worker(w) => workers::release(&w),
    }
    Ok(Response::Done)
}
