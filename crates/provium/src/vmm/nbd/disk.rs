//! The simulated disk behind an export: its write cache, its injected
//! faults and its counters, shared by the connection threads (the guest's
//! I/O) and every [`DiskHandle`] (the host's).
//!
//! The guest's commands and the host's calls go through the same methods
//! here, so a fault or a power cut is seen the same way by both. This file
//! knows nothing of sockets; `server.rs` turns commands into these calls.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cache::WriteCache;
use crate::sync::lock;

/// How long each request waits with [`Faults::slow`].
pub const SLOW_DELAY: Duration = Duration::from_millis(50);
/// Unflushed bytes the disk holds before writing the oldest back.
pub const CACHE_CAP: u64 = 256 << 20;

/// Faults the guest's I/O (and the host's) sees. Composable; changed at any
/// time, seen by the next request.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Faults {
    /// Every read fails with `EIO`.
    pub eio_read: bool,
    /// Every write, `TRIM`, `WRITE_ZEROES` and `FLUSH` fails with `EIO`
    /// (a flush writes, and a disk that cannot write cannot flush); nothing
    /// reaches the cache or the file.
    pub eio_write: bool,
    /// Every request waits [`SLOW_DELAY`] before it is served.
    pub slow: bool,
}

/// What a power cut did.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct PowerCut {
    /// Unflushed bytes lost.
    pub dropped_bytes: u64,
    /// Unflushed bytes that survived anyway: written back earlier because
    /// the cache was full ([`CACHE_CAP`]).
    pub spilled_bytes: u64,
}

/// Counters since the server started, guest and host together.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct DiskStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub trims: u64,
    pub write_zeroes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests answered with an error (faults, bad ranges, read-only).
    pub errors: u64,
    pub connections: u64,
}

/// Why a disk access failed; the guest sees the matching errno.
#[derive(Debug, thiserror::Error)]
pub enum DiskIoError {
    #[error("{op} at {offset}+{len}: EIO (fault_inject)")]
    Fault { op: &'static str, offset: u64, len: u64 },
    #[error("{op} at {offset}+{len} is past the end of the disk ({size} bytes)")]
    OutOfRange { op: &'static str, offset: u64, len: u64, size: u64 },
    #[error("{op} at {offset}+{len}: the disk is read-only")]
    ReadOnly { op: &'static str, offset: u64, len: u64 },
    #[error("{op} at {offset}+{len} on the image file")]
    Io {
        op: &'static str,
        offset: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
}

/// The kinds of write a guest can send.
#[derive(Clone, Copy, Debug)]
pub(super) enum WriteKind<'a> {
    Data(&'a [u8]),
    Trim(u64),
    Zeroes(u64),
}

pub(super) struct Disk {
    cache: Mutex<WriteCache>,
    size: u64,
    readonly: bool,
    faults: Mutex<Faults>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    trims: AtomicU64,
    write_zeroes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
    connections: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Disk {
    pub(super) fn new(image: File, size: u64, readonly: bool) -> Disk {
        Disk {
            cache: Mutex::new(WriteCache::new(image, size, CACHE_CAP)),
            size,
            readonly,
            faults: Mutex::new(Faults::default()),
            stats: Stats::default(),
        }
    }

    pub(super) fn readonly(&self) -> bool {
        self.readonly
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    pub(super) fn faults(&self) -> Faults {
        *lock(&self.faults)
    }

    pub(super) fn connected(&self) {
        bump(&self.stats.connections, 1);
    }

    /// Counts a request refused before it reached the disk (too big, unknown).
    pub(super) fn refused(&self) {
        bump(&self.stats.errors, 1);
    }

    /// Waits [`SLOW_DELAY`] if the disk is slow (before any lock is taken).
    pub(super) fn delay(&self) {
        if self.faults().slow {
            std::thread::sleep(SLOW_DELAY);
        }
    }

    fn check(&self, op: &'static str, offset: u64, len: u64) -> Result<(), DiskIoError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DiskIoError::OutOfRange { op, offset, len, size: self.size }),
        }
    }

    fn failed<T>(&self, e: DiskIoError) -> Result<T, DiskIoError> {
        bump(&self.stats.errors, 1);
        Err(e)
    }

    pub(super) fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DiskIoError> {
        let n = len as u64;
        if let Err(e) = self.check("read", offset, n) {
            return self.failed(e);
        }
        if self.faults().eio_read {
            return self.failed(DiskIoError::Fault { op: "read", offset, len: n });
        }
        match lock(&self.cache).read(offset, len) {
            Ok(data) => {
                bump(&self.stats.reads, 1);
                bump(&self.stats.bytes_read, n);
                Ok(data)
            }
            Err(source) => self.failed(DiskIoError::Io { op: "read", offset, len: n, source }),
        }
    }

    /// A guest write (`durable` for `FUA`), trim or write-zeroes; or, with
    /// `durable`, a host write.
    pub(super) fn write(&self, offset: u64, what: WriteKind<'_>, durable: bool) -> Result<(), DiskIoError> {
        let (op, len, counter) = match what {
            WriteKind::Data(d) => ("write", d.len() as u64, &self.stats.writes),
            WriteKind::Trim(n) => ("trim", n, &self.stats.trims),
            WriteKind::Zeroes(n) => ("write_zeroes", n, &self.stats.write_zeroes),
        };
        let refused = if self.readonly {
            Some(DiskIoError::ReadOnly { op, offset, len })
        } else if let Err(e) = self.check(op, offset, len) {
            Some(e)
        } else if self.faults().eio_write {
            Some(DiskIoError::Fault { op, offset, len })
        } else {
            None
        };
        if let Some(e) = refused {
            return self.failed(e);
        }
        let mut cache = lock(&self.cache);
        let done = match (what, durable) {
            (WriteKind::Data(d), false) => cache.write(offset, d),
            (WriteKind::Data(d), true) => cache.write_through(offset, d),
            (WriteKind::Trim(n) | WriteKind::Zeroes(n), false) => cache.write_zeroes(offset, n),
            (WriteKind::Trim(n) | WriteKind::Zeroes(n), true) => {
                // Rare (FUA on a zeroing): cache it, then commit everything.
                cache.write_zeroes(offset, n).and_then(|()| cache.flush())
            }
        };
        drop(cache);
        match done {
            Ok(()) => {
                bump(counter, 1);
                if let WriteKind::Data(d) = what {
                    bump(&self.stats.bytes_written, d.len() as u64);
                }
                Ok(())
            }
            Err(source) => self.failed(DiskIoError::Io { op, offset, len, source }),
        }
    }

    /// The guest's `FLUSH`: fails with the write fault, like a write.
    pub(super) fn guest_flush(&self) -> Result<(), DiskIoError> {
        if self.faults().eio_write {
            return self.failed(DiskIoError::Fault { op: "flush", offset: 0, len: 0 });
        }
        self.flush().or_else(|source| self.failed(DiskIoError::Io { op: "flush", offset: 0, len: 0, source }))
    }

    fn flush(&self) -> std::io::Result<()> {
        lock(&self.cache).flush()?;
        bump(&self.stats.flushes, 1);
        Ok(())
    }
}

/// The host's side of a served disk: faults, power cut, sector access and
/// counters, through the same state the guest's I/O goes through. A cheap
/// clone, usable from any thread, still valid after the server is gone.
#[derive(Clone)]
pub struct DiskHandle(pub(super) Arc<Disk>);

impl DiskHandle {
    /// A disk over `image` (opened for reading, and writing unless
    /// `readonly`) that no server serves yet: the host's access to a disk
    /// whose guest is not running goes through the same checks and faults.
    /// The image's length is the disk's size, a non-zero multiple of 512.
    pub fn open(image: File, readonly: bool) -> Result<DiskHandle, super::NbdError> {
        let size = image.metadata().map_err(super::NbdError::Image)?.len();
        if size == 0 || size % 512 != 0 {
            return Err(super::NbdError::ImageSize { size });
        }
        Ok(DiskHandle(Arc::new(Disk::new(image, size, readonly))))
    }

    /// Sets the faults every later request sees (guest and host).
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.0.faults) = faults;
    }

    pub fn faults(&self) -> Faults {
        self.0.faults()
    }

    /// Drops every unflushed write, as a power cut does to a disk's cache.
    /// Reads then see only what was flushed (or written with FUA, or by the
    /// host). Call it with the guest stopped (QEMU killed), or the guest
    /// sees its disk lose writes under it.
    pub fn power_cut(&self) -> PowerCut {
        let (dropped_bytes, spilled_bytes) = lock(&self.0.cache).drop_all();
        PowerCut { dropped_bytes, spilled_bytes }
    }

    /// What the guest would read at `offset..offset+len`: the cache over the
    /// file. Fails like the guest's read would (`eio_read`, past the end).
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DiskIoError> {
        self.0.delay();
        self.0.read(offset, len)
    }

    /// Writes `data` at `offset`, durably (as if flushed at once). Fails
    /// like the guest's write would (`eio_write`, past the end, read-only).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), DiskIoError> {
        self.0.delay();
        self.0.write(offset, WriteKind::Data(data), true)
    }

    /// Commits the cache to the image file (before a snapshot copies it).
    /// Ignores faults: this is the harness's flush, not the guest's.
    pub fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.0.size()
    }

    /// Bytes written by the guest and not yet flushed.
    pub fn dirty_bytes(&self) -> u64 {
        lock(&self.0.cache).dirty_bytes()
    }

    pub fn stats(&self) -> DiskStats {
        let s = &self.0.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DiskStats {
            reads: get(&s.reads),
            writes: get(&s.writes),
            flushes: get(&s.flushes),
            trims: get(&s.trims),
            write_zeroes: get(&s.write_zeroes),
            bytes_read: get(&s.bytes_read),
            bytes_written: get(&s.bytes_written),
            errors: get(&s.errors),
            connections: get(&s.connections),
        }
    }
}
