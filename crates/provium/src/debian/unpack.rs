//! The .debs → one tar stream, without extracting anything: each package's data tar
//! (`dpkg-deb --fsys-tarfile`, two packages at a time) is read entry by entry and written
//! into a single output tar, keeping the owners, modes and times of the package headers.
//!
//! Along the way: the merged-/usr rewrite (`bin`, `sbin`, `lib*` → `usr/…`, hard-link
//! targets too; the top-level symlinks are added at the end), directories emitted once,
//! `usr/share/{doc,man,info,locale}/*` dropped, and what the fixups need captured (the
//! base-passwd masters, each package's postinst). Owns the output entry bookkeeping, so the
//! fixups and the kernel modules go through [`Stream`] too. Runs no maintainer script.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use super::{tool, DebianError, Step};
use crate::guest::kmod;

/// Top-level directories that live in `/usr` on a merged-/usr system.
const MERGED: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Directories whose contents are dropped (the directories themselves stay).
const PRUNED: [&str; 4] = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"];
/// Packages read at once (each is one `dpkg-deb` decompressing xz).
const PARALLEL: usize = 2;

/// What went into the key from this file.
pub(super) fn settings() -> String {
    format!("merged={} pruned={}", MERGED.join(","), PRUNED.join(","))
}

/// What the fixups need from the packages, captured while streaming.
#[derive(Debug, Default)]
pub(super) struct Captured {
    /// `usr/share/base-passwd/passwd.master`.
    pub passwd_master: Option<String>,
    /// `usr/share/base-passwd/group.master`.
    pub group_master: Option<String>,
    /// (package file name, postinst text), in package order.
    pub postinsts: Vec<(String, String)>,
}

/// What the stream wrote.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Stats {
    pub entries: u64,
    pub tar_bytes: u64,
}

/// The output tar, with the set of paths already in it.
pub(super) struct Stream<W: Write> {
    out: tar::Builder<Counting<W>>,
    dirs: HashSet<String>,
    files: HashSet<String>,
    /// Newest mtime seen; generated entries get it, so equal inputs give equal images.
    mtime: u64,
    entries: u64,
    duplicates: Vec<String>,
}

/// One package's contents, read by a worker.
struct DebData {
    data: Vec<u8>,
    postinst: Option<String>,
}

impl<W: Write> Stream<W> {
    pub fn new(out: W) -> Self {
        let mut out = tar::Builder::new(Counting { inner: out, bytes: 0 });
        out.mode(tar::HeaderMode::Complete);
        Stream { out, dirs: HashSet::new(), files: HashSet::new(), mtime: 0, entries: 0, duplicates: Vec::new() }
    }

    /// Whether `path` (relative, no leading `/`) is already in the stream.
    pub fn contains(&self, path: &str) -> bool {
        self.dirs.contains(path) || self.files.contains(path)
    }

    /// Streams every package, in order, and returns what the fixups need.
    pub fn add_debs(&mut self, debs: &[PathBuf], progress: &mut dyn FnMut(Step)) -> Result<Captured, DebianError> {
        let mut captured = Captured::default();
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel::<(usize, Result<DebData, DebianError>)>();
        std::thread::scope(|s| -> Result<(), DebianError> {
            for _ in 0..PARALLEL.min(debs.len()) {
                let (tx, next) = (tx.clone(), &next);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(deb) = debs.get(i) else { break };
                    if tx.send((i, read_deb(deb))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            let mut ready = BTreeMap::new();
            let mut want = 0;
            while want < debs.len() {
                let Ok((i, data)) = rx.recv() else { break };
                ready.insert(i, data);
                while let Some(data) = ready.remove(&want) {
                    let deb = &debs[want];
                    let data = match data {
                        Ok(d) => d,
                        Err(e) => {
                            // Stop the workers: nothing after this package will be used.
                            next.store(debs.len(), Ordering::Relaxed);
                            return Err(e);
                        }
                    };
                    let name = deb.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    if let Some(text) = data.postinst {
                        captured.postinsts.push((name, text));
                    }
                    self.add_package(&data.data, &mut captured)
                        .map_err(|source| DebianError::ReadDeb { path: deb.clone(), source })?;
                    want += 1;
                }
            }
            Ok(())
        })?;
        if !self.duplicates.is_empty() {
            let n = self.duplicates.len();
            let some = self.duplicates.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            progress(Step::Warning(format!("{n} paths shipped by two packages; the first one was kept ({some})")));
        }
        Ok(captured)
    }

    fn add_package(&mut self, data: &[u8], captured: &mut Captured) -> io::Result<()> {
        let mut archive = tar::Archive::new(data);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(path) = normalize(&raw) else { continue };
            let path = merged(&path);
            if pruned(&path) {
                continue;
            }
            let mut header = entry.header().clone();
            self.mtime = self.mtime.max(header.mtime().unwrap_or(0));
            match header.entry_type() {
                tar::EntryType::Directory => {
                    if self.dirs.insert(path.clone()) {
                        self.append(&mut header, &path, io::empty())?;
                    }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let hard = header.entry_type() == tar::EntryType::Link;
                    let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
                    let Some(target) = target else { continue };
                    let target = if hard {
                        // Hard links name an earlier entry of the archive; skip one whose target
                        // was pruned.
                        match normalize(&target).map(|t| merged(&t)) {
                            Some(t) if self.files.contains(&t) => t,
                            _ => continue,
                        }
                    } else {
                        symlink_target(&raw, &path, &target)
                    };
                    if !self.claim(&path) {
                        continue;
                    }
                    self.out.append_link(&mut header, &path, &target)?;
                    self.entries += 1;
                }
                _ => {
                    if !self.claim(&path) {
                        continue;
                    }
                    let slot = match path.as_str() {
                        "usr/share/base-passwd/passwd.master" => Some(&mut captured.passwd_master),
                        "usr/share/base-passwd/group.master" => Some(&mut captured.group_master),
                        _ => None,
                    };
                    if let Some(slot) = slot {
                        let mut text = String::new();
                        entry.read_to_string(&mut text)?;
                        self.append(&mut header, &path, text.as_bytes())?;
                        *slot = Some(text);
                    } else {
                        self.append(&mut header, &path, &mut entry)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Marks a non-directory path as taken; `false` (and a note) if a package already has it.
    fn claim(&mut self, path: &str) -> bool {
        if self.dirs.contains(path) || !self.files.insert(path.to_owned()) {
            self.duplicates.push(path.to_owned());
            return false;
        }
        true
    }

    fn append(&mut self, header: &mut tar::Header, path: &str, data: impl Read) -> io::Result<()> {
        self.out.append_data(header, path, data)?;
        self.entries += 1;
        Ok(())
    }

    fn header(&self, kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(size);
        h.set_mtime(self.mtime);
        h
    }

    /// Adds a directory (root-owned) unless there is one.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        if self.contains(path) {
            return Ok(());
        }
        self.dirs.insert(path.to_owned());
        let mut h = self.header(tar::EntryType::Directory, mode, 0, 0, 0);
        self.append(&mut h, path, io::empty())
    }

    /// Adds a file unless the path is taken; returns whether it did.
    pub fn file(&mut self, path: &str, mode: u32, (uid, gid): (u64, u64), bytes: &[u8]) -> io::Result<bool> {
        if self.contains(path) {
            return Ok(false);
        }
        self.files.insert(path.to_owned());
        let mut h = self.header(tar::EntryType::Regular, mode, uid, gid, bytes.len() as u64);
        self.append(&mut h, path, bytes)?;
        Ok(true)
    }

    /// Adds a symlink unless the path is taken; returns whether it did.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<bool> {
        if self.contains(path) {
            return Ok(false);
        }
        self.files.insert(path.to_owned());
        let mut h = self.header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        self.out.append_link(&mut h, path, target)?;
        self.entries += 1;
        Ok(true)
    }

    /// Adds the whole module tree of a kernel at `usr/lib/modules/<release>`, with a
    /// `modules.dep` covering every module.
    pub fn add_modules(&mut self, modules_dir: &Path, release: &str) -> Result<(), DebianError> {
        let modules = kmod::resolve_all(modules_dir)
            .map_err(|source| DebianError::Modules { path: modules_dir.to_owned(), source })?;
        // depmod's outputs that modprobe needs; the rest (aliases, symbols) are left out.
        let generated = [
            ("modules.dep", kmod::modules_dep(&modules).into_bytes()),
            ("modules.dep.bin", kmod::modules_dep_bin(&modules)),
            ("modules.builtin.bin", kmod::modules_builtin_bin(modules_dir)),
        ];
        let base = format!("usr/lib/modules/{release}");
        let write_err = DebianError::stream;
        for d in ["usr", "usr/lib", "usr/lib/modules", &base] {
            self.dir(d, 0o755).map_err(write_err)?;
        }
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let abs = modules_dir.join(&rel);
            let mut entries: Vec<_> = std::fs::read_dir(&abs)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(DebianError::io("cannot list", &abs))?;
            entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
            for e in entries {
                let child = rel.join(e.file_name());
                let path = format!("{base}/{}", child.to_string_lossy());
                let meta = e.metadata().map_err(DebianError::io("cannot stat", &e.path()))?;
                if meta.is_dir() {
                    self.dir(&path, 0o755).map_err(write_err)?;
                    pending.push(child);
                } else if meta.is_file()
                    && !generated.iter().any(|(n, _)| child == Path::new(n))
                    && !self.contains(&path)
                {
                    let file = std::fs::File::open(e.path()).map_err(DebianError::io("cannot read", &e.path()))?;
                    self.files.insert(path.clone());
                    let mut h = self.header(tar::EntryType::Regular, 0o644, 0, 0, meta.len());
                    self.append(&mut h, &path, file).map_err(write_err)?;
                }
            }
        }
        for (name, bytes) in &generated {
            self.file(&format!("{base}/{name}"), 0o644, (0, 0), bytes).map_err(write_err)?;
        }
        Ok(())
    }

    /// Adds the merged-/usr symlinks (`bin -> usr/bin`, …, for the `lib*` dirs that exist)
    /// and ends the archive.
    pub fn finish(mut self) -> io::Result<(Stats, W)> {
        for top in MERGED {
            let usr = format!("usr/{top}");
            if matches!(top, "bin" | "sbin" | "lib") || self.dirs.contains(&usr) {
                self.symlink(top, &usr)?;
            }
        }
        let entries = self.entries;
        let mut out = self.out.into_inner()?;
        out.flush()?;
        Ok((Stats { entries, tar_bytes: out.bytes }, out.inner))
    }
}

/// Counts what goes through.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A package's data tar and postinst, from `dpkg-deb`.
fn read_deb(deb: &Path) -> Result<DebData, DebianError> {
    let run = |arg: &str| -> Result<Vec<u8>, DebianError> {
        let out = tool::output("dpkg-deb", Command::new("dpkg-deb").arg(arg).arg(deb))?;
        if !out.status.success() {
            return Err(DebianError::Tool {
                tool: "dpkg-deb",
                path: deb.to_owned(),
                status: out.status.to_string(),
                stderr: tool::tail(&out.stderr),
            });
        }
        Ok(out.stdout)
    };
    let data = run("--fsys-tarfile")?;
    let control = run("--ctrl-tarfile")?;
    let postinst = postinst(&control).map_err(|source| DebianError::ReadDeb { path: deb.to_owned(), source })?;
    Ok(DebData { data, postinst })
}

fn postinst(control_tar: &[u8]) -> io::Result<Option<String>> {
    let mut archive = tar::Archive::new(control_tar);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if normalize(&String::from_utf8_lossy(&entry.path_bytes())).as_deref() == Some("postinst") {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            return Ok(Some(text));
        }
    }
    Ok(None)
}

/// `./usr/bin/` → `usr/bin`; `None` for the root itself.
pub(super) fn normalize(path: &str) -> Option<String> {
    let p = path.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
    let p = p.strip_prefix("./").unwrap_or(p);
    (!p.is_empty() && p != ".").then(|| p.to_owned())
}

/// The merged-/usr location of a path: `bin/sh` → `usr/bin/sh`, `lib64` → `usr/lib64`.
pub(super) fn merged(path: &str) -> String {
    let top = path.split('/').next().unwrap_or(path);
    if MERGED.contains(&top) {
        format!("usr/{path}")
    } else {
        path.to_owned()
    }
}

fn pruned(path: &str) -> bool {
    PRUNED.iter().any(|dir| path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1))
}

/// The target to give a symlink that moved from `orig` (as in the package) to `path`. A
/// relative target that climbs out of the moved directory would now point elsewhere, so it
/// becomes the absolute (merged) path it meant.
pub(super) fn symlink_target(orig: &str, path: &str, target: &str) -> String {
    let orig = normalize(orig).unwrap_or_default();
    if target.starts_with('/') || orig == path || !target.split('/').any(|c| c == "..") {
        return target.to_owned();
    }
    let mut parts: Vec<&str> = orig.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", merged(&parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_rewrite() {
        assert_eq!(normalize("./bin/sh").map(|p| merged(&p)).unwrap(), "usr/bin/sh");
        assert_eq!(merged("lib64/ld-linux-x86-64.so.2"), "usr/lib64/ld-linux-x86-64.so.2");
        assert_eq!(merged("lib"), "usr/lib");
        assert_eq!(merged("libexec/x"), "libexec/x");
        assert_eq!(merged("usr/bin/sh"), "usr/bin/sh");
        assert_eq!(merged("binx/y"), "binx/y");
        assert_eq!(normalize("./"), None);
        assert_eq!(normalize("./etc/").unwrap(), "etc");
    }

    #[test]
    fn moved_symlinks_keep_their_meaning() {
        // Same directory: still right after the move.
        assert_eq!(symlink_target("./bin/sh", "usr/bin/sh", "dash"), "dash");
        // Climbing out of the moved dir: made absolute.
        assert_eq!(
            symlink_target("./lib/x/libz.so", "usr/lib/x/libz.so", "../../usr/lib/libz.so.1"),
            "/usr/lib/libz.so.1"
        );
        assert_eq!(symlink_target("./sbin/a", "usr/sbin/a", "../bin/b"), "/usr/bin/b");
        // Not moved, or absolute: untouched.
        assert_eq!(symlink_target("./usr/bin/a", "usr/bin/a", "../lib/b"), "../lib/b");
        assert_eq!(symlink_target("./bin/a", "usr/bin/a", "/bin/b"), "/bin/b");
    }

    #[test]
    fn pruning_keeps_the_dirs() {
        assert!(pruned("usr/share/doc/bash/copyright"));
        assert!(pruned("usr/share/locale/de"));
        assert!(!pruned("usr/share/doc"));
        assert!(!pruned("usr/share/docs/x"));
        assert!(!pruned("usr/share/base-passwd/passwd.master"));
    }

    /// A package tar as dpkg-deb gives it (`./` prefix, pre-merged layout).
    fn package_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, mode: u32, link: Option<&str>, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            match link {
                Some(l) => b.append_link(&mut h, path, l).unwrap(),
                None => b.append_data(&mut h, path, data).unwrap(),
            }
        };
        add("./", tar::EntryType::Directory, 0o755, None, b"");
        add("./bin/", tar::EntryType::Directory, 0o755, None, b"");
        add("./bin/su", tar::EntryType::Regular, 0o4755, None, b"su!");
        add("./bin/su2", tar::EntryType::Link, 0o4755, Some("./bin/su"), b"");
        add("./tmp/", tar::EntryType::Directory, 0o1777, None, b"");
        add("./usr/share/doc/x/", tar::EntryType::Directory, 0o755, None, b"");
        add("./usr/share/doc/x/copyright", tar::EntryType::Regular, 0o644, None, b"c");
        b.into_inner().unwrap()
    }

    #[test]
    fn stream_rewrites_dedups_and_keeps_modes() {
        let deb = package_tar();
        let mut s = Stream::new(Vec::new());
        let mut cap = Captured::default();
        s.add_package(&deb, &mut cap).unwrap();
        s.add_package(&deb, &mut cap).unwrap(); // a second package with the same dirs
        assert_eq!(s.duplicates, ["usr/bin/su", "usr/bin/su2"]);
        s.symlink("usr/bin/awk", "/usr/bin/mawk").unwrap();
        let (stats, tar) = s.finish().unwrap();
        assert_eq!(stats.tar_bytes, tar.len() as u64);
        let mut listing = Vec::new();
        for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let link = e.link_name().unwrap().map(|l| format!(" -> {}", l.display())).unwrap_or_default();
            listing.push(format!("{:?} {:o} {}{link}", h.entry_type(), h.mode().unwrap(), e.path().unwrap().display()));
        }
        assert_eq!(
            listing,
            [
                "Directory 755 usr/bin",
                "Regular 4755 usr/bin/su",
                "Link 4755 usr/bin/su2 -> usr/bin/su",
                "Directory 1777 tmp",
                "Symlink 777 usr/bin/awk -> /usr/bin/mawk",
                "Symlink 777 bin -> usr/bin",
                "Symlink 777 sbin -> usr/sbin",
                "Symlink 777 lib -> usr/lib",
            ]
        );
        assert_eq!(stats.entries, listing.len() as u64);
    }
}
