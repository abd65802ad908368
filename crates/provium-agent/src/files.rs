//! File handles: `OpenFile`, `Read`, `Write`, `Seek` (and the file side of
//! `Release` and of `Stream{Fd}`).
//!
//! An [`OpenFile`] is a `File` behind a mutex, so requests on one handle
//! never interleave inside a read or a write; the kernel's file offset is the
//! handle's offset. Whole-path operations (`ReadFile`, `Stat`, …) live in
//! [`crate::fsops`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use provium_protocol::frame::CHUNK;
use provium_protocol::{OpError, OpErrorKind, OpenMode, Response, Whence};

use crate::handles::{self, Handle};
use crate::session::Sender;
use crate::stream::Chunk;

pub struct OpenFile {
    path: String,
    file: Mutex<File>,
    /// Regular files are read until `max` or EOF; pipes and devices return
    /// after the first read that gives something (it could block forever).
    regular: bool,
}

fn os(op: &str, path: &str, e: io::Error) -> OpError {
    // std refuses some flag combinations itself, without an errno.
    let errno = e.raw_os_error().or((e.kind() == io::ErrorKind::InvalidInput).then_some(libc::EINVAL));
    OpError { kind: OpErrorKind::Os, errno, message: format!("{op} `{path}`: {e}") }
}

/// Opens `path`. With none of `read`, `write`, `append` set it is opened for
/// reading.
pub fn open(path: &str, mode: OpenMode, perm: u32) -> Result<Response, OpError> {
    let mut opts = OpenOptions::new();
    let read = mode.read || !(mode.write || mode.append);
    opts.read(read)
        .write(mode.write)
        .append(mode.append)
        .truncate(mode.truncate)
        .create(mode.create)
        .create_new(mode.exclusive)
        .mode(perm)
        .custom_flags(libc::O_NOCTTY);
    let file = opts.open(path).map_err(|e| os("open", path, e))?;
    let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    let h = handles::insert(Handle::File(std::sync::Arc::new(OpenFile {
        path: path.to_string(),
        file: Mutex::new(file),
        regular,
    })));
    Ok(Response::Handle(h))
}

impl OpenFile {
    /// The descriptor, for an `ioctl`; it stays open while `self` lives.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self.file.lock().unwrap())
    }

    /// One read of at most `max` bytes at the current offset (empty at EOF).
    pub fn read_some(&self, max: usize) -> Result<Vec<u8>, OpError> {
        let mut buf = vec![0u8; max];
        let mut f = self.file.lock().unwrap();
        loop {
            match f.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(os("read", &self.path, e)),
            }
        }
    }

    /// The `Stream{Fd}` source: to EOF from the current offset.
    pub fn next_chunk(&self, max: usize) -> Result<Chunk, OpError> {
        let bytes = self.read_some(max)?;
        Ok(if bytes.is_empty() { Chunk::End } else { Chunk::Data(bytes) })
    }
}

/// Up to `max` bytes as `Data` frames; none at EOF.
pub fn read(handle: u64, max: u64, out: &Sender) -> Result<Response, OpError> {
    let f = handles::file(handle)?;
    let mut left = max;
    while left > 0 {
        let bytes = f.read_some(left.min(CHUNK as u64) as usize)?;
        if bytes.is_empty() {
            break;
        }
        left -= bytes.len() as u64;
        out.data(&bytes);
        if !f.regular {
            break;
        }
    }
    Ok(Response::Done)
}

pub fn write(handle: u64, data: &[u8]) -> Result<Response, OpError> {
    let f = handles::file(handle)?;
    f.file.lock().unwrap().write_all(data).map_err(|e| os("write", &f.path, e))?;
    Ok(Response::Count(data.len() as u64))
}

pub fn seek(handle: u64, offset: i64, whence: Whence) -> Result<Response, OpError> {
    let f = handles::file(handle)?;
    let to = match whence {
        Whence::Set => match u64::try_from(offset) {
            Ok(o) => SeekFrom::Start(o),
            Err(_) => return Err(os("seek", &f.path, io::Error::from_raw_os_error(libc::EINVAL))),
        },
        Whence::Cur => SeekFrom::Current(offset),
        Whence::End => SeekFrom::End(offset),
    };
    let at = f.file.lock().unwrap().seek(to).map_err(|e| os("seek", &f.path, e))?;
    Ok(Response::Count(at))
}
