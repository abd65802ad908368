//! The stream objects (`Tail`, `ConsoleStream`) and their shared surface:
//! `next`, `read_until`, `expect`, `drain`, `close`, `eof`, `creation_site`.
//!
//! Bytes left over after a match are kept as *pending* and come out first on
//! the next call, so nothing a test has not seen is ever dropped; a read that
//! times out keeps what it accumulated as pending too.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlua::{Lua, UserData, UserDataMethods, Value};

use super::errors::raise;
use super::opts;
use crate::agent::{AgentStream, Chunk};
use crate::vm::resources::{ResourceGuard, Site};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Where a stream's bytes come from.
pub trait ChunkSource {
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

pub struct StreamState {
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
pub struct StreamUd(pub Rc<RefCell<StreamState>>);

impl StreamUd {
    pub fn new(
        source: Box<dyn ChunkSource>,
        closed_msg: &'static str,
        site: Option<Site>,
        guard: ResourceGuard,
    ) -> StreamUd {
        StreamUd(Rc::new(RefCell::new(StreamState {
            source,
            pending: Vec::new(),
            eof: false,
            closed: false,
            closed_msg,
            site,
            guard: Some(guard),
        })))
    }

    pub fn close(&self) {
        let mut s = self.0.borrow_mut();
        if !s.closed {
            s.source.close();
            s.closed = true;
            s.pending.clear();
            s.guard = None;
        }
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

fn timeout_arg(lua: &Lua, what: &str, v: Option<Value>, default: Duration) -> mlua::Result<Duration> {
    match v {
        None | Some(Value::Nil) => Ok(default),
        Some(v) => opts::duration(lua, what, &v),
    }
}

impl UserData for StreamUd {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("next", |lua, this, t: Option<Value>| {
            let timeout = timeout_arg(lua, "stream:next", t, DEFAULT_TIMEOUT)?;
            let got = this.0.borrow_mut().next_chunk(timeout).map_err(|m| raise(lua, m))?;
            got.map(|b| lua.create_string(&b)).transpose()
        });
        methods.add_method("read_until", |lua, this, (p, t): (mlua::String, Option<Value>)| {
            let timeout = timeout_arg(lua, "stream:read_until", t, DEFAULT_TIMEOUT)?;
            let got =
                this.0.borrow_mut().read_until("read_until", &p.as_bytes(), timeout).map_err(|m| raise(lua, m))?;
            lua.create_string(&got)
        });
        methods.add_method("expect", |lua, this, (p, t): (mlua::String, Option<Value>)| {
            let timeout = timeout_arg(lua, "stream:expect", t, DEFAULT_TIMEOUT)?;
            this.0.borrow_mut().read_until("expect", &p.as_bytes(), timeout).map_err(|m| raise(lua, m))?;
            Ok(())
        });
        methods.add_method("drain", |lua, this, t: Option<Value>| {
            let timeout = timeout_arg(lua, "stream:drain", t, DRAIN_TIMEOUT)?;
            let chunks = this.0.borrow_mut().drain(timeout).map_err(|m| raise(lua, m))?;
            let out = lua.create_table()?;
            for (i, c) in chunks.iter().enumerate() {
                out.set(i + 1, lua.create_string(c)?)?;
            }
            Ok(out)
        });
        methods.add_method("close", |_, this, ()| {
            this.close();
            Ok(())
        });
        methods.add_method("eof", |_, this, ()| {
            let s = this.0.borrow();
            Ok((s.eof || s.closed) && s.pending.is_empty())
        });
        methods.add_method("creation_site", |lua, this, ()| match &this.0.borrow().site {
            Some(site) => {
                let t = lua.create_table()?;
                t.set("file", site.file.as_str())?;
                t.set("line", site.line)?;
                Ok(Value::Table(t))
            }
            None => Ok(Value::Nil),
        });
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
