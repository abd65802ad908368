//! Agent-side waits: `WaitPort` (a TCP listener appears or goes away) and
//! `WaitPath` (a path appears or goes away), plus the wall clock
//! (`SetTime`, `GetTime`).
//!
//! Waiting in the guest saves the host a round trip per check. Ports are
//! checked in `/proc/net/tcp{,6}` every [`PORT_EVERY`]; paths are watched
//! with inotify on the nearest existing ancestor directory (re-armed as
//! directories appear or vanish) and re-checked on each event and at least
//! every [`PATH_EVERY`]. Both stop on a host cancel.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use provium_protocol::{OpError, OpErrorKind, Response};

use crate::inotify::Inotify;
use crate::sys::CancelFlag;

const PORT_EVERY: Duration = Duration::from_millis(5);
const PATH_EVERY: Duration = Duration::from_millis(50);
const TCP_LISTEN: &str = "0A";

/// "10s", "1.5s", "250ms": how a timeout is named in messages.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        // `Display` of f64 drops a zero fraction: 10.0 → "10".
        format!("{}s", ms as f64 / 1000.0)
    }
}

fn cancelled(what: String) -> OpError {
    OpError { kind: OpErrorKind::Cancelled, errno: None, message: format!("{what}: cancelled by the host") }
}

fn timed_out(message: String) -> OpError {
    OpError { kind: OpErrorKind::TimedOut, errno: None, message }
}

/// Whether a `/proc/net/tcp` or `tcp6` table has a listening socket on `port`.
pub fn listening(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1).unwrap_or("");
        let state = cols.nth(1).unwrap_or("");
        let local_port = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        state == TCP_LISTEN && local_port == Some(port)
    })
}

fn port_open(port: u16) -> Result<bool, OpError> {
    let v4 = std::fs::read_to_string("/proc/net/tcp").map_err(|e| OpError {
        kind: OpErrorKind::Os,
        errno: e.raw_os_error(),
        message: format!("wait_port: read `/proc/net/tcp`: {e}"),
    })?;
    // No tcp6 table when IPv6 is off.
    let v6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    Ok(listening(&v4, port) || listening(&v6, port))
}

pub fn wait_port(port: u16, open: bool, timeout_ms: u64, cancel: &CancelFlag) -> Result<Response, OpError> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if port_open(port)? == open {
            return Ok(Response::Done);
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(cancelled(format!("wait for TCP port {port}")));
        }
        if Instant::now() >= deadline {
            let after = human_ms(timeout_ms);
            return Err(timed_out(if open {
                format!("nothing listening on TCP port {port} after {after} (connection refused)")
            } else {
                format!("TCP port {port} still open after {after}")
            }));
        }
        std::thread::sleep(PORT_EVERY.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// The directory to watch for `path` to appear or vanish: its parent if
/// that exists, else the parent's nearest existing ancestor.
pub fn watch_dir(path: &Path, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let mut dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from(if path.is_absolute() { "/" } else { "." }),
    };
    while !exists(&dir) {
        match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => dir = p.to_path_buf(),
            _ => return PathBuf::from(if path.is_absolute() { "/" } else { "." }),
        }
    }
    dir
}

const DIR_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

pub fn wait_path(path: &str, exists: bool, timeout_ms: u64, cancel: &CancelFlag) -> Result<Response, OpError> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let target = Path::new(path);
    let inotify = Inotify::new().map_err(|e| OpError {
        kind: OpErrorKind::Os,
        errno: e.raw_os_error(),
        message: format!("wait_path `{path}`: inotify: {e}"),
    })?;
    let mut watched: Option<(PathBuf, i32)> = None;
    loop {
        // Arm before checking, so a change right after the check wakes us.
        let dir = watch_dir(target, |p| p.is_dir());
        if watched.as_ref().map(|(d, _)| d) != Some(&dir) {
            if let Some((_, wd)) = watched.take() {
                inotify.remove(wd);
            }
            if let Ok(wd) = inotify.add(&dir.to_string_lossy(), DIR_MASK) {
                watched = Some((dir, wd));
            }
        }
        if std::fs::symlink_metadata(target).is_ok() == exists {
            return Ok(Response::Done);
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(cancelled(format!("wait for `{path}`")));
        }
        let now = Instant::now();
        if now >= deadline {
            let within = human_ms(timeout_ms);
            return Err(timed_out(if exists {
                format!("`{path}` did not appear within {within}")
            } else {
                format!("`{path}` still exists after {within}")
            }));
        }
        inotify.wait(PATH_EVERY.min(deadline - now));
    }
}

pub fn set_time(ns: i64) -> Result<Response, OpError> {
    let ts = libc::timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) };
    // SAFETY: clock_settime(2) reads one timespec at the pointer, and `ts` is
    // a live local timespec (tv_nsec in 0..1e9 by construction).
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(OpError { kind: OpErrorKind::Os, errno: e.raw_os_error(), message: format!("set_time: {e}") });
    }
    Ok(Response::Done)
}

pub fn get_time() -> Result<Response, OpError> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes one timespec at the pointer, and `ts`
    // is a live local timespec borrowed mutably for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    Ok(Response::Time(ts.tv_sec * 1_000_000_000 + ts.tv_nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:22B8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 1235 1 0 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0 100 0 0 10 0
";

    #[test]
    fn listeners_are_found_by_port_and_state() {
        assert!(listening(TCP, 8888));
        assert!(!listening(TCP, 8080), "an established connection is not a listener");
        assert!(listening(TCP6, 80));
        assert!(!listening("", 80));
    }

    #[test]
    fn timeouts_read_like_people_write_them() {
        assert_eq!(human_ms(10_000), "10s");
        assert_eq!(human_ms(1500), "1.5s");
        assert_eq!(human_ms(250), "250ms");
    }

    #[test]
    fn the_watched_directory_is_the_nearest_existing_one() {
        let has = |set: &'static [&'static str]| move |p: &Path| set.contains(&p.to_str().unwrap());
        assert_eq!(watch_dir(Path::new("/a/b/c"), has(&["/", "/a", "/a/b"])), Path::new("/a/b"));
        assert_eq!(watch_dir(Path::new("/a/b/c"), has(&["/", "/a"])), Path::new("/a"));
        assert_eq!(watch_dir(Path::new("/a/b/c"), has(&["/"])), Path::new("/"));
        assert_eq!(watch_dir(Path::new("/x"), has(&["/"])), Path::new("/"));
        assert_eq!(watch_dir(Path::new("rel"), has(&[])), Path::new("."));
    }

    #[test]
    fn wait_path_sees_a_file_appear_in_a_new_directory() {
        let base = std::env::temp_dir().join(format!("provium-waitpath-{}", std::process::id()));
        let target = base.join("d/e/f");
        let t = target.to_str().unwrap().to_string();
        let cancel = CancelFlag::default();
        let err = wait_path(&t, true, 30, &cancel).unwrap_err();
        assert_eq!(err.kind, OpErrorKind::TimedOut);
        assert!(err.message.ends_with("did not appear within 30ms"), "{}", err.message);
        let maker = {
            let target = target.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(&target, b"").unwrap();
            })
        };
        let start = Instant::now();
        wait_path(&t, true, 5000, &cancel).unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        maker.join().unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
