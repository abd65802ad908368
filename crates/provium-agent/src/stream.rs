//! `Stream`: bytes from a source as `Data` frames, paced by the host's
//! `Credit`.
//!
//! ```text
//! host                                         agent
//!  | Request(ch, Stream{source, window})          |
//!  |--------------------------------------------->|
//!  |            Data(ch) ... (≤ window in flight) |
//!  |<---------------------------------------------|
//!  | Credit(ch, n)   (n bytes consumed)           |
//!  |--------------------------------------------->|
//!  |            Data(ch) ... DataEnd(ch)          |   finite sources only
//!  |                      Reply(ch, Ok(Done))     |
//!  |<---------------------------------------------|
//!  | Cancel(ch)  (any time)                       |
//!  |--------------------------------------------->|
//!  |            Reply(ch, Err(Cancelled))         |
//!  |<---------------------------------------------|
//! ```
//!
//! Credit: the agent starts with `window` bytes of credit; each `Data` frame
//! spends its length; each `Credit` frame adds its amount back, capped at
//! `window` (so "sent but not credited" never exceeds it). With no credit
//! the stream waits for `Credit` or `Cancel`. Frames are at most
//! `min(credit, CHUNK)` bytes.
//!
//! This module owns the pacing and the loop; the sources are
//! [`crate::tail::Tail`] (a file, never ends), a process's stdout/stderr subscription
//! ([`crate::proc`], ends after exit) and [`crate::files::OpenFile`] (a handle
//! to EOF).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use provium_protocol::frame::CHUNK;
use provium_protocol::{OpError, OpErrorKind, Response, StreamSource};

use crate::handles;
use crate::proc::Pipe;
use crate::session::{Inbound, Sender};
use crate::sys::CancelFlag;
use crate::tail::Tail;

/// What a source yields on one call.
pub enum Chunk {
    Data(Vec<u8>),
    /// Nothing new within the wait; call again.
    Idle,
    /// The source is finished.
    End,
}

/// How long a source may sleep waiting for bytes before the stream checks
/// the host's frames again (bounds the latency of a `Cancel`).
const IDLE: Duration = Duration::from_millis(50);

/// Credit accounting for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    window: u64,
    avail: u64,
}

impl Credit {
    pub fn new(window: u32) -> Credit {
        Credit { window: window as u64, avail: window as u64 }
    }

    /// The host consumed `n` bytes.
    pub fn grant(&mut self, n: u32) {
        self.avail = (self.avail + n as u64).min(self.window);
    }

    /// The largest `Data` frame allowed now (0: wait for credit).
    pub fn allowance(&self) -> usize {
        self.avail.min(CHUNK as u64) as usize
    }

    pub fn spend(&mut self, n: usize) {
        assert!(n as u64 <= self.avail, "spent more than the credit");
        self.avail -= n as u64;
    }
}

fn cancelled(what: &str) -> OpError {
    OpError { kind: OpErrorKind::Cancelled, errno: None, message: format!("stream of {what}: cancelled by the host") }
}

/// The host's side of the channel: credit coming in, cancel.
struct Flow<'a> {
    credit: Credit,
    inbox: &'a Receiver<Inbound>,
    cancel: &'a CancelFlag,
}

impl Flow<'_> {
    /// Handles one inbound frame; false if the stream must stop.
    fn take(&mut self, msg: &Inbound) -> bool {
        match *msg {
            Inbound::Credit(n) => self.credit.grant(n),
            Inbound::Cancel => return false,
            // Not meaningful on a stream.
            Inbound::Data(_) | Inbound::DataEnd | Inbound::Relayed(_) => {}
        }
        true
    }

    /// Takes in whatever the host sent without waiting; false on cancel.
    fn poll(&mut self) -> bool {
        loop {
            if self.cancel.load(Ordering::SeqCst) {
                return false;
            }
            match self.inbox.try_recv() {
                Ok(msg) if self.take(&msg) => {}
                Ok(_) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    /// Waits until there is credit; returns the allowance, or `None` on cancel.
    fn allowance(&mut self) -> Option<usize> {
        loop {
            if !self.poll() {
                return None;
            }
            let a = self.credit.allowance();
            if a > 0 {
                return Some(a);
            }
            match self.inbox.recv_timeout(Duration::from_millis(100)) {
                Ok(msg) if self.take(&msg) => {}
                Ok(_) | Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

pub fn run(
    source: StreamSource,
    window: u32,
    out: &Sender,
    inbox: &Receiver<Inbound>,
    cancel: &CancelFlag,
) -> Result<Response, OpError> {
    if window == 0 {
        return Err(OpError {
            kind: OpErrorKind::BadRequest,
            errno: None,
            message: "stream: `window` must be at least 1 byte".into(),
        });
    }
    let what;
    let mut next: Box<dyn FnMut(usize) -> Result<Chunk, OpError>> = match source {
        StreamSource::File { path, start } => {
            let mut tail = Tail::open(&path, start)?;
            what = format!("`{path}`");
            Box::new(move |max| tail.next(max, IDLE))
        }
        StreamSource::Stdout { handle } | StreamSource::Stderr { handle } => {
            let pipe = if matches!(source, StreamSource::Stdout { .. }) { Pipe::Stdout } else { Pipe::Stderr };
            let mut sub = handles::proc(handle)?.subscribe(pipe);
            what = format!("process {handle}'s {}", if pipe == Pipe::Stdout { "stdout" } else { "stderr" });
            Box::new(move |max| Ok(sub.next(max, IDLE)))
        }
        StreamSource::Fd { handle } => {
            let file = handles::file(handle)?;
            what = format!("file handle {handle}");
            Box::new(move |max| file.next_chunk(max))
        }
    };
    let mut flow = Flow { credit: Credit::new(window), inbox, cancel };
    loop {
        let Some(max) = flow.allowance() else { return Err(cancelled(&what)) };
        match next(max)? {
            Chunk::Data(bytes) => {
                flow.credit.spend(bytes.len());
                out.data(&bytes);
            }
            Chunk::Idle => {}
            Chunk::End => {
                out.data_end();
                return Ok(Response::Done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_caps_frames_and_in_flight_bytes() {
        let mut c = Credit::new(600 * 1024);
        assert_eq!(c.allowance(), CHUNK);
        c.spend(CHUNK);
        c.spend(CHUNK);
        assert_eq!(c.allowance(), 600 * 1024 - 2 * CHUNK);
        c.spend(c.allowance());
        assert_eq!(c.allowance(), 0);
        c.grant(10);
        assert_eq!(c.allowance(), 10);
        c.grant(u32::MAX);
        assert_eq!(c, Credit::new(600 * 1024), "credit never exceeds the window");
    }

    #[test]
    fn a_small_window_gives_small_frames() {
        let mut c = Credit::new(5);
        assert_eq!(c.allowance(), 5);
        c.spend(3);
        c.grant(1);
        assert_eq!(c.allowance(), 3);
    }
}
