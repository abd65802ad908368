//! A deterministic writer for `newc` cpio archives, the format the Linux kernel unpacks as an
//! initramfs.
//!
//! Owns only the byte layout: it knows nothing about kernels, modules or the agent. Every entry
//! is owned by root, has mtime 0 and inode numbers counting up from 1, so the same calls always
//! produce the same bytes. Parent directories are created implicitly (mode 0755), each once.
//!
//! ```text
//! entry   = header(110 ASCII bytes) name NUL pad4 data pad4
//! header  = "070701" ino mode uid gid nlink mtime filesize
//!           devmajor devminor rdevmajor rdevminor namesize check   (each 8 hex digits)
//! archive = entry* trailer("TRAILER!!!") pad4
//! ```
//! Padding aligns the name to 4 bytes counting from the start of the header, and the data to
//! 4 bytes; since every header starts aligned, both rules reduce to "pad to a multiple of 4".

use std::collections::HashSet;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// Builds a `newc` archive in memory.
///
/// Paths are given with or without a leading `/`; they are stored relative (`bin/sh`).
#[derive(Debug, Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
    dirs: HashSet<String>,
}

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory with permission bits `mode` (e.g. `0o755`). A directory that already
    /// exists in the archive (explicitly or as an implicit parent) is not written again.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let path = normalize(path);
        if path.is_empty() || self.dirs.contains(path) {
            return self;
        }
        self.parents(path);
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, &[]);
        self
    }

    /// Adds a regular file with permission bits `mode` and contents `data`.
    ///
    /// # Panics
    /// If `data` is 4 GiB or larger, which `newc` cannot represent.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        let path = normalize(path);
        self.parents(path);
        self.entry(path, S_IFREG | (mode & 0o7777), 1, data);
        self
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let path = normalize(path);
        self.parents(path);
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes());
        self
    }

    /// Writes the trailer and returns the archive (its length is a multiple of 4).
    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, TRAILER);
        self.out
    }

    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            let parent = &path[..end];
            if !parent.is_empty() && !self.dirs.contains(parent) {
                self.dirs.insert(parent.to_owned());
                self.entry(parent, S_IFDIR | 0o755, 2, &[]);
            }
            end += 1;
        }
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) {
        let size = u32::try_from(data.len()).expect("cpio newc entries must be under 4 GiB");
        self.next_ino += 1;
        self.header(self.next_ino, mode, nlink, size, path);
        self.out.extend_from_slice(data);
        self.pad4();
    }

    fn header(&mut self, ino: u32, mode: u32, nlink: u32, size: u32, name: &str) {
        let namesize = u32::try_from(name.len() + 1).expect("cpio name too long");
        self.out.reserve(HEADER_LEN + name.len() + 4 + size as usize + 4);
        self.out.extend_from_slice(MAGIC);
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize
        // check
        for field in [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0] {
            self.out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad4();
    }

    fn pad4(&mut self) {
        let pad = (4 - self.out.len() % 4) % 4;
        self.out.resize(self.out.len() + pad, 0);
    }
}

fn normalize(path: &str) -> &str {
    path.trim_start_matches('/').trim_end_matches('/')
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn one_file_archive_has_exact_bytes() {
        let mut w = CpioWriter::new();
        w.file("/hello", 0o644, b"hi\n");
        let got = w.finish();

        // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check.
        let mut want = Vec::new();
        want.extend_from_slice(b"070701");
        want.extend_from_slice(concat!("00000001", "000081a4", "00000000", "00000000", "00000001").as_bytes());
        want.extend_from_slice(concat!("00000000", "00000003", "00000000", "00000000", "00000000").as_bytes());
        want.extend_from_slice(concat!("00000000", "00000006", "00000000").as_bytes());
        want.extend_from_slice(b"hello\0"); // 110 + 6 = 116: aligned
        want.extend_from_slice(b"hi\n\0"); // 3 data bytes + 1 pad
        want.extend_from_slice(b"070701");
        want.extend_from_slice(concat!("00000000", "00000000", "00000000", "00000000", "00000001").as_bytes());
        want.extend_from_slice(concat!("00000000", "00000000", "00000000", "00000000", "00000000").as_bytes());
        want.extend_from_slice(concat!("00000000", "0000000b", "00000000").as_bytes());
        want.extend_from_slice(b"TRAILER!!!\0\0\0\0"); // 110 + 11 = 121 -> 3 pad
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
        assert_eq!(got.len() % 4, 0);
    }

    #[test]
    fn parents_are_created_once_and_in_order() {
        let mut w = CpioWriter::new();
        w.file("a/b/one", 0o600, b"1").file("a/b/two", 0o600, b"22").dir("a", 0o700).symlink("a/c/link", "/a/b/one");
        let names = names(&w.finish());
        assert_eq!(names, ["a", "a/b", "a/b/one", "a/b/two", "a/c", "a/c/link", TRAILER]);
    }

    #[test]
    fn output_is_deterministic() {
        let build = || {
            let mut w = CpioWriter::new();
            w.dir("/etc", 0o755).file("/etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n");
            w.finish()
        };
        assert_eq!(build(), build());
    }

    #[test]
    /// Reads the archive back with the `cpio` applet of the busybox `scripts/setup` installs
    /// (the one the default guest is built with).
    fn busybox_cpio_lists_the_archive() {
        let mut w = CpioWriter::new();
        w.file("/sbin/provium-agent", 0o755, b"\x7fELF....").symlink("bin/sh", "/bin/busybox");
        let archive = w.finish();
        let busybox = crate::guest::default_guest::tests::setup_busybox();
        let mut child = Command::new(&busybox)
            .args(["cpio", "-t"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listed: Vec<_> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
        assert_eq!(listed, ["sbin", "sbin/provium-agent", "bin", "bin/sh"]);
    }

    /// Walks the archive and returns the entry names, checking alignment on the way.
    pub(in crate::guest) fn names(mut buf: &[u8]) -> Vec<String> {
        let field = |h: &[u8], i: usize| {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap();
            usize::from_str_radix(s, 16).unwrap()
        };
        let mut names = Vec::new();
        while !buf.is_empty() {
            assert_eq!(&buf[..6], MAGIC);
            let (size, namesize) = (field(buf, 6), field(buf, 11));
            let name = std::str::from_utf8(&buf[HEADER_LEN..HEADER_LEN + namesize - 1]).unwrap();
            names.push(name.to_owned());
            if name == "TRAILER!!!" {
                break; // zero padding may follow
            }
            let data_at = (HEADER_LEN + namesize).next_multiple_of(4);
            buf = &buf[(data_at + size).next_multiple_of(4)..];
        }
        names
    }
}
