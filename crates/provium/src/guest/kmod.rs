//! Kernel module selection for the default guest: finds the wanted modules in an unpacked
//! `lib/modules/<release>` tree, follows their dependencies and returns them in load order.
//!
//! Owns module lookup, the ELF `.modinfo` reading (a small hand-written ELF64 section walk) and
//! the text of `modules.dep`. It does not load anything: the guest agent does, in the order
//! given here. Debian's package ships no `modules.dep` (depmod runs at install time), hence
//! the dependencies are read from each module's `depends=` modinfo string.
//!
//! Module names use `_`; file names may use `-` (`virtio-rng.ko` is module `virtio_rng`).
//! A name listed in `modules.builtin` is built into the kernel and silently skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A kernel module ready to be put into an initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    /// Module name, with `_` (`virtio_rng`).
    pub name: String,
    /// Path relative to the modules dir, `/`-separated (`kernel/drivers/char/hw_random/virtio-rng.ko`).
    pub rel_path: String,
    /// Names of the modules it depends on directly (from `.modinfo`).
    pub depends: Vec<String>,
    /// The `.ko` file contents.
    pub bytes: Vec<u8>,
}

/// Why the module set could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("listing kernel modules under `{path}`")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading kernel module `{path}`")]
    ReadModule {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel module `{name}` ({wanted_by}) not found under `{dir}`")]
    MissingModule {
        name: String,
        /// `requested` or ``needed by `other` ``.
        wanted_by: String,
        dir: PathBuf,
    },
    #[error("kernel module `{path}` is compressed; only plain `.ko` files are supported")]
    CompressedModule { path: PathBuf },
    #[error("kernel module `{path}` is not a valid ELF64 module: {reason}")]
    BadElf { path: PathBuf, reason: &'static str },
    #[error("kernel module `{name}` depends on itself through a cycle")]
    DependencyCycle { name: String },
}

/// Canonical module name for a file or dependency name.
pub fn module_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"].iter().find_map(|ext| base.strip_suffix(ext)).unwrap_or(base);
    stem.replace('-', "_")
}

/// Resolves `wanted` (and everything they depend on) under `modules_dir`
/// (`…/lib/modules/<release>`). The result is in load order: dependencies first, otherwise in
/// the order asked for.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<KernelModule>, KmodError> {
    let mut r = Resolver {
        dir: modules_dir,
        index: index(modules_dir)?,
        builtin: builtin(modules_dir),
        done: HashSet::new(),
        visiting: HashSet::new(),
        out: Vec::new(),
        keep_bytes: true,
    };
    for name in wanted {
        r.visit(&module_name(name), None)?;
    }
    Ok(r.out)
}

/// Every module under `modules_dir` in load order, for a guest that holds the whole tree (a
/// Debian image). Reads each module once for its dependencies and keeps no contents
/// ([`KernelModule::bytes`] is empty).
pub(crate) fn resolve_all(modules_dir: &Path) -> Result<Vec<KernelModule>, KmodError> {
    let index = index(modules_dir)?;
    let names: Vec<String> = index.keys().cloned().collect();
    let mut r = Resolver {
        dir: modules_dir,
        index,
        builtin: builtin(modules_dir),
        done: HashSet::new(),
        visiting: HashSet::new(),
        out: Vec::new(),
        keep_bytes: false,
    };
    for name in &names {
        r.visit(name, None)?;
    }
    Ok(r.out)
}

/// `modules.dep.bin` for `modules`: the lines of [`modules_dep`] keyed by module name, in
/// kmod's index format (what `modprobe` reads; it ignores the text file).
pub(crate) fn modules_dep_bin(modules: &[KernelModule]) -> Vec<u8> {
    let text = modules_dep(modules);
    let entries =
        modules.iter().zip(text.lines()).enumerate().map(|(i, (m, line))| (m.name.clone(), line.to_owned(), i as u32));
    super::kmod_index::write(entries)
}

/// `modules.builtin.bin` from the `modules.builtin` of `modules_dir` (empty index if none).
pub(crate) fn modules_builtin_bin(modules_dir: &Path) -> Vec<u8> {
    let mut names: Vec<String> = builtin(modules_dir).into_iter().collect();
    names.sort();
    super::kmod_index::write(names.into_iter().map(|n| (n, String::new(), 0)))
}

/// The text of `modules.dep` for `modules` (in load order): one line per module, listing all
/// its transitive dependencies with the one to load first last, as depmod does.
pub fn modules_dep(modules: &[KernelModule]) -> String {
    let pos: HashMap<&str, usize> = modules.iter().enumerate().map(|(i, m)| (m.name.as_str(), i)).collect();
    let mut text = String::new();
    for m in modules {
        let mut deps = HashSet::new();
        let mut stack: Vec<&str> = m.depends.iter().map(String::as_str).collect();
        while let Some(d) = stack.pop() {
            if let Some(&i) = pos.get(d) {
                if deps.insert(i) {
                    stack.extend(modules[i].depends.iter().map(String::as_str));
                }
            }
        }
        let mut deps: Vec<usize> = deps.into_iter().collect();
        deps.sort_unstable_by(|a, b| b.cmp(a));
        text.push_str(&m.rel_path);
        text.push(':');
        for i in deps {
            text.push(' ');
            text.push_str(&modules[i].rel_path);
        }
        text.push('\n');
    }
    text
}

struct Resolver<'a> {
    dir: &'a Path,
    index: BTreeMap<String, String>,
    builtin: HashSet<String>,
    done: HashSet<String>,
    visiting: HashSet<String>,
    out: Vec<KernelModule>,
    /// Whether [`KernelModule::bytes`] is filled in (else it is left empty once read).
    keep_bytes: bool,
}

impl Resolver<'_> {
    fn visit(&mut self, name: &str, needed_by: Option<&str>) -> Result<(), KmodError> {
        if self.done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if !self.visiting.insert(name.to_owned()) {
            return Err(KmodError::DependencyCycle { name: name.to_owned() });
        }
        let rel_path = self.index.get(name).cloned().ok_or_else(|| KmodError::MissingModule {
            name: name.to_owned(),
            wanted_by: needed_by.map_or("requested".into(), |n| format!("needed by `{n}`")),
            dir: self.dir.join("kernel"),
        })?;
        let path = self.dir.join(&rel_path);
        if !rel_path.ends_with(".ko") {
            return Err(KmodError::CompressedModule { path });
        }
        let mut bytes = std::fs::read(&path).map_err(|source| KmodError::ReadModule { path: path.clone(), source })?;
        let depends = depends(&bytes).map_err(|reason| KmodError::BadElf { path, reason })?;
        if !self.keep_bytes {
            bytes = Vec::new();
        }
        for dep in &depends {
            self.visit(dep, Some(name))?;
        }
        self.visiting.remove(name);
        self.done.insert(name.to_owned());
        self.out.push(KernelModule { name: name.to_owned(), rel_path, depends, bytes });
        Ok(())
    }
}

/// Maps every module name under `<dir>/kernel` to its relative path (first in sorted order
/// wins, so the result is deterministic).
fn index(dir: &Path) -> Result<BTreeMap<String, String>, KmodError> {
    let mut index = BTreeMap::new();
    let mut pending = vec![PathBuf::from("kernel")];
    while let Some(rel) = pending.pop() {
        let abs = dir.join(&rel);
        let read_err = |source| KmodError::ReadDir { path: abs.clone(), source };
        let mut entries: Vec<_> =
            std::fs::read_dir(&abs).map_err(read_err)?.collect::<Result<_, _>>().map_err(read_err)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.iter().rev() {
            let child = rel.join(entry.file_name());
            let file_type = entry.file_type().map_err(read_err)?;
            if file_type.is_dir() {
                pending.push(child);
            } else if let Some(s) = child.to_str().filter(|s| s.contains(".ko")) {
                let name = module_name(s);
                if !name.contains('.') {
                    index.entry(name).or_insert_with(|| s.to_owned());
                }
            }
        }
    }
    Ok(index)
}

/// Names of built-in modules, from `modules.builtin` (missing file: none).
fn builtin(dir: &Path) -> HashSet<String> {
    std::fs::read_to_string(dir.join("modules.builtin"))
        .map(|text| text.lines().map(module_name).collect())
        .unwrap_or_default()
}

/// The `depends=` list of a module's `.modinfo` section, as module names.
fn depends(elf: &[u8]) -> Result<Vec<String>, &'static str> {
    let modinfo = section(elf, b".modinfo")?.ok_or("no .modinfo section")?;
    let list = modinfo.split(|&b| b == 0).find_map(|kv| kv.strip_prefix(b"depends=")).unwrap_or_default();
    let list = std::str::from_utf8(list).map_err(|_| "depends= is not UTF-8")?;
    Ok(list.split(',').filter(|s| !s.is_empty()).map(module_name).collect())
}

/// Finds the contents of the section named `want` in a little-endian ELF64 file.
fn section<'a>(elf: &'a [u8], want: &[u8]) -> Result<Option<&'a [u8]>, &'static str> {
    const SHDR_LEN: usize = 64;
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("no ELF magic");
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a little-endian ELF64 file");
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    let truncated = "truncated ELF header";
    let shoff = u64_at(0x28).ok_or(truncated)?;
    let shentsize = u16_at(0x3a).ok_or(truncated)?;
    let shnum = u16_at(0x3c).ok_or(truncated)?;
    let shstrndx = u16_at(0x3e).ok_or(truncated)?;
    if shentsize < SHDR_LEN || shstrndx >= shnum {
        return Err("bad section header table");
    }
    // (name offset, contents) of section `i`.
    let header = |i: usize| -> Result<(usize, &'a [u8]), &'static str> {
        let h = shoff + i * shentsize;
        let bad = "section header out of bounds";
        let name = u32_at(h).ok_or(bad)?;
        let offset = u64_at(h + 24).ok_or(bad)?;
        let size = u64_at(h + 32).ok_or(bad)?;
        let end = offset.checked_add(size).ok_or(bad)?;
        Ok((name, elf.get(offset..end).ok_or("section contents out of bounds")?))
    };
    let (_, names) = header(shstrndx)?;
    for i in 0..shnum {
        let (name_off, contents) = header(i)?;
        let name = names.get(name_off..).ok_or("section name out of bounds")?;
        if name.split(|&b| b == 0).next() == Some(want) {
            return Ok(Some(contents));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with sections: null, .shstrtab, .modinfo.
    fn fake_ko(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, off, size) in
            [(0u32, 0usize, 0usize), (1, strtab_off, shstrtab.len()), (11, modinfo_off, modinfo.len())]
        {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        }
        elf
    }

    fn tree(mods: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (rel, deps) in mods {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let info = format!("license=GPL\0depends={deps}\0name={}\0", module_name(rel));
            std::fs::write(path, fake_ko(info.as_bytes())).unwrap();
        }
        std::fs::write(dir.path().join("modules.builtin"), "kernel/drivers/virtio/virtio.ko\n").unwrap();
        dir
    }

    #[test]
    fn resolves_transitively_in_load_order() {
        let dir = tree(&[
            ("kernel/drivers/net/virtio_net.ko", "net_failover,virtio_ring"),
            ("kernel/drivers/net/net_failover.ko", "failover"),
            ("kernel/net/core/failover.ko", ""),
            ("kernel/drivers/virtio/virtio_ring.ko", "virtio"),
            ("kernel/drivers/char/hw_random/virtio-rng.ko", "virtio_ring"),
        ]);
        let mods = resolve(dir.path(), &["virtio_rng", "virtio_net"]).unwrap();
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["virtio_ring", "virtio_rng", "failover", "net_failover", "virtio_net"]);
        assert_eq!(
            modules_dep(&mods),
            "kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko \
             kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko\n"
        );
    }

    #[test]
    fn missing_module_is_named() {
        let dir = tree(&[("kernel/a.ko", "b")]);
        let err = resolve(dir.path(), &["a"]).unwrap_err();
        assert!(matches!(&err, KmodError::MissingModule { name, .. } if name == "b"), "{err}");
        assert!(err.to_string().contains("`b` (needed by `a`)"), "{err}");
    }

    #[test]
    fn compressed_module_is_rejected() {
        let dir = tree(&[]);
        std::fs::create_dir_all(dir.path().join("kernel")).unwrap();
        std::fs::write(dir.path().join("kernel/z.ko.xz"), b"").unwrap();
        let err = resolve(dir.path(), &["z"]).unwrap_err();
        assert!(matches!(err, KmodError::CompressedModule { .. }), "{err}");
    }

    #[test]
    fn cycle_is_reported() {
        let dir = tree(&[("kernel/a.ko", "b"), ("kernel/b.ko", "a")]);
        assert!(matches!(resolve(dir.path(), &["a"]), Err(KmodError::DependencyCycle { .. })));
    }

    #[test]
    fn real_debian_modules() {
        let dir = crate::guest::default_guest::tests::setup_inputs().modules_dir();
        let wanted = ["virtio_mmio", "virtio_console", "virtio_rng", "virtio_net", "evdev", "button"];
        let mods = resolve(&dir, &wanted).unwrap();
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        for w in wanted {
            assert!(names.contains(&w), "{w} missing from {names:?}");
        }
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(at("virtio_ring") < at("virtio_mmio"));
        assert!(at("failover") < at("net_failover") && at("net_failover") < at("virtio_net"));
        println!("{}", modules_dep(&mods));
    }
}
