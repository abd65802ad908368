//! Command output on the host: how much provium keeps, and the collector
//! that reads a spawned process's output as it is written.
//!
//! The agent never holds output back or cuts it: an `Exec` sends its pipes
//! as tagged `Data` frames, and a spawned process's pipes are streams the
//! host subscribes to at spawn. What the host keeps in memory is bounded by
//! [`MAX_OUTPUT`]; past it the call fails with [`AgentError::OutputTooLarge`]
//! instead of returning a cut result that looks whole.
//!
//! ```text
//!  spawn ─► Stream(Stdout) ─► thread ─┐
//!        └► Stream(Stderr) ─► thread ─┴─► Collected { stdout, stderr, ended }
//!                                           ▲ wait_end() after the exit status
//! ```

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use provium_protocol::{OutputPipe, StreamSource};

use super::client::{AgentClient, AgentError};
use super::stream::Chunk;

/// The most output (stdout and stderr together) provium keeps for one
/// command or process: 512 MiB. Larger output is read as it comes, with
/// `vm:run_async` and `proc:stdout_stream()`.
pub const MAX_OUTPUT: usize = 512 * 1024 * 1024;

/// The window of a collector's streams: large, because the host consumes
/// at once (the bytes are only moved into [`Collected`]).
const COLLECT_WINDOW: u32 = 4 << 20;

/// stdout and stderr of one command, bounded by a cap.
#[derive(Debug, Default)]
pub struct OutputBuf {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// More than the cap arrived; the buffers hold the first `cap` bytes.
    pub overflowed: bool,
}

impl OutputBuf {
    /// Appends `bytes` of `pipe`; false (and nothing kept) once the two
    /// pipes together would pass `cap`.
    pub fn push(&mut self, pipe: OutputPipe, bytes: &[u8], cap: usize) -> bool {
        if self.overflowed || self.stdout.len() + self.stderr.len() + bytes.len() > cap {
            self.overflowed = true;
            return false;
        }
        match pipe {
            OutputPipe::Stdout => self.stdout.extend_from_slice(bytes),
            OutputPipe::Stderr => self.stderr.extend_from_slice(bytes),
        }
        true
    }
}

#[derive(Default)]
struct Collected {
    buf: OutputBuf,
    /// Per pipe: the stream ended (the process exited and all was read).
    ended: [bool; 2],
    /// Why a stream stopped early (the connection went away).
    failed: Option<String>,
}

/// The output of one spawned process, collected on two threads.
#[derive(Clone)]
pub struct ProcessOutput {
    shared: Arc<(Mutex<Collected>, Condvar)>,
    cap: usize,
}

impl ProcessOutput {
    /// Subscribes to both pipes of process `handle`, from their first byte.
    pub fn collect(client: &AgentClient, handle: u64) -> Result<ProcessOutput, AgentError> {
        let out = ProcessOutput { shared: Arc::default(), cap: MAX_OUTPUT };
        for pipe in [OutputPipe::Stdout, OutputPipe::Stderr] {
            let source = match pipe {
                OutputPipe::Stdout => StreamSource::Stdout { handle },
                OutputPipe::Stderr => StreamSource::Stderr { handle },
            };
            let mut stream = client.open_stream(source, COLLECT_WINDOW)?;
            let this = out.clone();
            std::thread::Builder::new()
                .name(format!("proc-{handle}-{pipe:?}").to_lowercase())
                .spawn(move || loop {
                    let chunk = stream.next(Duration::from_secs(3600));
                    let (lock, changed) = &*this.shared;
                    let mut c = crate::sync::lock(lock);
                    let more = match chunk {
                        // Past the cap nothing more is kept: dropping the
                        // stream makes the agent stop sending.
                        Chunk::Data(bytes) => c.buf.push(pipe, &bytes, this.cap),
                        Chunk::Timeout => true,
                        Chunk::Eof => false,
                        Chunk::Failed(why) => {
                            c.failed.get_or_insert(why);
                            false
                        }
                    };
                    if !more {
                        c.ended[pipe as usize - 1] = true;
                        changed.notify_all();
                        return;
                    }
                })
                .expect("spawn an output collector thread");
        }
        Ok(out)
    }

    /// What arrived so far (the process may still be writing).
    pub fn so_far(&self) -> Result<(Vec<u8>, Vec<u8>), AgentError> {
        let c = crate::sync::lock(&self.shared.0);
        if c.buf.overflowed {
            return Err(AgentError::OutputTooLarge { cap: self.cap });
        }
        Ok((c.buf.stdout.clone(), c.buf.stderr.clone()))
    }

    /// Waits (at most `limit`) until both pipes ended, which follows the
    /// process's exit; then the whole output.
    pub fn wait_end(&self, limit: Duration) -> Result<(Vec<u8>, Vec<u8>), AgentError> {
        let deadline = Instant::now() + limit;
        let (lock, changed) = &*self.shared;
        let mut c = crate::sync::lock(lock);
        while !(c.ended[0] && c.ended[1]) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AgentError::OutputIncomplete(format!(
                    "its output did not end within {limit:?} of its exit"
                )));
            }
            c = changed.wait_timeout(c, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        if c.buf.overflowed {
            return Err(AgentError::OutputTooLarge { cap: self.cap });
        }
        if let Some(why) = &c.failed {
            return Err(AgentError::OutputIncomplete(why.clone()));
        }
        Ok((c.buf.stdout.clone(), c.buf.stderr.clone()))
    }
}

/// `n` bytes as the largest whole unit (`512 MiB`).
pub fn size_text(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_keeps_everything_up_to_the_cap_and_then_nothing() {
        let mut b = OutputBuf::default();
        assert!(b.push(OutputPipe::Stdout, b"abc", 6));
        assert!(b.push(OutputPipe::Stderr, b"de", 6));
        assert!(b.push(OutputPipe::Stdout, b"f", 6), "exactly the cap is whole");
        assert!(!b.overflowed);
        assert!(!b.push(OutputPipe::Stdout, b"g", 6));
        assert!(b.overflowed);
        assert!(!b.push(OutputPipe::Stderr, b"", 6), "once over, always over");
        assert_eq!((&b.stdout[..], &b.stderr[..]), (&b"abcf"[..], &b"de"[..]));
    }

    #[test]
    fn sizes_read_as_units() {
        assert_eq!(size_text(MAX_OUTPUT), "512 MiB");
        assert_eq!(size_text(1 << 30), "1 GiB");
        assert_eq!(size_text(1536), "1536 bytes");
        assert_eq!(size_text(2048), "2 KiB");
    }
}
