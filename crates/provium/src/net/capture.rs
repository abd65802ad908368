//! [`Capture`]: pcap bytes of what a switch forwarded, read as a stream.
//!
//! The switch appends records to a shared buffer (never blocking on a slow
//! reader: past [`MAX_BUFFERED`] it drops frames from the capture and counts
//! them); the reader takes up to 64 KiB per `next`. The first bytes are the
//! pcap global header. The capture ends (EOF once drained) when the switch
//! stops or the captured port leaves.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::agent::Chunk;
use crate::sync::lock;

/// What a capture sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureScope {
    /// Every frame the switch receives from a member whose link is up,
    /// once, as it arrives (before partitions and impairments).
    Bridge,
    /// One member's wire as its guest sees it: the frames it sends (as they
    /// arrive) and the frames delivered to it (as they are delivered, after
    /// partitions and impairments).
    Port(String),
}

/// Bytes a capture holds for its reader before it drops frames.
pub const MAX_BUFFERED: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    ended: bool,
    closed: bool,
    dropped: u64,
}

/// The switch's end of a capture.
#[derive(Clone, Default)]
pub struct Sink(Arc<(Mutex<Buffer>, Condvar)>);

impl Sink {
    /// Appends a record for `frame`; false once the reader has closed.
    pub fn push(&self, at: SystemTime, frame: &[u8]) -> bool {
        let mut b = lock(&self.0 .0);
        if b.closed {
            return false;
        }
        if b.bytes.len() + frame.len() + 16 > MAX_BUFFERED {
            b.dropped += 1;
            return true;
        }
        super::pcap::record(&mut b.bytes, at, frame);
        self.0 .1.notify_all();
        true
    }

    /// No more frames will come.
    pub fn end(&self) {
        lock(&self.0 .0).ended = true;
        self.0 .1.notify_all();
    }
}

/// The reader's end: a `crate::vm::ChunkSource`.
pub struct Capture {
    sink: Sink,
}

impl Capture {
    /// A capture and the sink the switch writes it through.
    pub fn new() -> (Capture, Sink) {
        let sink = Sink::default();
        lock(&sink.0 .0).bytes = super::pcap::header();
        (Capture { sink: sink.clone() }, sink)
    }

    /// Frames left out because the reader fell [`MAX_BUFFERED`] behind.
    pub fn dropped(&self) -> u64 {
        lock(&self.sink.0 .0).dropped
    }

    /// Everything buffered (at most 64 KiB), waiting up to `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Chunk {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.sink.0;
        let mut b = lock(m);
        loop {
            if !b.bytes.is_empty() {
                let n = b.bytes.len().min(CHUNK);
                return Chunk::Data(b.bytes.drain(..n).collect());
            }
            if b.ended || b.closed {
                return Chunk::Eof;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Chunk::Timeout;
            }
            b = cv.wait_timeout(b, left).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Stops capturing; idempotent.
    pub fn close(&mut self) {
        let mut b = lock(&self.sink.0 .0);
        b.closed = true;
        b.bytes.clear();
    }
}

impl crate::vm::ChunkSource for Capture {
    fn next(&mut self, timeout: Duration) -> Chunk {
        Capture::next(self, timeout)
    }

    fn close(&mut self) {
        Capture::close(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_then_records_then_eof() {
        let (mut cap, sink) = Capture::new();
        assert!(sink.push(SystemTime::now(), b"0123456789abcdef"));
        let Chunk::Data(d) = cap.next(Duration::ZERO) else { panic!("data expected") };
        assert_eq!(super::super::pcap::parse(&d).unwrap()[0].data, b"0123456789abcdef");
        assert!(matches!(cap.next(Duration::from_millis(10)), Chunk::Timeout));
        sink.end();
        assert!(matches!(cap.next(Duration::from_secs(5)), Chunk::Eof));
        cap.close();
        assert!(!sink.push(SystemTime::now(), b"x"), "a closed capture refuses frames");
    }
}
