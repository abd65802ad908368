//! The `Stream{File}` source: a file followed as it grows, like `tail -F`.
//!
//! The file is read with `pread` from our own offset; at EOF the source
//! sleeps on an inotify watch of the file (so appended bytes go out within
//! milliseconds) with a short timeout, after which it re-checks:
//!
//! - **truncation**: the file shrank (below what we saw before *and* below
//!   our offset) → start again from 0;
//! - **replacement**: the path now names another file (rotation, delete and
//!   re-create) → finish the old one (we are at its EOF) and follow the new
//!   one from 0.
//!
//! It never ends by itself; the stream ends when the host cancels it.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use provium_protocol::{OpError, OpErrorKind, TailStart};

use crate::inotify::Inotify;
use crate::stream::Chunk;

const MASK: u32 = libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_ATTRIB | libc::IN_MOVE_SELF | libc::IN_DELETE_SELF;

pub struct Tail {
    path: String,
    file: File,
    id: (u64, u64),
    offset: u64,
    /// The size at the last check (to tell truncation from "not there yet").
    seen_size: u64,
    inotify: Inotify,
    wd: Option<i32>,
}

fn os(path: &str, e: std::io::Error) -> OpError {
    OpError { kind: OpErrorKind::Os, errno: e.raw_os_error(), message: format!("stream `{path}`: {e}") }
}

/// Where reading starts in a file of `size` bytes.
pub fn start_offset(start: TailStart, size: u64) -> u64 {
    match start {
        TailStart::Beginning => 0,
        TailStart::End => size,
        TailStart::Offset(n) => n,
        TailStart::FromEnd(n) => size.saturating_sub(n),
    }
}

/// Whether a file now `size` bytes long was truncated under a reader at
/// `offset` that last saw it `seen` bytes long.
pub fn truncated(size: u64, seen: u64, offset: u64) -> bool {
    size < seen && size < offset
}

impl Tail {
    pub fn open(path: &str, start: TailStart) -> Result<Tail, OpError> {
        let file = File::open(path).map_err(|e| os(path, e))?;
        let md = file.metadata().map_err(|e| os(path, e))?;
        let inotify = Inotify::new().map_err(|e| os(path, e))?;
        let wd = inotify.add(path, MASK).ok();
        Ok(Tail {
            path: path.to_string(),
            file,
            id: (md.dev(), md.ino()),
            offset: start_offset(start, md.len()),
            seen_size: md.len(),
            inotify,
            wd,
        })
    }

    /// Up to `max` new bytes, or [`Chunk::Idle`] after waiting up to `idle`
    /// for the file to change.
    pub fn next(&mut self, max: usize, idle: Duration) -> Result<Chunk, OpError> {
        let mut buf = vec![0u8; max];
        let mut waited = false;
        loop {
            let n = loop {
                match self.file.read_at(&mut buf, self.offset) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(os(&self.path, e)),
                }
            };
            if n > 0 {
                self.offset += n as u64;
                buf.truncate(n);
                return Ok(Chunk::Data(buf));
            }
            let size = self.file.metadata().map_err(|e| os(&self.path, e))?.len();
            if truncated(size, self.seen_size, self.offset) {
                self.offset = 0;
                self.seen_size = size;
                continue;
            }
            self.seen_size = size;
            if self.switch_if_replaced() {
                continue;
            }
            if waited {
                return Ok(Chunk::Idle);
            }
            self.inotify.wait(idle);
            waited = true;
        }
    }

    /// Follows the path to a new file if it names one now.
    fn switch_if_replaced(&mut self) -> bool {
        let Ok(md) = std::fs::metadata(&self.path) else { return false };
        if (md.dev(), md.ino()) == self.id {
            return false;
        }
        let Ok(file) = File::open(&self.path) else { return false };
        if let Some(wd) = self.wd.take() {
            self.inotify.remove(wd);
        }
        self.wd = self.inotify.add(&self.path, MASK).ok();
        self.id = file.metadata().map(|m| (m.dev(), m.ino())).unwrap_or((md.dev(), md.ino()));
        self.file = file;
        self.offset = 0;
        self.seen_size = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions() {
        assert_eq!(start_offset(TailStart::Beginning, 100), 0);
        assert_eq!(start_offset(TailStart::End, 100), 100);
        assert_eq!(start_offset(TailStart::Offset(30), 100), 30);
        assert_eq!(start_offset(TailStart::Offset(300), 100), 300);
        assert_eq!(start_offset(TailStart::FromEnd(30), 100), 70);
        assert_eq!(start_offset(TailStart::FromEnd(300), 100), 0);
    }

    #[test]
    fn truncation_is_shrinking_below_the_offset() {
        assert!(truncated(0, 100, 100));
        assert!(truncated(10, 100, 50));
        assert!(!truncated(60, 100, 50), "shrank, but not below what we read");
        assert!(!truncated(100, 100, 300), "an offset past the end waits for growth");
    }

    #[test]
    fn a_file_is_followed_through_growth_truncation_and_replacement() {
        let dir = std::env::temp_dir().join(format!("provium-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let p = path.to_str().unwrap();
        std::fs::write(&path, b"old\n").unwrap();
        let mut t = Tail::open(p, TailStart::FromEnd(2)).unwrap();
        let next = |t: &mut Tail| match t.next(1024, Duration::from_millis(20)).unwrap() {
            Chunk::Data(b) => b,
            _ => Vec::new(),
        };
        assert_eq!(next(&mut t), b"d\n");
        assert_eq!(next(&mut t), b"");
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"more\n").unwrap();
        assert_eq!(next(&mut t), b"more\n");
        std::fs::write(&path, b"x").unwrap(); // truncate + write
        assert_eq!(next(&mut t), b"x");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"new file\n").unwrap();
        assert_eq!(next(&mut t), b"new file\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use std::io::Write;
}
