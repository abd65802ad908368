//! Copies between the host and the guest: [`Vm::copy_from_host`] and
//! [`Vm::copy_from_vm`]. A file, or a directory with everything under it;
//! permission bits are kept and symbolic links stay links. A link named
//! directly is followed (like `cp -H`).
//!
//! Only existing agent operations are used: `read_file`, `write_file`,
//! `stat`, `listdir`, `mkdir`, and three raw syscalls (`chmod`, `readlink`,
//! `symlink`) for what the file operations do not carry: exact modes
//! (`write_file` and `mkdir` are subject to the agent's umask and leave an
//! existing file's mode alone) and links.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use provium_protocol::{EntryType, SyscallCall};

use super::NixosError;
use crate::vm::{Vm, VmError};

/// x86_64 syscall numbers (the guests' architecture).
const SYS_SYMLINK: i64 = 88;
const SYS_READLINK: i64 = 89;
const SYS_CHMOD: i64 = 90;
/// Longest link target read back (Linux's `PATH_MAX`).
const PATH_MAX: usize = 4096;

const TO_GUEST: &str = "copy_from_host";
const FROM_GUEST: &str = "copy_from_vm";

/// `path` joined under `dir` in the guest's `/`-separated namespace.
fn guest_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn c_path(path: &str) -> Vec<u8> {
    let mut b = path.as_bytes().to_vec();
    b.push(0);
    b
}

fn kind(t: EntryType) -> &'static str {
    match t {
        EntryType::File => "regular file",
        EntryType::Directory => "directory",
        EntryType::Symlink => "symbolic link",
        EntryType::Fifo => "fifo",
        EntryType::Socket => "socket",
        EntryType::BlockDevice => "block device",
        EntryType::CharDevice => "character device",
        EntryType::Other => "special file",
    }
}

impl Vm {
    fn host_failed(&self, op: &'static str, what: &'static str, path: &Path, source: std::io::Error) -> VmError {
        self.nixos_error(|vm| NixosError::Host { vm, op, what, path: path.to_path_buf(), source })
    }

    /// A raw syscall whose failure is an OS error of `op` on `path`; its
    /// return value and buffers otherwise.
    fn guest_syscall(
        &mut self,
        op: &'static str,
        what: &str,
        path: &str,
        call: SyscallCall,
    ) -> Result<(usize, Vec<Vec<u8>>), VmError> {
        let out = self.with_agent(op, |a| a.syscall(call))?;
        match usize::try_from(out.ret) {
            Ok(ret) => Ok((ret, out.out_bufs)),
            Err(_) => Err(VmError::Os {
                vm: self.name().to_string(),
                op,
                message: format!("{what} `{path}`: {}", std::io::Error::from_raw_os_error(out.errno)),
                errno: Some(out.errno),
            }),
        }
    }

    fn guest_chmod(&mut self, op: &'static str, path: &str, perm: u32) -> Result<(), VmError> {
        let mut call = SyscallCall::new(SYS_CHMOD, [0, i64::from(perm), 0, 0, 0, 0]);
        call.buf(c_path(path), Some(0));
        self.guest_syscall(op, "chmod", path, call).map(drop)
    }

    /// Copies the host file or directory `host` to `guest` (the copy's own
    /// path, not a directory to put it in); missing parent directories are
    /// created. What exists at `guest` is replaced (a directory: merged).
    pub fn copy_from_host(&mut self, host: &Path, guest: &str) -> Result<(), VmError> {
        let md = std::fs::metadata(host).map_err(|e| self.host_failed(TO_GUEST, "read", host, e))?;
        if let Some(parent) = Path::new(guest).parent().and_then(Path::to_str).filter(|p| !p.is_empty()) {
            self.with_agent(TO_GUEST, |a| a.mkdir(parent, true, 0o755))?;
        }
        self.put(host, guest, &md)
    }

    fn put(&mut self, host: &Path, guest: &str, md: &std::fs::Metadata) -> Result<(), VmError> {
        let perm = md.permissions().mode() & 0o7777;
        match EntryType::of(md.file_type()) {
            EntryType::File => {
                let data = std::fs::read(host).map_err(|e| self.host_failed(TO_GUEST, "read", host, e))?;
                self.with_agent(TO_GUEST, |a| a.write_file(guest, &data, perm, false))?;
                self.guest_chmod(TO_GUEST, guest, perm)
            }
            EntryType::Directory => {
                // Writable by us while it fills; its own mode comes last.
                self.with_agent(TO_GUEST, |a| a.mkdir(guest, true, 0o700))?;
                let entries = std::fs::read_dir(host).map_err(|e| self.host_failed(TO_GUEST, "list", host, e))?;
                let mut children = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| self.host_failed(TO_GUEST, "list", host, e))?;
                    children.push(entry.path());
                }
                children.sort();
                for child in children {
                    let md = child.symlink_metadata().map_err(|e| self.host_failed(TO_GUEST, "read", &child, e))?;
                    let name = child.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    self.put(&child, &guest_join(guest, &name), &md)?;
                }
                self.guest_chmod(TO_GUEST, guest, perm)
            }
            EntryType::Symlink => {
                let target = std::fs::read_link(host).map_err(|e| self.host_failed(TO_GUEST, "read", host, e))?;
                let target = target.to_string_lossy();
                // A link replaces what is there (as a file copy would).
                let _ = self.with_agent(TO_GUEST, |a| a.unlink(guest));
                let mut call = SyscallCall::new(SYS_SYMLINK, [0; 6]);
                call.buf(c_path(&target), Some(0));
                call.buf(c_path(guest), Some(1));
                self.guest_syscall(TO_GUEST, "symlink", guest, call).map(drop)
            }
            other => {
                let path = host.display().to_string();
                Err(self.nixos_error(|vm| NixosError::Unsupported { vm, op: TO_GUEST, path, kind: kind(other) }))
            }
        }
    }

    /// Copies the guest file or directory `guest` into the host directory
    /// `host_dir` (created if missing), under its own name; returns the
    /// copy's path.
    pub fn copy_from_vm(&mut self, guest: &str, host_dir: &Path) -> Result<PathBuf, VmError> {
        let name = guest.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        if name.is_empty() || name == "." || name == ".." {
            return Err(self.nixos_error(|vm| NixosError::NoName { vm, path: guest.to_string() }));
        }
        let md = self.with_agent(FROM_GUEST, |a| a.stat(guest, true))?;
        std::fs::create_dir_all(host_dir).map_err(|e| self.host_failed(FROM_GUEST, "create", host_dir, e))?;
        let target = host_dir.join(name);
        self.get(guest, &target, md.entry_type, md.perm)?;
        Ok(target)
    }

    fn get(&mut self, guest: &str, host: &Path, ty: EntryType, perm: u32) -> Result<(), VmError> {
        let set_mode = |vm: &Vm, path: &Path| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm))
                .map_err(|e| vm.host_failed(FROM_GUEST, "set the mode of", path, e))
        };
        match ty {
            EntryType::File => {
                let data = self.with_agent(FROM_GUEST, |a| a.read_file(guest))?;
                // Replaced, not rewritten: the old copy may be read-only.
                if host.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                    let _ = std::fs::remove_file(host);
                }
                std::fs::write(host, data).map_err(|e| self.host_failed(FROM_GUEST, "write", host, e))?;
                set_mode(self, host)
            }
            EntryType::Directory => {
                std::fs::create_dir_all(host).map_err(|e| self.host_failed(FROM_GUEST, "create", host, e))?;
                // Writable by us while it fills; its own mode comes last.
                std::fs::set_permissions(host, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| self.host_failed(FROM_GUEST, "set the mode of", host, e))?;
                for entry in self.with_agent(FROM_GUEST, |a| a.listdir(guest))? {
                    let child = guest_join(guest, &entry.name);
                    let child_perm = match entry.entry_type {
                        EntryType::Symlink => 0,
                        _ => self.with_agent(FROM_GUEST, |a| a.stat(&child, false))?.perm,
                    };
                    self.get(&child, &host.join(&entry.name), entry.entry_type, child_perm)?;
                }
                set_mode(self, host)
            }
            EntryType::Symlink => {
                let mut call = SyscallCall::new(SYS_READLINK, [0, 0, PATH_MAX as i64, 0, 0, 0]);
                call.buf(c_path(guest), Some(0));
                call.buf(vec![0; PATH_MAX], Some(1));
                let (len, bufs) = self.guest_syscall(FROM_GUEST, "readlink", guest, call)?;
                let target = bufs.get(1).map(|b| &b[..len.min(b.len())]).unwrap_or_default();
                let target = String::from_utf8_lossy(target).into_owned();
                if host.symlink_metadata().is_ok() {
                    let _ = std::fs::remove_file(host);
                }
                std::os::unix::fs::symlink(&target, host).map_err(|e| self.host_failed(FROM_GUEST, "create", host, e))
            }
            other => {
                let path = guest.to_string();
                Err(self.nixos_error(|vm| NixosError::Unsupported { vm, op: FROM_GUEST, path, kind: kind(other) }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_join_with_one_slash() {
        assert_eq!(guest_join("/tmp/d/", "x"), "/tmp/d/x");
        assert_eq!(guest_join("/", "etc"), "/etc");
        assert_eq!(c_path("/a"), b"/a\0");
    }

    #[test]
    fn copying_out_needs_a_name_and_a_running_guest() {
        let images = std::sync::Arc::new(crate::image::Images::new(Default::default()));
        let mut vm = Vm::new("c", "default", Default::default(), images, crate::vmm::Accel::Tcg);
        let dir = tempfile::tempdir().unwrap();
        let e = vm.copy_from_vm("/", dir.path()).unwrap_err().to_string();
        assert_eq!(e, "vm `c`: copy_from_vm: `/` has no name to copy under (name a file or a directory)");
        let e = vm.copy_from_vm("/etc/", dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("vm `c` is created; copy_from_vm needs a booted VM"), "{e}");
        let e = vm.copy_from_host(&dir.path().join("missing"), "/tmp/x").unwrap_err();
        assert!(crate::errors::chain(&e).starts_with("vm `c`: copy_from_host: cannot read `"), "{e}");
    }
}
