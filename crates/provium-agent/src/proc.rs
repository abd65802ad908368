//! Spawned processes: `Spawn`, `Wait`, `Signal`, `StdinWrite`/`StdinClose`,
//! `Release`, and the output record that `Stream` reads.
//!
//! A process is started like [`crate::exec`] starts one (same `PATH`
//! resolution, own process group, registered with the reaper under its lock)
//! but the request returns at once. A *pump* thread per process polls the
//! stdout/stderr pipes and the reaper's [`ExitSlot`] and appends what it
//! reads to the [`Output`] record (a mutex and a condvar that `Wait` and the
//! streams sleep on):
//!
//! ```text
//!  pipes ─► pump ─┬─► retained[stdout|stderr]  (≤ MAX_CAPTURE together; then retention stops)
//!                 └─► per-subscriber queues    (only bytes that retention dropped)
//! ```
//!
//! Retention: the two streams together keep at most [`MAX_CAPTURE`] bytes
//! (the whole of a `ProcState` must fit in one frame); later output is not
//! retained, so `Wait` shows the first 12 MiB. A subscriber reads the
//! retained bytes from the first byte, then its own queue. A stream opened
//! after retention stopped misses what was written between that point and
//! its subscription.
//!
//! Backpressure: when any subscriber's queue holds more than [`BACKLOG`]
//! bytes the pump stops reading the pipes until it drains, so a slow host
//! slows the process down rather than losing bytes or growing memory.
//!
//! Exit: once the reaper reports the exit, the pump takes what the pipes
//! already hold (bounded, ignoring backpressure: at most [`DRAIN_MAX`] per
//! pipe), then publishes the status. So `status` set means "exited and all
//! output recorded"; that is also the subscribers' end of data.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{ChildStdin, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use provium_protocol::{ExecRequest, ExitStatus, OpError, OpErrorKind, ProcState, Response, MAX_CAPTURE};

use crate::exec::{decode_status, kill_group, os_error, set_nonblocking, CancelFlag};
use crate::handles::{self, Handle};
use crate::reaper::{self, ExitSlot};
use crate::stream::Chunk;

/// Queued (not retained) bytes a subscriber may have before the pump stops.
pub const BACKLOG: usize = 4 * 1024 * 1024;
/// What the pump still reads from one pipe after the process exited.
const DRAIN_MAX: usize = 1024 * 1024;
const READ_BUF: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Stdout = 0,
    Stderr = 1,
}

pub struct Proc {
    pid: i32,
    stdin: Mutex<Option<ChildStdin>>,
    out: Mutex<Output>,
    changed: Condvar,
}

#[derive(Default)]
struct Output {
    /// Set once the process exited and its output was drained.
    status: Option<ExitStatus>,
    /// Killed by a timeout: the status will be `TimedOut`.
    timed_out: bool,
    retained: [Vec<u8>; 2],
    subs: Vec<Sub>,
    next_sub: u64,
}

struct Sub {
    id: u64,
    pipe: Pipe,
    /// Next byte of `retained[pipe]` to hand out.
    pos: usize,
    queue: VecDeque<Vec<u8>>,
    queued: usize,
}

impl Output {
    fn append(&mut self, pipe: Pipe, bytes: &[u8]) {
        let room = MAX_CAPTURE.saturating_sub(self.retained[0].len() + self.retained[1].len());
        let keep = bytes.len().min(room);
        self.retained[pipe as usize].extend_from_slice(&bytes[..keep]);
        if keep < bytes.len() {
            for s in self.subs.iter_mut().filter(|s| s.pipe == pipe) {
                s.queue.push_back(bytes[keep..].to_vec());
                s.queued += bytes.len() - keep;
            }
        }
    }

    fn backlogged(&self) -> bool {
        self.subs.iter().any(|s| s.queued > BACKLOG)
    }

    /// Up to `max` bytes for subscriber `id`: retained first, then queued.
    fn take(&mut self, id: u64, max: usize) -> Option<Vec<u8>> {
        let Output { retained, subs, .. } = self;
        let s = subs.iter_mut().find(|s| s.id == id)?;
        let kept = &retained[s.pipe as usize];
        if s.pos < kept.len() {
            let n = (kept.len() - s.pos).min(max);
            s.pos += n;
            return Some(kept[s.pos - n..s.pos].to_vec());
        }
        let front = s.queue.front_mut()?;
        let bytes = if front.len() <= max { s.queue.pop_front().unwrap() } else { front.drain(..max).collect() };
        s.queued -= bytes.len();
        Some(bytes)
    }
}

impl Proc {
    fn lock(&self) -> MutexGuard<'_, Output> {
        self.out.lock().unwrap()
    }

    fn state(&self, o: &Output) -> ProcState {
        ProcState {
            pid: self.pid as u32,
            status: o.status,
            stdout: o.retained[0].clone(),
            stderr: o.retained[1].clone(),
        }
    }

    /// Starts reading one of the pipes from its first byte.
    pub fn subscribe(self: &Arc<Proc>, pipe: Pipe) -> Subscription {
        let mut o = self.lock();
        let id = o.next_sub;
        o.next_sub += 1;
        o.subs.push(Sub { id, pipe, pos: 0, queue: VecDeque::new(), queued: 0 });
        Subscription { proc: self.clone(), id }
    }
}

/// One stream's read position in a process's output; unsubscribes on drop.
pub struct Subscription {
    proc: Arc<Proc>,
    id: u64,
}

impl Subscription {
    /// Up to `max` bytes, waiting at most `idle` for some; [`Chunk::End`]
    /// once the process exited and everything was handed out.
    pub fn next(&mut self, max: usize, idle: Duration) -> Chunk {
        let mut o = self.proc.lock();
        let mut waited = false;
        loop {
            if let Some(bytes) = o.take(self.id, max) {
                self.proc.changed.notify_all(); // the pump may wait for a drain
                return Chunk::Data(bytes);
            }
            if o.status.is_some() {
                return Chunk::End;
            }
            if waited {
                return Chunk::Idle;
            }
            o = self.proc.changed.wait_timeout(o, idle).unwrap().0;
            waited = true;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.proc.lock().subs.retain(|s| s.id != self.id);
        self.proc.changed.notify_all();
    }
}

fn bad(message: String) -> OpError {
    OpError { kind: OpErrorKind::BadRequest, errno: None, message }
}

fn cancelled(message: String) -> OpError {
    OpError { kind: OpErrorKind::Cancelled, errno: None, message }
}

pub fn spawn(req: ExecRequest) -> Result<Response, OpError> {
    let Some(prog) = req.argv.first().cloned() else {
        return Err(bad("spawn: empty argv".into()));
    };
    let mut cmd = crate::exec::command(&req).map_err(|u| OpError {
        kind: OpErrorKind::Os,
        errno: Some(if u.code == 126 { libc::EACCES } else { libc::ENOENT }),
        message: format!("spawn: {}", u.message),
    })?;
    cmd.stdin(if req.stdin { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());

    let mut reg = reaper::lock();
    let mut child = cmd.spawn().map_err(|e| os_error(&format!("spawn `{prog}`"), e))?;
    let pid = child.id() as i32;
    let slot = reg.insert(pid);
    drop(reg);

    if let Some(pipe) = &child.stdin {
        set_nonblocking(pipe.as_raw_fd());
    }
    let proc = Arc::new(Proc {
        pid,
        stdin: Mutex::new(child.stdin.take()),
        out: Mutex::new(Output::default()),
        changed: Condvar::new(),
    });
    let pipes = [child.stdout.take().map(|p| File::from(OwnedFd::from(p))), child.stderr.take().map(|p| File::from(OwnedFd::from(p)))];
    let deadline = req.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let p = proc.clone();
    std::thread::Builder::new()
        .name(format!("pump-{pid}"))
        .spawn(move || pump(&p, &slot, pipes, deadline))
        .map_err(|e| os_error("spawn: start the output thread", e))?;
    let handle = handles::insert(Handle::Proc(proc));
    Ok(Response::Spawned { handle, pid: pid as u32 })
}

/// The per-process thread: pipes → [`Output`] until the exit is recorded.
fn pump(proc: &Proc, slot: &ExitSlot, mut pipes: [Option<File>; 2], deadline: Option<Instant>) {
    for p in pipes.iter().flatten() {
        set_nonblocking(p.as_raw_fd());
    }
    let mut buf = vec![0u8; READ_BUF];
    loop {
        if let Some(raw) = slot.status() {
            for (i, pipe) in pipes.iter_mut().enumerate() {
                let which = if i == 0 { Pipe::Stdout } else { Pipe::Stderr };
                let mut budget = DRAIN_MAX;
                while budget > 0 && read_once(proc, pipe, which, &mut buf) {
                    budget = budget.saturating_sub(READ_BUF);
                }
            }
            let mut o = proc.lock();
            o.status = Some(if o.timed_out { ExitStatus::TimedOut } else { decode_status(raw) });
            proc.changed.notify_all();
            return;
        }
        let mut wait_ms = 1000i32;
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                let mut o = proc.lock();
                if !o.timed_out {
                    o.timed_out = true;
                    kill_group(proc.pid);
                }
            } else {
                wait_ms = wait_ms.min(d.duration_since(now).as_millis() as i32 + 1);
            }
        }
        {
            let o = proc.lock();
            if o.backlogged() {
                // Woken by a subscriber taking bytes; the timeout re-checks the exit.
                let _unused = proc.changed.wait_timeout(o, Duration::from_millis(50)).unwrap();
                continue;
            }
        }
        let mut fds = vec![libc::pollfd { fd: slot.fd(), events: libc::POLLIN, revents: 0 }];
        let open: Vec<usize> = (0..2).filter(|&i| pipes[i].is_some()).collect();
        for &i in &open {
            fds.push(libc::pollfd { fd: pipes[i].as_ref().unwrap().as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n <= 0 {
            continue;
        }
        for (pfd, &i) in fds[1..].iter().zip(&open) {
            if pfd.revents != 0 {
                read_once(proc, &mut pipes[i], if i == 0 { Pipe::Stdout } else { Pipe::Stderr }, &mut buf);
            }
        }
    }
}

/// One read from a pipe into the record; false when nothing more is there
/// now (closes the pipe at EOF).
fn read_once(proc: &Proc, pipe: &mut Option<File>, which: Pipe, buf: &mut [u8]) -> bool {
    let Some(f) = pipe.as_mut() else { return false };
    loop {
        match f.read(buf) {
            Ok(0) => {
                *pipe = None;
                return false;
            }
            Ok(n) => {
                proc.lock().append(which, &buf[..n]);
                proc.changed.notify_all();
                return true;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false, // WouldBlock
        }
    }
}

pub fn wait(handle: u64, timeout_ms: Option<u64>, kill_on_timeout: bool, cancel: &CancelFlag) -> Result<Response, OpError> {
    let proc = handles::proc(handle)?;
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut o = proc.lock();
    loop {
        if o.status.is_some() {
            return Ok(Response::Proc(proc.state(&o)));
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(cancelled(format!("wait for process {handle} (pid {}): cancelled by the host", proc.pid)));
        }
        let mut nap = Duration::from_millis(100);
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                if !kill_on_timeout {
                    return Ok(Response::Proc(proc.state(&o)));
                }
                if !o.timed_out {
                    o.timed_out = true;
                    kill_group(proc.pid);
                }
            } else {
                nap = nap.min(d - now);
            }
        }
        o = proc.changed.wait_timeout(o, nap).unwrap().0;
    }
}

pub fn signal(handle: u64, signal: i32) -> Result<Response, OpError> {
    let proc = handles::proc(handle)?;
    // SAFETY: signalling the process group of a child we spawned.
    if unsafe { libc::kill(-proc.pid, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(os_error(&format!("signal {signal} to process {handle} (pid {})", proc.pid), e));
        }
    }
    Ok(Response::Done)
}

fn no_stdin(handle: u64) -> OpError {
    bad(format!("process {handle} has no stdin open (spawned without `stdin`, or stdin already closed)"))
}

/// Writes all of `data` to the process's stdin (waiting while the pipe is
/// full, checking for a cancel every 100 ms).
pub fn stdin_write(handle: u64, data: &[u8], cancel: &CancelFlag) -> Result<Response, OpError> {
    let proc = handles::proc(handle)?;
    let mut stdin = proc.stdin.lock().unwrap();
    let pipe = stdin.as_mut().ok_or_else(|| no_stdin(handle))?;
    let mut done = 0;
    while done < data.len() {
        match pipe.write(&data[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if cancel.load(Ordering::SeqCst) {
                    return Err(cancelled(format!("stdin of process {handle}: cancelled after {done} bytes")));
                }
                let mut p = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            Err(e) => return Err(os_error(&format!("stdin of process {handle} (after {done} bytes)"), e)),
        }
    }
    Ok(Response::Count(done as u64))
}

pub fn stdin_close(handle: u64) -> Result<Response, OpError> {
    let proc = handles::proc(handle)?;
    proc.stdin.lock().unwrap().take().ok_or_else(|| no_stdin(handle))?;
    Ok(Response::Done)
}

/// The process side of `Release`: SIGKILL the group if the process still
/// runs, close its stdin. The pump ends by itself once the exit is reaped.
pub fn release(proc: &Proc) {
    if proc.lock().status.is_none() {
        kill_group(proc.pid);
    }
    if let Ok(mut stdin) = proc.stdin.try_lock() {
        stdin.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(o: &mut Output, pipe: Pipe) -> u64 {
        let id = o.next_sub;
        o.next_sub += 1;
        o.subs.push(Sub { id, pipe, pos: 0, queue: VecDeque::new(), queued: 0 });
        id
    }

    #[test]
    fn subscribers_get_retained_bytes_then_their_queue_in_order() {
        let mut o = Output::default();
        let early = sub(&mut o, Pipe::Stdout);
        o.append(Pipe::Stdout, b"hello ");
        o.append(Pipe::Stderr, b"err");
        let late = sub(&mut o, Pipe::Stdout);
        assert_eq!(o.take(early, 3).unwrap(), b"hel");
        assert_eq!(o.take(early, 100).unwrap(), b"lo ");
        assert_eq!(o.take(early, 100), None);
        assert_eq!(o.take(late, 100).unwrap(), b"hello ");
        assert!(!o.backlogged());
    }

    #[test]
    fn past_the_retention_cap_bytes_queue_and_backlog_counts_them() {
        let mut o = Output::default();
        o.retained[1] = vec![0; MAX_CAPTURE - 2];
        let id = sub(&mut o, Pipe::Stdout);
        o.append(Pipe::Stdout, b"abcdef");
        assert_eq!(o.retained[0], b"ab");
        o.append(Pipe::Stdout, &vec![7; BACKLOG]);
        assert!(o.backlogged());
        assert_eq!(o.take(id, 100).unwrap(), b"ab");
        assert_eq!(o.take(id, 3).unwrap(), b"cde");
        assert_eq!(o.take(id, 3).unwrap(), b"f");
        assert_eq!(o.take(id, BACKLOG).unwrap().len(), BACKLOG);
        assert!(!o.backlogged());
    }
}
