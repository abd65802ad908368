//! Process-1 duties: the shim that hands PID 1 to the image's `/init`, the
//! standalone init that mounts the basics, and small system set-up (loopback).
//!
//! Nothing here talks to the host.

use std::ffi::CString;
use std::path::Path;

use crate::log;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Not PID 1: started by the image itself (`inject_agent = false`).
    Service,
    /// PID 1 forked; the parent exec'd the image's `/init`.
    Shim,
    /// PID 1 with no `/init`: the agent is the init.
    Standalone,
}

/// Guest uptime (CLOCK_BOOTTIME) in milliseconds.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Decides the agent's role and performs the matching set-up.
pub fn become_init() -> Mode {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let argv0 = std::env::args().next().unwrap_or_default();
    let mode = if pid != 1 {
        Mode::Service
    } else if Path::new("/init").exists() && argv0 != "/init" {
        Mode::Shim
    } else {
        Mode::Standalone
    };
    match mode {
        Mode::Shim => {
            // SAFETY: fork in a single-threaded process (no threads started yet).
            let child = unsafe { libc::fork() };
            if child > 0 {
                exec_image_init();
            }
            if child < 0 {
                log::warn("fork failed; serving as standalone init is impossible, exec'ing /init");
                exec_image_init();
            }
            mount_basics(false);
            set_default_env();
        }
        Mode::Standalone => {
            mount_basics(true);
            set_default_env();
        }
        Mode::Service => {}
    }
    mode
}

fn exec_image_init() -> ! {
    let path = CString::new("/init").unwrap();
    let argv = [path.as_ptr(), std::ptr::null()];
    // SAFETY: argv is a NULL-terminated array of valid C strings.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    log::warn(&format!("exec /init failed: {}", std::io::Error::last_os_error()));
    // PID 1 must not exit; sleep forever so the kernel does not panic.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// The kernel starts init with only `HOME=/` and `TERM=linux`.
fn set_default_env() {
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", "/sbin:/bin:/usr/sbin:/usr/bin");
    }
    std::env::set_var("HOME", "/root");
    if std::env::var_os("TERM").is_none() {
        std::env::set_var("TERM", "linux");
    }
}

const PROC_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;

/// Whether something is mounted exactly at `target` (needs /proc).
fn mounted_at(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(target)))
        .unwrap_or(false)
}

fn fs_magic(path: &str) -> Option<i64> {
    let c = CString::new(path).ok()?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 {
        Some(st.f_type as i64)
    } else {
        None
    }
}

fn mount(source: &str, target: &str, fstype: &str, data: &str) {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f, d) = (
        CString::new(source).unwrap(),
        CString::new(target).unwrap(),
        CString::new(fstype).unwrap(),
        CString::new(data).unwrap(),
    );
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, d.as_ptr().cast()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        log::warn(&format!("mount {fstype} on {target}: {e}"));
    }
}

/// Mounts /proc, /sys, /dev (and /tmp for a standalone init) unless they are
/// mounted already.
fn mount_basics(standalone: bool) {
    if fs_magic("/proc") != Some(PROC_MAGIC) {
        mount("proc", "/proc", "proc", "");
    }
    if fs_magic("/sys") != Some(SYSFS_MAGIC) {
        mount("sysfs", "/sys", "sysfs", "");
    }
    // Not "does /dev/null exist": an image's init may have created it as
    // a plain file with a `2>/dev/null` redirection before devtmpfs is up.
    if !mounted_at("/dev") {
        mount("devtmpfs", "/dev", "devtmpfs", "");
    }
    if standalone {
        if !mounted_at("/tmp") {
            mount("tmpfs", "/tmp", "tmpfs", "mode=1777");
        }
        mount("devpts", "/dev/pts", "devpts", "");
        mount("tmpfs", "/run", "tmpfs", "mode=755");
    }
}

/// Sets `lo` up so guest services can listen on 127.0.0.1.
pub fn bring_up_loopback() {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: zeroed ifreq is valid; we fill the name and flags.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: fd is a socket; req is a valid ifreq for these ioctls.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(fd);
    }
}
