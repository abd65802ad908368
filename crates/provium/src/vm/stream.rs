//! [`Stream`]: bytes from the guest (a followed file, a process's output, an
//! open handle, the console), read by `next`, `read_until` and `drain`.
//!
//! Bytes left over after a match are kept as *pending* and come out first on
//! the next call, so nothing a test has not seen is ever dropped; a read that
//! times out keeps what it accumulated as pending too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provium_protocol::StreamSource;

use super::resources::{Class, ResourceGuard, Site};
use super::{VmError, VmRef};
use crate::agent::{AgentStream, Chunk, DEFAULT_WINDOW};
use crate::lab::{Close, CloseRank};
use crate::sync::lock;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Where a stream's bytes come from.
pub trait ChunkSource: Send {
    fn next(&mut self, timeout: Duration) -> Chunk;
    fn close(&mut self);
}

impl ChunkSource for AgentStream {
    fn next(&mut self, timeout: Duration) -> Chunk {
        AgentStream::next(self, timeout)
    }

    fn close(&mut self) {
        AgentStream::close(self)
    }
}

struct StreamState {
    source: Box<dyn ChunkSource>,
    pending: Vec<u8>,
    eof: bool,
    closed: bool,
    /// What `read_until`/`expect` say after close ("stream closed").
    closed_msg: &'static str,
    site: Option<Site>,
    /// Counts the stream as open on its VM while it lives.
    guard: Option<ResourceGuard>,
}

/// A stream handle; clones share the stream.
#[derive(Clone)]
pub struct Stream(Arc<Mutex<StreamState>>);

impl Stream {
    /// A stream over `source`; `guard` counts it as open on its VM until it
    /// closes; `closed_msg` is what reads say after close.
    pub fn new(
        source: Box<dyn ChunkSource>,
        closed_msg: &'static str,
        site: Option<Site>,
        guard: Option<ResourceGuard>,
    ) -> Stream {
        Stream(Arc::new(Mutex::new(StreamState {
            source,
            pending: Vec::new(),
            eof: false,
            closed: false,
            closed_msg,
            site,
            guard,
        })))
    }

    /// Opens an agent stream of `source` on `vm`, registered on the VM as a
    /// stream of `kind` (`tail_file`, …) with `detail` and its creation site.
    pub fn open(
        vm: &VmRef,
        kind: &'static str,
        detail: &str,
        source: StreamSource,
        site: Option<Site>,
    ) -> Result<Stream, VmError> {
        Stream::open_on(vm, None, kind, detail, source, site)
    }

    /// Like [`Stream::open`], of a source of worker `worker` when given.
    pub fn open_on(
        vm: &VmRef,
        worker: Option<u64>,
        kind: &'static str,
        detail: &str,
        source: StreamSource,
        site: Option<Site>,
    ) -> Result<Stream, VmError> {
        let mut vm = lock(vm);
        let s = vm.with_agent(kind, |a| a.via(worker).open_stream(source, DEFAULT_WINDOW))?;
        let guard = vm.resources().register(Class::Stream, kind, detail, site.clone());
        Ok(Stream::new(Box::new(s), "stream closed", site, Some(guard)))
    }

    /// Pending bytes first, then one chunk; `None` at EOF, on timeout, after
    /// close.
    pub fn next(&self, timeout: Duration) -> Result<Option<Vec<u8>>, String> {
        lock(&self.0).next_chunk(timeout)
    }

    /// Accumulates until `pattern`; returns the bytes up to and including
    /// it. `verb` names the call in errors.
    pub fn read_until(&self, verb: &str, pattern: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
        lock(&self.0).read_until(verb, pattern, timeout)
    }

    /// Every chunk that arrives within `timeout`.
    pub fn drain(&self, timeout: Duration) -> Result<Vec<Vec<u8>>, String> {
        lock(&self.0).drain(timeout)
    }

    /// At EOF (or closed) with nothing pending.
    pub fn eof(&self) -> bool {
        let s = lock(&self.0);
        (s.eof || s.closed) && s.pending.is_empty()
    }

    /// The test-author line that opened it.
    pub fn site(&self) -> Option<Site> {
        lock(&self.0).site.clone()
    }

    /// Closes the source and forgets pending bytes; idempotent.
    pub fn close(&self) {
        let mut s = lock(&self.0);
        if !s.closed {
            s.source.close();
            s.closed = true;
            s.pending.clear();
            s.guard = None;
        }
    }
}

impl Close for Stream {
    fn rank(&self) -> CloseRank {
        CloseRank::Stream
    }

    fn close(&self) {
        Stream::close(self)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

impl StreamState {
    /// `next`: pending first, then one chunk; `None` at EOF, on timeout,
    /// after close.
    fn next_chunk(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, String> {
        if self.closed {
            return Ok(None);
        }
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        if self.eof {
            return Ok(None);
        }
        match self.source.next(timeout) {
            Chunk::Data(d) => Ok(Some(d)),
            Chunk::Eof => {
                self.eof = true;
                Ok(None)
            }
            Chunk::Timeout => Ok(None),
            Chunk::Failed(m) => Err(m),
        }
    }

    /// Accumulates until `pattern`; returns the bytes up to and including it.
    fn read_until(&mut self, verb: &str, pattern: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
        let shown = String::from_utf8_lossy(pattern).into_owned();
        if self.closed {
            return Err(self.closed_msg.to_string());
        }
        let deadline = Instant::now() + timeout;
        let mut buf = std::mem::take(&mut self.pending);
        loop {
            if let Some(at) = find(&buf, pattern) {
                self.pending = buf.split_off(at + pattern.len());
                return Ok(buf);
            }
            if self.eof {
                self.pending = buf;
                return Err(format!("{verb}: stream EOF while waiting for `{shown}`"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.pending = buf;
                return Err(format!("{verb} timed out waiting for `{shown}` ({timeout:?})"));
            }
            match self.source.next(left) {
                Chunk::Data(d) => buf.extend_from_slice(&d),
                Chunk::Eof => self.eof = true,
                Chunk::Timeout => {}
                Chunk::Failed(m) => {
                    self.pending = buf;
                    return Err(format!("{verb}: {m}"));
                }
            }
        }
    }

    fn drain(&mut self, timeout: Duration) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        if self.closed {
            return Ok(out);
        }
        if !self.pending.is_empty() {
            out.push(std::mem::take(&mut self.pending));
        }
        let deadline = Instant::now() + timeout;
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.source.next(left) {
                Chunk::Data(d) => out.push(d),
                Chunk::Eof => self.eof = true,
                Chunk::Timeout => break,
                Chunk::Failed(m) => return Err(m),
            }
            if left.is_zero() {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that replays a script of chunks.
    struct Script(Vec<Chunk>);

    impl ChunkSource for Script {
        fn next(&mut self, _: Duration) -> Chunk {
            if self.0.is_empty() {
                Chunk::Timeout
            } else {
                self.0.remove(0)
            }
        }
        fn close(&mut self) {}
    }

    fn state(chunks: Vec<Chunk>) -> StreamState {
        StreamState {
            source: Box::new(Script(chunks)),
            pending: vec![],
            eof: false,
            closed: false,
            closed_msg: "stream closed",
            site: None,
            guard: None,
        }
    }

    #[test]
    fn leftovers_come_back_first_and_nothing_is_lost() {
        let mut s = state(vec![Chunk::Data(b"abc\nde".to_vec()), Chunk::Data(b"f\ngh".to_vec()), Chunk::Eof]);
        assert_eq!(s.read_until("read_until", b"\n", DEFAULT_TIMEOUT).unwrap(), b"abc\n");
        assert_eq!(s.next_chunk(DEFAULT_TIMEOUT).unwrap(), Some(b"de".to_vec()));
        assert_eq!(s.read_until("read_until", b"\n", DEFAULT_TIMEOUT).unwrap(), b"f\n");
        let err = s.read_until("expect", b"zz", DEFAULT_TIMEOUT).unwrap_err();
        assert_eq!(err, "expect: stream EOF while waiting for `zz`");
        // What was accumulated before the failure is still there.
        assert_eq!(s.next_chunk(DEFAULT_TIMEOUT).unwrap(), Some(b"gh".to_vec()));
        assert_eq!(s.next_chunk(DEFAULT_TIMEOUT).unwrap(), None);
    }

    #[test]
    fn timeout_keeps_the_partial_bytes_and_names_the_pattern() {
        let mut s = state(vec![Chunk::Data(b"partial".to_vec())]);
        let err = s.read_until("read_until", b"ready", Duration::from_millis(20)).unwrap_err();
        assert!(err.starts_with("read_until timed out waiting for `ready`"), "{err}");
        assert_eq!(s.drain(Duration::ZERO).unwrap(), vec![b"partial".to_vec()]);
    }
}
