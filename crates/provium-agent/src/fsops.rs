//! File-system operations: read, write, stat, list, mkdir, unlink, rename.
//!
//! Each function maps an `io::Error` to an [`OpError`] carrying its errno and
//! the path, so the host can say exactly what failed.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::sync::mpsc::Receiver;

use provium_protocol::frame::CHUNK;
use provium_protocol::{DirEntry, EntryType, Metadata, OpError, OpErrorKind, Response};

use crate::session::{Inbound, Sender};

fn os(op: &str, path: &str, e: io::Error) -> OpError {
    OpError { kind: OpErrorKind::Os, errno: e.raw_os_error(), message: format!("{op} `{path}`: {e}") }
}

/// Streams the file to the host as `Data` frames.
pub fn read_file(path: &str, out: &Sender) -> Result<Response, OpError> {
    let mut f = fs::File::open(path).map_err(|e| os("read_file", path, e))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match f.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(os("read_file", path, e)),
        };
        if n == 0 {
            return Ok(Response::Done);
        }
        out.data(&buf[..n]);
    }
}

/// Writes `Data` frames from the host into the file until `DataEnd`.
pub fn write_file(path: &str, perm: u32, append: bool, inbound: &Receiver<Inbound>) -> Result<Response, OpError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).mode(perm);
    if append {
        opts.append(true);
    } else {
        opts.truncate(true);
    }
    let mut f = opts.open(path).map_err(|e| os("write_file", path, e))?;
    loop {
        match inbound.recv() {
            Ok(Inbound::Data(bytes)) => f.write_all(&bytes).map_err(|e| os("write_file", path, e))?,
            Ok(Inbound::DataEnd) => return Ok(Response::Done),
            Ok(Inbound::Credit(_) | Inbound::Relayed(_)) => {}
            Ok(Inbound::Cancel) | Err(_) => {
                return Err(OpError {
                    kind: OpErrorKind::Cancelled,
                    errno: None,
                    message: format!("write_file `{path}`: cancelled by the host"),
                })
            }
        }
    }
}

pub fn stat(path: &str, follow: bool) -> Result<Response, OpError> {
    let md = if follow { fs::metadata(path) } else { fs::symlink_metadata(path) };
    let md = md.map_err(|e| os("stat", path, e))?;
    Ok(Response::Stat(Metadata {
        size: md.size(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        perm: md.mode() & 0o7777,
        entry_type: EntryType::of(md.file_type()),
    }))
}

pub fn listdir(path: &str) -> Result<Response, OpError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| os("listdir", path, e))? {
        let entry = entry.map_err(|e| os("listdir", path, e))?;
        let ft = entry.file_type().map_err(|e| os("listdir", path, e))?;
        entries
            .push(DirEntry { name: entry.file_name().to_string_lossy().into_owned(), entry_type: EntryType::of(ft) });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Response::ListDir(entries))
}

pub fn mkdir(path: &str, parents: bool, perm: u32) -> Result<Response, OpError> {
    fs::DirBuilder::new().recursive(parents).mode(perm).create(path).map_err(|e| os("mkdir", path, e))?;
    Ok(Response::Done)
}

pub fn unlink(path: &str) -> Result<Response, OpError> {
    let md = fs::symlink_metadata(path).map_err(|e| os("unlink", path, e))?;
    let res = if md.is_dir() { fs::remove_dir(path) } else { fs::remove_file(path) };
    res.map_err(|e| os("unlink", path, e))?;
    Ok(Response::Done)
}

pub fn rename(from: &str, to: &str) -> Result<Response, OpError> {
    fs::rename(from, to).map_err(|e| os("rename", &format!("{from}` → `{to}"), e))?;
    Ok(Response::Done)
}
