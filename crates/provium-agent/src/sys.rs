//! Small pieces of the OS interface that several request handlers share:
//! turning an `io::Error` into an [`OpError`], killing a process group,
//! making a descriptor non-blocking, waiting for one descriptor, decoding a
//! wait status, and the [`CancelFlag`] a long-running handler checks.
//!
//! Nothing here knows about requests or channels; it exists so that
//! [`crate::exec`], [`crate::proc`], [`crate::session`] and the waits do not
//! reach into each other for these helpers.

use provium_protocol::{ExitStatus, OpError, OpErrorKind};

/// Set when the host cancels the channel (or the session ends); a handler
/// that can block checks it between waits.
pub type CancelFlag = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// An OS failure as the host sees it: `what` failed, with errno kept.
pub fn os_error(what: &str, e: std::io::Error) -> OpError {
    OpError { kind: OpErrorKind::Os, errno: e.raw_os_error(), message: format!("{what}: {e}") }
}

/// SIGKILLs the process group led by `pid` (a child spawned with its own
/// group); a group that is already gone is fine.
pub fn kill_group(pid: i32) {
    // SAFETY: kill(2) takes two integers and reads or writes no memory of
    // this process, so the call cannot break any Rust invariant; at worst it
    // fails (ESRCH), which is ignored on purpose.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

/// Sets `O_NONBLOCK` on `fd`, keeping its other status flags.
pub fn set_nonblocking(fd: i32) {
    // SAFETY: F_GETFL/F_SETFL only read and change the open file's status
    // flags; they take no pointers, so no memory is touched. `fd` is a
    // descriptor the caller owns and keeps open across the call; a bad one
    // makes both calls fail with EBADF and change nothing.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Waits up to `timeout_ms` for `events` on `fd`; returns its `revents`
/// (0 on timeout or error).
pub fn poll_one(fd: i32, events: libc::c_short, timeout_ms: i32) -> libc::c_short {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: poll(2) reads and writes exactly `nfds` = 1 pollfd at the
    // pointer, and `p` is a live, exclusively borrowed pollfd for the whole
    // call. The kernel keeps no reference to it after returning.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n > 0 {
        p.revents
    } else {
        0
    }
}

/// A raw `wait` status as the protocol reports it.
pub fn decode_status(raw: i32) -> ExitStatus {
    if libc::WIFEXITED(raw) {
        ExitStatus::Exited(libc::WEXITSTATUS(raw))
    } else if libc::WIFSIGNALED(raw) {
        ExitStatus::Signalled(libc::WTERMSIG(raw))
    } else {
        ExitStatus::Exited(-1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn wait_statuses_decode_to_exit_codes_and_signals() {
        // The Linux encoding: exit code in bits 8..16, signal in bits 0..7.
        assert_eq!(decode_status(3 << 8), ExitStatus::Exited(3));
        assert_eq!(decode_status(libc::SIGKILL), ExitStatus::Signalled(libc::SIGKILL));
    }

    #[test]
    fn a_nonblocking_socket_reports_would_block_and_poll_sees_data() {
        let (mut r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
        set_nonblocking(r.as_raw_fd());
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&mut buf).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(poll_one(r.as_raw_fd(), libc::POLLIN, 0), 0);
        w.write_all(b"x").unwrap();
        assert_ne!(poll_one(r.as_raw_fd(), libc::POLLIN, 1000) & libc::POLLIN, 0);
    }
}
