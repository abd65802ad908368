//! Workers, the main agent's side: starting a worker agent ([`spawn`]),
//! relaying requests to it ([`relay`]), and ending it ([`release`]). What a
//! worker does once it runs is [`crate::worker_mode`]'s.
//!
//! A worker is this same binary, started with credentials of its own and
//! one end of a socket pair; it speaks the host protocol on that socket.
//! Each `Request::Worker` the host sends is relayed on a channel of the
//! worker's link (numbered by the main agent: host channel ids are the
//! host's), and everything that flows on the host's channel flows on it:
//!
//! ```text
//! host                      main agent                              worker (uid 1000)
//!  | Request(9, Worker{3, Exec}) |  relay (pool thread)                    |
//!  |---------------------------->|-- Request(1, Exec) -------------------->|
//!  | Data(9) stdin               |                                        |
//!  |---------------------------->|-- Data(1) ---------------------------->|
//!  |                             |           <-- Data(1) output ---------|  reader thread:
//!  |<-------------- Data(9) -----|                                        |  forwards at once
//!  |                             |           <-- Reply(1) ---------------|  hands it to relay,
//!  |<------------- Reply(9) -----|                                        |  which answers
//! ```
//!
//! The worker's frames come back in order on one reader thread, so a
//! channel's `Data` always reaches the host before its `Reply`. When the
//! worker's process ends (it died, or was released) the reader sees EOF:
//! every request in flight, and every later one, fails with
//! `OpErrorKind::WorkerGone`, naming the worker and how it ended. A worker
//! lives on across host sessions (a new Hello, a snapshot restore) like any
//! other handle. Workers nest: a worker relays to workers of its own the
//! same way.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender as MpscSender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use provium_protocol::frame::{self, Decoder, Frame, FrameKind};
use provium_protocol::{
    decode_msg, encode_msg, ExitStatus, Hello, HelloOk, OpError, OpErrorKind, Reply, Request, Response, WorkerSpec,
    PROTOCOL_VERSION,
};

use crate::handles::{self, Handle};
use crate::reaper::{self, ExitSlot};
use crate::session::{Inbound, Inbox, Sender};
use crate::sys::{decode_status, os_error, poll_one};
use crate::worker_mode::{self, Creds};

/// How long a new worker may take to answer its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a released worker may take to end before it is SIGKILLed.
const RELEASE_GRACE: Duration = Duration::from_secs(2);
/// How long after its socket closed a worker's exit status may take.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// One relayed request: where its worker's frames go.
struct Route {
    op: &'static str,
    out: Sender,
    inbox: MpscSender<Inbound>,
}

#[derive(Default)]
struct State {
    /// The worker's handle (set once it is registered).
    id: u64,
    next_channel: u32,
    routes: HashMap<u32, Route>,
    /// How it ended, once it no longer serves.
    gone: Option<String>,
    released: bool,
}

/// A worker agent process and the main agent's end of its link.
pub struct Worker {
    pid: i32,
    /// `uid 1000 gid 1000`, for messages.
    creds: String,
    writer: Mutex<UnixStream>,
    /// A second handle on the link, to shut it down while a writer blocks.
    ctl: UnixStream,
    slot: Arc<ExitSlot>,
    state: Mutex<State>,
}

impl Worker {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn gone_error(&self, id: u64, why: &str, op: &str) -> OpError {
        OpError {
            kind: OpErrorKind::WorkerGone,
            errno: None,
            message: format!("worker {id} (pid {}, {}) {why} ({op} not carried out)", self.pid, self.creds),
        }
    }

    /// Registers a route for a request `op` and returns its channel on the
    /// link; fails if the worker no longer serves.
    fn open(&self, op: &'static str, out: Sender, inbox: MpscSender<Inbound>) -> Result<u32, OpError> {
        let mut st = self.state();
        if let Some(why) = &st.gone {
            return Err(self.gone_error(st.id, why, op));
        }
        st.next_channel = st.next_channel.wrapping_add(1).max(1);
        let channel = st.next_channel;
        st.routes.insert(channel, Route { op, out, inbox });
        Ok(channel)
    }

    fn send(&self, channel: u32, kind: FrameKind, body: &[u8]) -> std::io::Result<()> {
        self.writer.lock().unwrap().write_all(&frame::encode(channel, kind, body))
    }

    /// A frame from the worker: `Data` goes straight to the host, a `Reply`
    /// to the relay waiting for it.
    fn deliver(&self, f: Frame) {
        match f.kind {
            FrameKind::Data | FrameKind::DataEnd => {
                // Not under the lock: the host port may make us wait.
                let out = self.state().routes.get(&f.channel).map(|r| r.out.clone());
                if let Some(out) = out {
                    out.raw(f.kind, &f.body);
                }
            }
            FrameKind::Reply => {
                let Some(route) = self.state().routes.remove(&f.channel) else { return };
                let reply = decode_msg::<Reply>("worker reply", &f.body).unwrap_or_else(|e| {
                    Err(OpError {
                        kind: OpErrorKind::Internal,
                        errno: None,
                        message: format!("{}: {e}: {}", route.op, e.source),
                    })
                });
                let _ = route.inbox.send(Inbound::Relayed(reply));
            }
            _ => {}
        }
    }

    /// The worker no longer serves: every request in flight fails.
    fn ended(&self, why: String) {
        let mut st = self.state();
        let id = st.id;
        for (_, route) in st.routes.drain() {
            let _ = route.inbox.send(Inbound::Relayed(Err(self.gone_error(id, &why, route.op))));
        }
        st.gone = Some(why);
    }

    /// How the worker's process ended, as a phrase (`was killed by signal
    /// 9 (SIGKILL)`), waiting a little for its status.
    fn how_it_ended(&self) -> String {
        if self.state().released {
            return "was released".into();
        }
        match exit_within(&self.slot, EXIT_WAIT) {
            Some(raw) => describe_exit(raw),
            None => "closed its link to the main agent".into(),
        }
    }
}

/// The process's wait status once it is known, waiting up to `limit`.
fn exit_within(slot: &ExitSlot, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(raw) = slot.status() {
            return Some(raw);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        poll_one(slot.fd(), libc::POLLIN, left.as_millis().clamp(1, 100) as i32);
    }
}

fn describe_exit(raw: i32) -> String {
    match decode_status(raw) {
        ExitStatus::Exited(code) => format!("exited with status {code}"),
        ExitStatus::Signalled(sig) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGINT => " (SIGINT)",
                _ => "",
            };
            format!("was killed by signal {sig}{name}")
        }
        ExitStatus::TimedOut => "timed out".into(),
    }
}

fn creds_text(c: &Creds) -> String {
    // SAFETY: getuid(2) and getgid(2) take no arguments, touch no memory
    // and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    format!("uid {} gid {}", c.uid.unwrap_or(uid), c.gid.unwrap_or(gid))
}

/// Starts a worker with the credentials of `spec` and waits until it
/// serves.
pub fn spawn(spec: &WorkerSpec) -> Result<Response, OpError> {
    let creds = Creds { uid: spec.uid, gid: spec.gid, groups: spec.groups.clone() };
    let what = format!("worker ({})", creds_text(&creds));
    let exe = std::env::current_exe().map_err(|e| os_error(&format!("{what}: find the agent's binary"), e))?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| os_error(&format!("{what}: socketpair"), e))?;
    let mut cmd = Command::new(&exe);
    cmd.arg(worker_mode::ARG).args(creds.args());
    cmd.stdin(Stdio::from(OwnedFd::from(theirs))).stdout(Stdio::null());
    let (child, slot) = {
        let mut reg = reaper::lock();
        let child = cmd.spawn().map_err(|e| os_error(&what, e))?;
        let slot = reg.insert_uncounted(child.id() as i32);
        (child, slot)
    };
    // Our copy of the worker's end must go, or its EOF would never come.
    drop(cmd);
    let pid = child.id() as i32;
    let decoder = match handshake(&ours, &slot) {
        Ok(d) => d,
        Err(e) => {
            // SAFETY: kill(2) takes integers only; the worker is our child
            // and not yet reaped (its slot is registered), so the pid is
            // still its own.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(OpError { message: format!("{what}: {}", e.message), ..e });
        }
    };
    let clone = |s: &UnixStream| s.try_clone().map_err(|e| os_error(&format!("{what}: dup the link"), e));
    let (reader, ctl) = (clone(&ours)?, clone(&ours)?);
    let worker = Arc::new(Worker {
        pid,
        creds: creds_text(&creds),
        writer: Mutex::new(ours),
        ctl,
        slot,
        state: Mutex::default(),
    });
    let id = handles::insert(Handle::Worker(worker.clone()));
    worker.state().id = id;
    let w = worker.clone();
    std::thread::Builder::new()
        .name(format!("worker-{id}"))
        .spawn(move || read_loop(&w, reader, decoder))
        .map_err(|e| os_error(&format!("{what}: start its reader thread"), e))?;
    Ok(Response::Worker { handle: id, pid: pid as u32 })
}

/// Says Hello to a new worker and waits for its answer; returns the
/// decoder (with anything that came after the answer).
fn handshake(link: &UnixStream, slot: &ExitSlot) -> Result<Decoder, OpError> {
    let failed = |message: String| OpError { kind: OpErrorKind::Internal, errno: None, message };
    let io = |e: std::io::Error| os_error("talk to the new worker", e);
    let mut link = link;
    link.set_read_timeout(Some(HELLO_TIMEOUT)).map_err(io)?;
    // A worker that cannot take its credentials says so and exits without
    // reading: then this write fails, and its reason is still to be read.
    let hello = encode_msg(&Hello { protocol_version: PROTOCOL_VERSION });
    let sent = frame::write_frame(&mut link, 0, FrameKind::Hello, &hello);
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 4096];
    let answer = loop {
        match decoder.next_frame() {
            Ok(Some(f)) => break f,
            Ok(None) => {}
            Err(e) => return Err(failed(format!("the new worker sent a bad frame ({e})"))),
        }
        match link.read(&mut buf) {
            Ok(0) => {
                let how = exit_within(slot, EXIT_WAIT).map_or("closed its link".into(), describe_exit);
                return Err(match sent {
                    Err(e) if how == "closed its link" => io(e),
                    _ => failed(format!("the new worker {how} before it served")),
                });
            }
            Ok(n) => decoder.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(failed(format!("the new worker did not answer within {HELLO_TIMEOUT:?}")))
            }
            Err(e) => return Err(io(e)),
        }
    };
    link.set_read_timeout(None).map_err(io)?;
    match answer.kind {
        FrameKind::HelloOk if decode_msg::<HelloOk>("hello_ok", &answer.body).is_ok() => Ok(decoder),
        // The worker could not take its credentials: its reason.
        FrameKind::Reply => match decode_msg::<Reply>("worker refusal", &answer.body) {
            Ok(Err(e)) => Err(e),
            _ => Err(failed("the new worker answered with a malformed refusal".into())),
        },
        kind => Err(failed(format!("the new worker answered Hello with a {kind:?} frame"))),
    }
}

fn read_loop(w: &Worker, mut link: UnixStream, mut decoder: Decoder) {
    let mut buf = vec![0u8; 256 * 1024];
    let why = 'read: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => w.deliver(f),
                Ok(None) => break,
                Err(e) => {
                    // Out of sync: the worker is of no more use.
                    // SAFETY: kill(2) takes integers only; the worker is our
                    // unreaped child.
                    unsafe { libc::kill(w.pid, libc::SIGKILL) };
                    break 'read format!("sent a bad frame ({e}) and was killed");
                }
            }
        }
        match link.read(&mut buf) {
            Ok(0) => break w.how_it_ended(),
            Ok(n) => decoder.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break w.how_it_ended(),
        }
    };
    w.ended(why);
}

/// Relays `req` to worker `id` and answers what the worker answered.
pub fn relay(id: u64, req: Request, out: &Sender, inbox: Inbox) -> Reply {
    let w = handles::worker(id)?;
    let channel = w.open(req.name(), out.clone(), inbox.me)?;
    // A failed write means the worker is gone: its reader reports that.
    let _ = w.send(channel, FrameKind::Request, &encode_msg(&req));
    // Failed writes are left to the reader too.
    loop {
        let _ = match inbox.rx.recv() {
            Ok(Inbound::Relayed(reply)) => return reply,
            Ok(Inbound::Data(bytes)) => w.send(channel, FrameKind::Data, &bytes),
            Ok(Inbound::DataEnd) => w.send(channel, FrameKind::DataEnd, &[]),
            Ok(Inbound::Credit(n)) => w.send(channel, FrameKind::Credit, &n.to_le_bytes()),
            // Still wait: the worker answers a cancelled request too.
            Ok(Inbound::Cancel) => w.send(channel, FrameKind::Cancel, &[]),
            // Cannot happen: the route holds a sender until it answers.
            Err(_) => {
                return Err(OpError {
                    kind: OpErrorKind::Internal,
                    errno: None,
                    message: format!("worker {id}: the relay lost its channel"),
                })
            }
        };
    }
}

/// Ends a worker whose handle was released: closing its link makes it
/// SIGKILL what it started and exit; one that does not is SIGKILLed.
pub fn release(w: &Worker) {
    w.state().released = true;
    let _ = w.ctl.shutdown(std::net::Shutdown::Both);
    if exit_within(&w.slot, RELEASE_GRACE).is_none() {
        // SAFETY: kill(2) takes integers only; the worker is our child and
        // unreaped (no status yet), so the pid is still its own.
        unsafe { libc::kill(w.pid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_as_phrases() {
        assert_eq!(describe_exit(3 << 8), "exited with status 3");
        assert_eq!(describe_exit(libc::SIGKILL), "was killed by signal 9 (SIGKILL)");
        assert_eq!(describe_exit(libc::SIGUSR1), "was killed by signal 10");
    }
}
