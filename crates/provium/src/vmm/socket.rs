//! Connecting to the Unix sockets QEMU creates (QMP, the agent's port):
//! QEMU makes them a moment after it starts, so a connect retries until a
//! deadline.

use std::time::{Duration, Instant};

/// Connects to a Unix socket QEMU is about to create, retrying until
/// `deadline`.
pub fn connect_when_ready(
    path: &std::path::Path,
    deadline: Instant,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
