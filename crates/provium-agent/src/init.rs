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
    // SAFETY: clock_gettime(2) writes one timespec at the pointer, and `ts`
    // is a live local timespec borrowed mutably for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Decides the agent's role and performs the matching set-up.
pub fn become_init() -> Mode {
    // SAFETY: getpid(2) takes no arguments, touches no memory and cannot
    // fail.
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
            // SAFETY: fork(2) is unsound only if another thread could hold a
            // lock (allocator, stdio, env) that the child then finds taken
            // forever. `become_init` runs first thing in `main`, before the
            // reaper, power or pool threads exist, so this process has exactly
            // one thread and the child inherits no lock in a held state.
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
            if let Some(root) = crate::rootfs::requested() {
                // The disk's driver and file systems are modules: load them
                // from the initramfs before leaving it.
                mount_basics(false);
                crate::kmod::load_wanted();
                if let Err(e) = root.and_then(|spec| crate::rootfs::switch(&spec)) {
                    // Serving from the initramfs would answer every command
                    // with `not found`; the host's boot timeout quotes this.
                    log::warn(&format!("cannot switch to the disk root: {e}; not serving"));
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
            }
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
    // SAFETY: execv(2) reads the path and the argv array up to its NULL
    // entry: `path` is a CString and `argv` holds its pointer then NULL,
    // both alive until after the call (which returns only on failure, and
    // then nothing it was given is kept).
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
        std::env::set_var("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
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
    // SAFETY: `statfs` is a plain C struct of integers and integer arrays,
    // for which all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) reads the path up to its NUL (`c` is a live CString)
    // and writes one `struct statfs` into `st`, a live local of that type
    // borrowed mutably for the call.
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
    // SAFETY: mount(2) reads source, target and fstype up to their NULs and,
    // for the filesystems mounted here (proc, sysfs, devtmpfs, tmpfs,
    // devpts), `data` as a NUL-terminated option string; all four are
    // CStrings that live until the end of this function.
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
    // SAFETY: socket(2) takes only integers and touches no memory of ours;
    // it returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: `ifreq` is a C struct of a char array and a union of integers,
    // sockaddrs and pointers; all-zero bytes are a valid value for every
    // member (null pointers are never dereferenced here).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read (and the first writes) one
    // `struct ifreq` at the pointer, and `req` is a live local ifreq whose
    // name is NUL-terminated ("lo" followed by zeroes). Reading the union's
    // `ifru_flags` is reading a c_short, valid for any bytes (zeroed, or set
    // by the kernel). `fd` is the socket created above, owned only here, and
    // closed exactly once.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(fd);
    }
}
