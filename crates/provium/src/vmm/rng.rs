//! The seeded hardware RNG's source: provium itself, answering QEMU's
//! `rng-egd` requests on a Unix socket with bytes from the seed.
//!
//! Serving the bytes (instead of QEMU reading a file) lets provium time its
//! first answers. When the device appears, the guest kernel reads it twice
//! on its own: its hwrng thread (a blocking 64-byte read, after which the
//! agent stops that thread) and a non-blocking read at registration, which
//! takes 32 bytes if an answer is already there and none otherwise. Served
//! at once, which of the two happened first varied from boot to boot, and so
//! did the offset at which a test read the stream. The first
//! [`DELAYED_ANSWERS`] answers wait [`ANSWER_DELAY`]: the non-blocking read
//! then always finds nothing, and a test always reads from the same place.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

/// Answers held back at the start (the device's first request, and the one
/// the hwrng thread's read leaves pending).
const DELAYED_ANSWERS: usize = 2;
const ANSWER_DELAY: Duration = Duration::from_millis(100);

/// EGD "read entropy, blocking" command byte.
const EGD_READ_BLOCKING: u8 = 0x02;

/// Listens on `socket` (before QEMU starts and connects) and serves the
/// seeded stream to the one connection QEMU makes. The thread ends when
/// QEMU closes it.
pub fn serve(socket: &Path, seed: u64) -> std::io::Result<()> {
    let listener = UnixListener::bind(socket)?;
    std::thread::Builder::new().name("rng-egd".into()).spawn(move || {
        // QEMU connects once, at start-up; if it never does (it failed to
        // start), the listener goes with the scratch directory's removal
        // only when this thread ends, so give up after a while.
        listener.set_nonblocking(true).ok();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let conn = loop {
            match listener.accept() {
                Ok((c, _)) => break Some(c),
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break None,
            }
        };
        if let Some(mut conn) = conn {
            conn.set_nonblocking(false).ok();
            answer(&mut conn, seed);
        }
    })?;
    Ok(())
}

/// Answers `0x02 <len>` requests with the next `len` bytes of the stream.
fn answer(conn: &mut (impl Read + Write), seed: u64) {
    let mut stream = super::argv::SeededStream::new(seed);
    let mut answered = 0;
    let mut header = [0u8; 2];
    while conn.read_exact(&mut header).is_ok() {
        if header[0] != EGD_READ_BLOCKING {
            return;
        }
        if answered < DELAYED_ANSWERS {
            std::thread::sleep(ANSWER_DELAY);
        }
        let bytes = stream.take(header[1] as usize);
        if conn.write_all(&bytes).is_err() {
            return;
        }
        answered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_get_the_seeded_stream_in_order() {
        let (mut host, mut qemu) = std::os::unix::net::UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || answer(&mut host, 42));
        let mut got = Vec::new();
        for len in [64u8, 32, 255] {
            qemu.write_all(&[EGD_READ_BLOCKING, len]).unwrap();
            let mut buf = vec![0u8; len as usize];
            qemu.read_exact(&mut buf).unwrap();
            got.extend(buf);
        }
        assert_eq!(got, super::super::argv::seeded_bytes(42, 64 + 32 + 255));
        drop(qemu);
        server.join().unwrap();
    }
}
