//! Guest RAM in shared memory: a file in `/dev/shm` when the host has room
//! for all of it, which makes snapshots a copy of that file instead of a
//! stream of every page.

use std::path::PathBuf;

use crate::cleanup::ScratchDir;

/// A RAM file in shared memory for a new guest, when the host has a
/// `/dev/shm` with room for all of it and `PROVIUM_SHM` is not `off`.
/// `None`: the guest gets anonymous memory (snapshots then carry RAM in the
/// stream: slower, same result). The room matters: a guest touching memory
/// past a full tmpfs would crash QEMU.
pub(super) fn shared_ram(label: &str, memory_mib: u64) -> Option<(PathBuf, ScratchDir)> {
    if std::env::var("PROVIUM_SHM").is_ok_and(|v| v == "off" || v == "0") {
        return None;
    }
    let root = crate::cleanup::shm_root()?;
    if free_bytes(&root)? < (memory_mib << 20) + (256 << 20) {
        tracing::debug!(vm = label, "not enough room in /dev/shm for guest RAM; using anonymous memory");
        return None;
    }
    let dir = ScratchDir::new_in(&root, label).ok()?;
    Some((dir.path().join("ram"), dir))
}

/// Bytes free for unprivileged users on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a live, writable
    // statvfs for the call to fill.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}
