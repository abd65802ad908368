//! The server's threads: a listener on the Unix socket, and one thread per
//! connection that runs the handshake, then serves requests in order.
//!
//! [`BlockServer`] owns the socket path and every thread. Dropping it wakes
//! the listener (a byte on a private socket pair it polls with the
//! listener), shuts every connection down (`shutdown(2)`, which ends a
//! thread blocked reading), joins them all and removes the socket file.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::disk::{Disk, DiskHandle, DiskIoError, WriteKind};
use super::protocol::{self as p, ExportInfo, Negotiated, Request};
use super::NbdError;
use crate::sync::lock;

/// Reply buffering: small replies pile up here while the client has more
/// requests in flight, and go out in one `write` when it has none.
const REPLY_BUFFER: usize = 256 << 10;
const REQUEST_BUFFER: usize = 256 << 10;

/// An NBD server for one disk image on a Unix socket.
pub struct BlockServer {
    disk: DiskHandle,
    socket: PathBuf,
    wake: UnixStream,
    listener: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<Connection>>>,
}

struct Connection {
    stream: UnixStream,
    thread: JoinHandle<()>,
}

impl BlockServer {
    /// Binds `socket` (before QEMU starts) and serves `image` (opened by the
    /// caller, for reading and writing unless `readonly`). The image's
    /// length is the disk's size, a multiple of 512.
    pub fn serve(socket: &Path, image: std::fs::File, readonly: bool) -> Result<BlockServer, NbdError> {
        let disk = DiskHandle::open(image, readonly)?;
        let listener =
            UnixListener::bind(socket).map_err(|source| NbdError::Bind { socket: socket.to_owned(), source })?;
        let (wake, woken) = UnixStream::pair().map_err(NbdError::Thread)?;
        let connections = Arc::new(Mutex::new(Vec::new()));
        let listener = {
            let (disk, connections) = (disk.clone(), connections.clone());
            std::thread::Builder::new()
                .name("nbd-listen".into())
                .spawn(move || listen(&listener, &woken, &disk, &connections))
                .map_err(NbdError::Thread)?
        };
        Ok(BlockServer { disk, socket: socket.to_owned(), wake, listener: Some(listener), connections })
    }

    /// The disk this server serves.
    pub fn disk(&self) -> DiskHandle {
        self.disk.clone()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for BlockServer {
    fn drop(&mut self) {
        // The listener sees the byte (or the hang-up) and returns.
        let _ = self.wake.write_all(&[0]);
        let _ = self.wake.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.listener.take() {
            let _ = t.join();
        }
        for c in std::mem::take(&mut *lock(&self.connections)) {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            let _ = c.thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Accepts connections until `woken` becomes readable.
fn listen(listener: &UnixListener, woken: &UnixStream, disk: &DiskHandle, connections: &Mutex<Vec<Connection>>) {
    loop {
        let mut fds = [
            libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: woken.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `fds` is a live array of two pollfd and the length passed
        // is its length; both descriptors stay open for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %io::Error::last_os_error(), "nbd: poll failed; the listener stops");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "nbd: accept failed");
                continue;
            }
        };
        let mut live = lock(connections);
        // Reap the threads of connections that ended.
        let (done, running): (Vec<_>, Vec<_>) =
            std::mem::take(&mut *live).into_iter().partition(|c| c.thread.is_finished());
        *live = running;
        for c in done {
            let _ = c.thread.join();
        }
        let Ok(ours) = stream.try_clone() else { continue };
        let disk = disk.clone();
        match std::thread::Builder::new().name("nbd-conn".into()).spawn(move || serve_connection(ours, &disk)) {
            Ok(thread) => live.push(Connection { stream, thread }),
            Err(e) => tracing::warn!(error = %e, "nbd: no thread for a connection"),
        }
    }
}

fn serve_connection(stream: UnixStream, disk: &DiskHandle) {
    let Ok(write_half) = stream.try_clone() else { return };
    let mut input = BufReader::with_capacity(REQUEST_BUFFER, stream);
    let mut out = BufWriter::with_capacity(REPLY_BUFFER, write_half);
    disk.0.connected();
    if let Err(e) = serve(&mut input, &mut out, &disk.0) {
        // The client hanging up or the server shutting down look like this.
        tracing::debug!(error = %e, "nbd: connection ended");
    }
    // The listener holds a clone of the stream (to shut it down on drop):
    // hang up for both, or the client would wait for more.
    let _ = input.get_ref().shutdown(std::net::Shutdown::Both);
}

/// The export's size and transmission flags.
fn export_info(disk: &Disk) -> ExportInfo {
    let mut flags =
        p::FLAG_HAS_FLAGS | p::FLAG_SEND_FLUSH | p::FLAG_SEND_FUA | p::FLAG_SEND_TRIM | p::FLAG_SEND_WRITE_ZEROES;
    if disk.readonly() {
        flags |= p::FLAG_READ_ONLY;
    }
    ExportInfo { size: disk.size(), transmission_flags: flags }
}

/// Handshake, then requests until `DISC` or the end of the stream.
pub(super) fn serve(input: &mut BufReader<impl Read>, out: &mut impl Write, disk: &Disk) -> io::Result<()> {
    if p::handshake(input, out, export_info(disk))? == Negotiated::Aborted {
        return Ok(());
    }
    while let Some(req) = Request::read_from(input)? {
        if req.kind == p::CMD_DISC {
            break;
        }
        disk.delay();
        answer(input, out, disk, req)?;
        // Flush only when no further request is already here to answer.
        if input.buffer().is_empty() {
            out.flush()?;
        }
    }
    out.flush()
}

/// Serves one request (reading a `WRITE`'s payload) and queues its reply.
fn answer(input: &mut impl Read, out: &mut impl Write, disk: &Disk, req: Request) -> io::Result<()> {
    let fua = req.flags & p::CMD_FLAG_FUA != 0;
    let len = u64::from(req.length);
    let result = match req.kind {
        p::CMD_READ if req.length > p::MAX_PAYLOAD => Err(refuse(disk)),
        p::CMD_READ => match disk.read(req.offset, req.length as usize) {
            Ok(data) => return p::write_simple_reply(out, 0, req.cookie, &data),
            Err(e) => Err(errno(&e)),
        },
        p::CMD_WRITE if req.length > p::MAX_PAYLOAD => {
            io::copy(&mut input.take(len), &mut io::sink())?;
            Err(refuse(disk))
        }
        p::CMD_WRITE => {
            let mut data = vec![0u8; req.length as usize];
            input.read_exact(&mut data)?;
            disk.write(req.offset, WriteKind::Data(&data), fua).map_err(|e| errno(&e))
        }
        p::CMD_FLUSH => disk.guest_flush().map_err(|e| errno(&e)),
        p::CMD_TRIM => disk.write(req.offset, WriteKind::Trim(len), fua).map_err(|e| errno(&e)),
        p::CMD_WRITE_ZEROES => disk.write(req.offset, WriteKind::Zeroes(len), fua).map_err(|e| errno(&e)),
        _ => Err(refuse(disk)),
    };
    p::write_simple_reply(out, result.err().unwrap_or(0), req.cookie, &[])
}

/// A request refused before it reached the disk: counted, `EINVAL`.
fn refuse(disk: &Disk) -> u32 {
    disk.refused();
    p::EINVAL
}

/// The NBD error a failed access answers with.
fn errno(e: &DiskIoError) -> u32 {
    match e {
        DiskIoError::Fault { .. } | DiskIoError::Io { .. } => p::EIO,
        DiskIoError::ReadOnly { .. } => p::EPERM,
        DiskIoError::OutOfRange { op: "read" | "trim", .. } => p::EINVAL,
        DiskIoError::OutOfRange { .. } => p::ENOSPC,
    }
}
