//! Data disks served by provium itself: an NBD server on a Unix socket that
//! QEMU's NBD client connects to, so that the guest's own disk I/O goes
//! through provium, where tests inject faults and cut the power.
//!
//! ```text
//!  guest ─virtio-blk─▶ QEMU nbd client ─unix socket─▶ BlockServer
//!                                                       │ one thread per connection
//!  Lua disk:read_sectors/…  ─▶ DiskHandle ──▶ Disk: faults, counters
//!                                              └─ WriteCache (volatile) ─▶ image file
//! ```
//!
//! - `protocol.rs`: the wire format (fixed-newstyle handshake, simple replies);
//! - `server.rs`: [`BlockServer`], the listener and connection threads;
//! - `disk.rs`: [`DiskHandle`] — faults, power cut, host-side sector access;
//! - `cache.rs`: the volatile write cache over the image file.
//!
//! # The disk model
//!
//! Like a real disk with a write cache: a `WRITE` without `FUA` stays in
//! memory until a `FLUSH`; reads see it. A `FUA` write goes to the file at
//! once (only itself; other cached writes stay cached); a `FUA` on `TRIM` or
//! `WRITE_ZEROES` (QEMU sends none) commits the whole cache. A failed
//! `FLUSH` (the `eio_write` fault) leaves the cache as it was. [`DiskHandle::power_cut`]
//! drops what is cached. Past 256 MiB of unflushed data the oldest is
//! written back, and the power cut reports those bytes as `spilled_bytes`:
//! they survive, as on no real disk, and a test can tell. "Written to the
//! file" is what durable means here; there is no `fdatasync`.
//!
//! # Protocol
//!
//! Fixed newstyle, `NBD_OPT_GO`/`INFO`/`EXPORT_NAME`/`LIST`/`ABORT`; every
//! other option (structured replies, extended headers, meta contexts, TLS)
//! is `NBD_REP_ERR_UNSUP`, so replies are simple ones. Any export name is the
//! one export. Commands `READ`, `WRITE` (+`FUA`), `FLUSH`, `TRIM`,
//! `WRITE_ZEROES`, `DISC`, served in order; at most 32 MiB a request.
//!
//! # QEMU options
//!
//! `argv::disk_args` writes them (a `driver=nbd` block node on the socket
//! `argv::disk_socket`, a `virtio-blk-device` on it whose serial is the
//! disk's id). The server must be listening before QEMU starts: QEMU connects while it
//! parses `-blockdev`, and fails to start if nothing answers.

mod cache;
mod disk;
mod protocol;
mod server;

#[cfg(test)]
mod tests;

pub use disk::{DiskHandle, DiskIoError, DiskStats, Faults, PowerCut, CACHE_CAP, SLOW_DELAY};
pub use server::BlockServer;

use std::path::PathBuf;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("cannot read the disk image's size")]
    Image(#[source] std::io::Error),
    #[error("the disk image is {size} bytes; a disk is a non-zero multiple of 512 bytes")]
    ImageSize { size: u64 },
    #[error("cannot listen on `{}`", socket.display())]
    Bind {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the server's thread")]
    Thread(#[source] std::io::Error),
}
