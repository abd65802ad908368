//! A spawned process's output record and the pump thread that fills it.
//!
//! ```text
//!  pipes ─► pump ─┬─► retained[stdout|stderr]  (≤ AGENT_RETAIN together; then retention stops)
//!                 └─► per-subscriber queues    (only bytes that retention dropped)
//! ```
//!
//! Retention: the two pipes together keep at most [`AGENT_RETAIN`] bytes
//! (guest memory is small); later output is not retained. The host
//! subscribes to both pipes as soon as it spawns a process, so it sees every
//! byte; retention serves streams opened later. A subscriber (a `Stream` of
//! stdout or stderr) reads the retained bytes from the first one, then its
//! own queue. A stream opened after retention stopped misses what was
//! written between that point and its subscription.
//!
//! Backpressure: while any subscriber's queue holds more than [`BACKLOG`]
//! bytes the pump stops reading the pipes until it drains, so a slow host
//! slows the process down rather than losing bytes or growing memory.
//!
//! Exit: once the reaper reports the exit, the pump takes what the pipes
//! already hold (bounded, ignoring backpressure: at most [`DRAIN_MAX`] per
//! pipe; a background grandchild may keep them open forever), then
//! publishes the status. Status set is also the subscribers' end of data.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use provium_protocol::{ExitStatus, AGENT_RETAIN};

use super::{Pipe, Proc};
use crate::reaper::ExitSlot;
use crate::stream::Chunk;
use crate::sys::{decode_status, kill_group, set_nonblocking};

/// Queued (not retained) bytes a subscriber may have before the pump stops.
pub const BACKLOG: usize = 4 * 1024 * 1024;
/// What the pump still reads from one pipe after the process exited.
const DRAIN_MAX: usize = 1024 * 1024;
const READ_BUF: usize = 64 * 1024;

#[derive(Default)]
pub(super) struct Output {
    /// Set once the process exited and its output was drained.
    pub(super) status: Option<ExitStatus>,
    /// Killed by a timeout: the status will be `TimedOut`.
    pub(super) timed_out: bool,
    pub(super) retained: [Vec<u8>; 2],
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
        let room = AGENT_RETAIN.saturating_sub(self.retained[0].len() + self.retained[1].len());
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

/// The per-process thread: pipes → [`Output`] until the exit is recorded.
pub(super) fn pump(
    proc: &Proc,
    slot: &ExitSlot,
    mut pipes: [Option<File>; 2],
    deadline: Option<Instant>,
    search_path: &str,
) {
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
            let status = if o.timed_out { ExitStatus::TimedOut } else { decode_status(raw) };
            if let Some(line) = crate::elf::after_exit(status, &o.retained[1], search_path) {
                o.append(Pipe::Stderr, &line);
            }
            o.status = Some(status);
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
        // SAFETY: poll(2) reads and writes `nfds` pollfd structs starting at the
        // pointer; `nfds` is `fds.len()` and the Vec is neither moved nor
        // resized during the call, so every access is inside its buffer. The
        // kernel keeps no reference to it after returning.
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
        o.retained[1] = vec![0; AGENT_RETAIN - 2];
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
