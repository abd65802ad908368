//! Switching to a root filesystem on a disk: what a guest whose userland
//! is an image (a Debian profile) needs before it can serve.
//!
//! The host says so with [`MARKER`] in the initramfs: `key=value` lines
//! naming the disk by its virtio serial (`serial=provium-root`) and its
//! file system (`fstype=squashfs`). The image is mounted read-only and
//! becomes the lower layer of an overlay whose upper layer is a tmpfs, so
//! every VM writes only to its own memory: many VMs share one image, and a
//! snapshot of the VM's RAM holds every change made to its root.
//!
//! ```text
//!  initramfs /                       after the switch
//!   /.provium/lower   squashfs ro ─┐
//!   /.provium/rw      tmpfs        ├─ overlay ─► /   (dev, proc, sys moved along)
//!   /.provium/root    overlay    ◄─┘
//! ```
//!
//! Runs as PID 1 before any thread exists, after the modules are loaded.

use std::ffi::CString;
use std::time::{Duration, Instant};

/// The file that asks for a disk root, written by the host into the initramfs.
pub const MARKER: &str = "/etc/provium/rootfs";

const LOWER: &str = "/.provium/lower";
const RW: &str = "/.provium/rw";
const NEW_ROOT: &str = "/.provium/root";
/// How long the disk may take to appear after its driver loaded.
const DISK_WAIT: Duration = Duration::from_secs(10);

/// What [`MARKER`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec {
    pub serial: String,
    pub fstype: String,
}

impl RootSpec {
    pub fn parse(text: &str) -> Result<RootSpec, String> {
        let mut serial = None;
        let mut fstype = None;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            match line.split_once('=') {
                Some(("serial", v)) => serial = Some(v.trim().to_string()),
                Some(("fstype", v)) => fstype = Some(v.trim().to_string()),
                _ => return Err(format!("{MARKER}: cannot read line `{line}`")),
            }
        }
        Ok(RootSpec {
            serial: serial.ok_or_else(|| format!("{MARKER} names no serial="))?,
            fstype: fstype.unwrap_or_else(|| "squashfs".to_string()),
        })
    }
}

/// The root the initramfs asks for, if it asks for one.
pub fn requested() -> Option<Result<RootSpec, String>> {
    let text = std::fs::read_to_string(MARKER).ok()?;
    Some(RootSpec::parse(&text))
}

/// Mounts the disk root and makes it `/`. On failure the guest is left in
/// the initramfs and the error says why.
pub fn switch(spec: &RootSpec) -> Result<(), String> {
    let dev = wait_for_disk(&spec.serial)?;
    for dir in [LOWER, RW, NEW_ROOT] {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    }
    mount(Some(&dev), LOWER, &spec.fstype, libc::MS_RDONLY, "")
        .map_err(|e| format!("mount {dev} ({}) on {LOWER}: {e}", spec.fstype))?;
    mount(Some("tmpfs"), RW, "tmpfs", 0, "mode=0755").map_err(|e| format!("mount tmpfs on {RW}: {e}"))?;
    for dir in ["upper", "work"] {
        std::fs::create_dir_all(format!("{RW}/{dir}")).map_err(|e| format!("mkdir {RW}/{dir}: {e}"))?;
    }
    let layers = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
    mount(Some("overlay"), NEW_ROOT, "overlay", 0, &layers).map_err(|e| format!("mount the overlay: {e}"))?;
    for fs in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{fs}");
        std::fs::create_dir_all(&target).map_err(|e| format!("mkdir {target}: {e}"))?;
        mount(Some(fs), &target, "", libc::MS_MOVE, "").map_err(|e| format!("move {fs} into the new root: {e}"))?;
    }
    std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", "", libc::MS_MOVE, "").map_err(|e| format!("move the new root onto /: {e}"))?;
    let dot = CString::new(".").unwrap();
    // SAFETY: chroot(2) reads the path up to its NUL; `dot` is a CString
    // alive for the call.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(format!("chroot: {}", std::io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Links `/dev/disk/by-id/<serial>` to each virtio disk that has a serial
/// (provium names data disks by their id this way), as udev would.
pub fn link_disks_by_id() {
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let serial = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        let serial = serial.trim();
        if serial.is_empty() || serial.contains('/') || !name.starts_with("vd") {
            continue;
        }
        let _ = std::fs::create_dir_all("/dev/disk/by-id");
        let link = format!("/dev/disk/by-id/{serial}");
        let _ = std::fs::remove_file(&link);
        let _ = std::os::unix::fs::symlink(format!("../../{name}"), &link);
    }
}

/// `/dev/vdX` whose virtio serial is `serial`, once it shows up.
fn wait_for_disk(serial: &str) -> Result<String, String> {
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let found = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if found.trim() == serial && std::path::Path::new(&format!("/dev/{name}")).exists() {
                    return Ok(format!("/dev/{name}"));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no disk with serial `{serial}` appeared within {DISK_WAIT:?} (is virtio_blk loaded?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn mount(source: Option<&str>, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> std::io::Result<()> {
    let source = source.map(|s| CString::new(s).unwrap());
    let (t, f, d) = (CString::new(target).unwrap(), CString::new(fstype).unwrap(), CString::new(data).unwrap());
    let src = source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: mount(2) reads source, target and fstype up to their NULs and
    // `data` as a NUL-terminated option string (overlay, tmpfs) or ignores
    // it (MS_MOVE, squashfs); all are CStrings (or null for no source)
    // alive until the end of this function.
    let rc = unsafe { libc::mount(src, t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_parses_and_refuses_junk() {
        let s = RootSpec::parse("serial=provium-root\nfstype=squashfs\n").unwrap();
        assert_eq!(s, RootSpec { serial: "provium-root".into(), fstype: "squashfs".into() });
        assert_eq!(RootSpec::parse("serial=r").unwrap().fstype, "squashfs");
        assert!(RootSpec::parse("fstype=ext4").unwrap_err().contains("no serial"));
        assert!(RootSpec::parse("serial=r\nbogus\n").unwrap_err().contains("`bogus`"));
    }
}
