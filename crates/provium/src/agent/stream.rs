//! A stream of bytes pushed by the agent (a followed file, a process's
//! output, an open handle), paced by credit.
//!
//! The agent may have at most `window` bytes in flight that the host has not
//! acknowledged; the host returns credit as the *caller* consumes chunks, not
//! as they arrive. So a test that reads slowly holds at most one window in
//! host memory, and the guest side waits instead of losing bytes.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use provium_protocol::frame::FrameKind;
use provium_protocol::{OpErrorKind, Request, StreamSource};

use super::client::{AgentClient, AgentError, Incoming};

/// Bytes the agent may send ahead of what the host has consumed.
pub const DEFAULT_WINDOW: u32 = 1 << 20;

/// One step of a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Data(Vec<u8>),
    /// The source ended (process exited, handle at EOF).
    Eof,
    /// Nothing arrived within the timeout.
    Timeout,
    /// The stream failed; the message says why.
    Failed(String),
}

pub struct AgentStream {
    client: AgentClient,
    channel: u32,
    rx: Receiver<Incoming>,
    window: u32,
    unacknowledged: u32,
    done: bool,
}

impl AgentClient {
    /// Opens a stream; data starts flowing at once.
    pub fn open_stream(&self, source: StreamSource, window: u32) -> Result<AgentStream, AgentError> {
        let (channel, rx) = self.open(&Request::Stream { source, window })?;
        Ok(AgentStream { client: self.clone(), channel, rx, window, unacknowledged: 0, done: false })
    }
}

impl AgentStream {
    /// The next chunk, waiting up to `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Chunk {
        if self.done {
            return Chunk::Eof;
        }
        loop {
            match self.rx.recv_timeout(timeout) {
                Ok(Incoming::Data(bytes)) => {
                    self.acknowledge(bytes.len());
                    return Chunk::Data(bytes);
                }
                Ok(Incoming::DataEnd) => continue, // the reply follows
                Ok(Incoming::Reply(Ok(_))) => {
                    self.done = true;
                    return Chunk::Eof;
                }
                Ok(Incoming::Reply(Err(e))) => {
                    self.done = true;
                    return match e.kind {
                        OpErrorKind::Cancelled => Chunk::Eof,
                        _ => Chunk::Failed(e.message),
                    };
                }
                Ok(Incoming::BadReply(e)) => {
                    self.done = true;
                    return Chunk::Failed(crate::errors::chain(&AgentError::BadReply(e)));
                }
                Err(RecvTimeoutError::Timeout) => return Chunk::Timeout,
                Err(RecvTimeoutError::Disconnected) => {
                    self.done = true;
                    return Chunk::Failed("agent connection closed".into());
                }
            }
        }
    }

    /// Returns credit once half a window has been consumed.
    fn acknowledge(&mut self, n: usize) {
        self.unacknowledged = self.unacknowledged.saturating_add(n as u32);
        if self.unacknowledged >= self.window / 2 {
            let _ = self.client.send(self.channel, FrameKind::Credit, &self.unacknowledged.to_le_bytes());
            self.unacknowledged = 0;
        }
    }

    /// Stops the stream; idempotent.
    pub fn close(&mut self) {
        if !self.done {
            self.client.cancel(self.channel);
            self.done = true;
        }
        self.client.forget(self.channel);
    }
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        self.close();
    }
}
