//! A minimal inotify wrapper: one non-blocking instance, watches added and
//! removed by path, and a "wait until something happened" that swallows the
//! events. Callers re-check the file system themselves after each wake, so
//! the events' contents never matter.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

pub struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1(2) takes only flags and touches no memory of
        // ours; it returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is non-negative, so it is an open descriptor that
        // inotify_init1 just created for us; nothing else holds it, so the
        // OwnedFd becomes its only owner and closes it exactly once.
        Ok(Inotify { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Watches `path` for `mask`; returns the watch descriptor.
    pub fn add(&self, path: &str, mask: u32) -> io::Result<i32> {
        let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the kernel reads the path up to its NUL, and `c` is a
        // CString (NUL-terminated, no interior NUL) that lives until the end
        // of this function; the descriptor stays open because `self` owns it.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Stops a watch (an already-gone watch is fine).
    pub fn remove(&self, wd: i32) {
        // SAFETY: inotify_rm_watch(2) takes only integers and touches no
        // memory of ours; a watch that is already gone only makes it fail
        // with EINVAL, which is fine here.
        unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
    }

    /// Waits up to `timeout` for events and discards them; true if any came.
    pub fn wait(&self, timeout: Duration) -> bool {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        if crate::sys::poll_one(self.fd.as_raw_fd(), libc::POLLIN, ms) == 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: read(2) writes at most `buf.len()` bytes at the pointer,
            // and `buf` is a live local array of exactly that length, borrowed
            // mutably for the call only; any bytes are valid for `u8`.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                return true;
            }
        }
    }
}
