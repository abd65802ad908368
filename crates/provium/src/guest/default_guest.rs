//! The default guest: locating what `scripts/setup` installed, and building (once, cached)
//! the uncompressed `vmlinux` and the initramfs that boot the agent.
//!
//! Owns the cache layout under `cache_root` (`default-<key>/{vmlinux,initrd}`) and the
//! initramfs contents. The cache key covers the inputs by metadata (path, length, mtime), not
//! by contents, so a cache hit costs a few `stat`s plus one SHA-256 of the agent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::cpio::CpioWriter;
use super::kmod::{self, KmodError};
use super::vmlinux::{self, VmlinuxError};

/// Modules the agent loads (their dependencies are added). `virtio_mmio` serves microvm,
/// `virtio_pci` q35; `evdev` + `button` deliver the ACPI power button.
pub const DEFAULT_MODULES: &[&str] =
    &["virtio_mmio", "virtio_pci", "virtio_console", "virtio_rng", "virtio_net", "evdev", "button"];
/// Modules every initramfs holds but the agent loads only when the kernel
/// command line asks (`provium.modules=virtio_blk`): a boot with data disks.
pub const ON_DEMAND_MODULES: &[&str] = &["virtio_blk"];
/// What a guest whose root is a disk image loads besides: the disk's driver,
/// the image's file system and the overlay its writes go to.
pub const DISK_ROOT_MODULES: &[&str] = &["virtio_blk", "squashfs", "overlay"];
/// The virtio serial of the disk that holds a disk-root guest's image.
pub const ROOT_DISK_SERIAL: &str = "provium-root";
/// The file that tells the agent to switch to the disk root (its `rootfs::MARKER`).
const ROOT_MARKER_PATH: &str = "/etc/provium/rootfs";
/// Where the agent lives in every initramfs provium builds.
pub const AGENT_PATH: &str = "/sbin/provium-agent";
/// Module names to load, in order, one per line.
pub const MODULE_LIST_PATH: &str = "/etc/provium/modules";

/// Bump when the initramfs layout changes so old cache entries are not reused.
const FORMAT_VERSION: &str = "provium-default-guest-3";
pub(super) const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// Cache entries of other keys unused for this long are removed on the next build.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Why the default guest could not be located or built.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("neither PROVIUM_GUEST_DIR nor HOME is set; cannot find the default guest")]
    NoGuestDir,
    #[error("default guest is not set up: `{path}` is missing; run `scripts/setup`")]
    NotSetUp {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading kernel image `{path}`")]
    ReadKernel {
        path: PathBuf,
        #[source]
        source: VmlinuxError,
    },
    #[error("collecting kernel modules from `{path}`")]
    Modules {
        path: PathBuf,
        #[source]
        source: KmodError,
    },
    #[error("reading busybox `{path}`")]
    ReadBusybox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("busybox `{path}` is dynamically linked; install busybox-static (run `scripts/setup`)")]
    BusyboxNotStatic { path: PathBuf },
    #[error("listing busybox applets with `{path} --list-full`")]
    ListApplets {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing default guest cache `{path}`")]
    WriteCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `scripts/setup` installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInputs {
    /// Root of the extracted kernel package (holds `boot/` and `lib/modules/`).
    pub kernel_dir: PathBuf,
    /// A static busybox.
    pub busybox: PathBuf,
    /// Kernel release, from `kernel/VERSION` (`6.1.0-56-cloud-amd64`).
    pub kernel_release: String,
}

impl GuestInputs {
    /// Finds the inputs in `$PROVIUM_GUEST_DIR`, else `$HOME/.cache/provium/guest`, with
    /// busybox at `/bin/busybox`.
    pub fn locate() -> Result<Self, GuestError> {
        let dir = match std::env::var_os("PROVIUM_GUEST_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME").filter(|v| !v.is_empty());
                PathBuf::from(home.ok_or(GuestError::NoGuestDir)?).join(".cache/provium/guest")
            }
        };
        Self::in_dir(&dir, Path::new(DEFAULT_BUSYBOX))
    }

    /// Reads the inputs from guest dir `dir` (as laid out by `scripts/setup`) and checks they
    /// are all there.
    pub fn in_dir(dir: &Path, busybox: &Path) -> Result<Self, GuestError> {
        let kernel_dir = dir.join("kernel");
        let version_file = kernel_dir.join("VERSION");
        let release = std::fs::read_to_string(&version_file)
            .map_err(|source| GuestError::NotSetUp { path: version_file, source })?;
        let inputs = GuestInputs { kernel_dir, busybox: busybox.to_owned(), kernel_release: release.trim().to_owned() };
        for path in [inputs.vmlinuz(), inputs.modules_dir(), inputs.busybox.clone()] {
            std::fs::metadata(&path).map_err(|source| GuestError::NotSetUp { path, source })?;
        }
        Ok(inputs)
    }

    /// The compressed kernel, `boot/vmlinuz-<release>`.
    pub fn vmlinuz(&self) -> PathBuf {
        self.kernel_dir.join(format!("boot/vmlinuz-{}", self.kernel_release))
    }

    /// `lib/modules/<release>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.kernel_dir.join("lib/modules").join(&self.kernel_release)
    }
}

/// Which initramfs: the default guest's whole userland, or the small first
/// stage of a guest whose userland is a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// busybox, the agent and its modules: the default guest.
    Default,
    /// The agent and its modules plus [`DISK_ROOT_MODULES`], and the marker
    /// that makes the agent mount the disk of serial [`ROOT_DISK_SERIAL`]
    /// (squashfs) under a tmpfs overlay and switch to it.
    DiskRoot,
}

impl Flavor {
    fn prefix(self) -> &'static str {
        match self {
            Flavor::Default => "default",
            Flavor::DiskRoot => "diskroot",
        }
    }

    fn modules(self) -> Vec<&'static str> {
        match self {
            Flavor::Default => DEFAULT_MODULES.to_vec(),
            Flavor::DiskRoot => DEFAULT_MODULES.iter().chain(DISK_ROOT_MODULES).copied().collect(),
        }
    }
}

/// A built default guest, ready for `-kernel`/`-initrd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedGuest {
    /// Uncompressed ELF kernel.
    pub vmlinux: PathBuf,
    /// Uncompressed newc initramfs.
    pub initrd: PathBuf,
    pub kernel_release: String,
    /// Cache key (16 hex digits) naming the cache entry.
    pub key: String,
}

/// Serializes builds within one process; across processes the atomic rename suffices.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Returns the cached default guest for these inputs and agent, building it if needed.
pub fn prepare(inputs: &GuestInputs, agent_bytes: &[u8], cache_root: &Path) -> Result<PreparedGuest, GuestError> {
    prepare_flavor(inputs, agent_bytes, cache_root, Flavor::Default)
}

/// [`prepare`] for either [`Flavor`] of initramfs.
pub fn prepare_flavor(
    inputs: &GuestInputs,
    agent_bytes: &[u8],
    cache_root: &Path,
    flavor: Flavor,
) -> Result<PreparedGuest, GuestError> {
    let key = cache_key(inputs, agent_bytes, flavor)?;
    let dir = cache_root.join(format!("{}-{key}", flavor.prefix()));
    let prepared = PreparedGuest {
        vmlinux: dir.join("vmlinux"),
        initrd: dir.join("initrd"),
        kernel_release: inputs.kernel_release.clone(),
        key: key.clone(),
    };
    let complete = |p: &PreparedGuest| p.vmlinux.is_file() && p.initrd.is_file();
    if complete(&prepared) {
        touch(&dir);
        return Ok(prepared);
    }
    let _guard = crate::sync::lock(&BUILD_LOCK);
    if complete(&prepared) {
        return Ok(prepared);
    }
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| GuestError::WriteCache { path, source }
    };
    std::fs::create_dir_all(cache_root).map_err(write_err(cache_root))?;
    let tmp = TempDir::new(cache_root, flavor.prefix(), &key).map_err(write_err(cache_root))?;

    let vmlinuz = inputs.vmlinuz();
    let elf = vmlinux::extract_vmlinux(&vmlinuz).map_err(|source| GuestError::ReadKernel { path: vmlinuz, source })?;
    let vmlinux_tmp = tmp.0.join("vmlinux");
    std::fs::write(&vmlinux_tmp, elf).map_err(write_err(&vmlinux_tmp))?;
    let initrd_tmp = tmp.0.join("initrd");
    let mut initrd = build_initramfs(inputs, agent_bytes, flavor)?;
    super::pad_to_page(&mut initrd);
    std::fs::write(&initrd_tmp, initrd).map_err(write_err(&initrd_tmp))?;

    if std::fs::rename(&tmp.0, &dir).is_err() && !complete(&prepared) {
        // Not another process winning the race (its entry would be complete): a broken
        // leftover. Replace it.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp.0, &dir).map_err(write_err(&dir))?;
    }
    prune(cache_root, &dir, flavor.prefix());
    Ok(prepared)
}

/// The overlay appended to a user's initramfs: `/sbin/provium-agent` and its parent dir.
pub fn overlay_cpio(agent_bytes: &[u8]) -> Vec<u8> {
    let mut w = CpioWriter::new();
    w.file(AGENT_PATH, 0o755, agent_bytes);
    w.finish()
}

fn cache_key(inputs: &GuestInputs, agent_bytes: &[u8], flavor: Flavor) -> Result<String, GuestError> {
    let mut h = Sha256::new();
    h.update(FORMAT_VERSION);
    h.update(flavor.prefix());
    for path in [inputs.vmlinuz(), inputs.busybox.clone()] {
        let meta = std::fs::metadata(&path).map_err(|source| GuestError::NotSetUp { path: path.clone(), source })?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
        h.update([0]);
        h.update(path.as_os_str().as_encoded_bytes());
        h.update(format!("\0{}\0{}", meta.len(), mtime.unwrap_or_default().as_nanos()));
    }
    h.update([0]);
    h.update(Sha256::digest(agent_bytes));
    h.update(flavor.modules().join(",").as_bytes());
    h.update(ON_DEMAND_MODULES.join(",").as_bytes());
    let digest = h.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

fn build_initramfs(inputs: &GuestInputs, agent_bytes: &[u8], flavor: Flavor) -> Result<Vec<u8>, GuestError> {
    let modules_dir = inputs.modules_dir();
    let wanted = kmod::resolve(&modules_dir, &flavor.modules())
        .map_err(|source| GuestError::Modules { path: modules_dir.clone(), source })?;
    let all: Vec<&str> = flavor.modules().into_iter().chain(ON_DEMAND_MODULES.iter().copied()).collect();
    let modules =
        kmod::resolve(&modules_dir, &all).map_err(|source| GuestError::Modules { path: modules_dir, source })?;
    let busybox = std::fs::read(&inputs.busybox)
        .map_err(|source| GuestError::ReadBusybox { path: inputs.busybox.clone(), source })?;
    if has_interpreter(&busybox) {
        let path = inputs.busybox.clone();
        return Err(GuestError::BusyboxNotStatic { path });
    }
    let applets = applets(&inputs.busybox)?;

    let mut w = CpioWriter::new();
    for (dir, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("etc", 0o755),
        ("root", 0o700),
        ("run", 0o755),
        ("var", 0o755),
        ("var/log", 0o755),
        ("var/tmp", 0o1777),
        ("var/lib", 0o755),
        ("home", 0o755),
        ("mnt", 0o755),
        ("opt", 0o755),
        ("srv", 0o755),
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
    ] {
        w.dir(dir, mode);
    }
    w.symlink("var/run", "/run");
    w.file("bin/busybox", 0o755, &busybox);
    for applet in applets.iter().filter(|a| a.as_str() != "bin/busybox") {
        w.symlink(applet, "/bin/busybox");
    }
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    w.file("etc/group", 0o644, b"root:x:0:\n");
    w.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n");

    let lib = format!("lib/modules/{}", inputs.kernel_release);
    w.file(&format!("{lib}/modules.dep"), 0o644, kmod::modules_dep(&modules).as_bytes());
    for m in &modules {
        w.file(&format!("{lib}/{}", m.rel_path), 0o644, &m.bytes);
    }
    let mut list = String::new();
    for m in &wanted {
        list.push_str(&m.name);
        list.push('\n');
    }
    w.file(MODULE_LIST_PATH, 0o644, list.as_bytes());
    if flavor == Flavor::DiskRoot {
        w.file(ROOT_MARKER_PATH, 0o644, format!("serial={ROOT_DISK_SERIAL}\nfstype=squashfs\n").as_bytes());
    }
    w.file(AGENT_PATH, 0o755, agent_bytes);
    Ok(w.finish())
}

/// Whether an ELF64 file names a program interpreter (`PT_INTERP`), i.e. is dynamically
/// linked and would not run in the bare initramfs.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let num = |o: usize, n: usize| -> Option<u64> {
        let b = elf.get(o..o + n)?;
        Some(b.iter().rev().fold(0, |acc, &x| acc << 8 | u64::from(x)))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (num(0x20, 8), num(0x36, 2), num(0x38, 2)) else {
        return false;
    };
    (0..phnum).any(|i| num((phoff + i * phentsize) as usize, 4) == Some(u64::from(PT_INTERP)))
}

/// Applet paths relative to `/` (`bin/sh`, `usr/bin/[`), from `busybox --list-full`.
fn applets(busybox: &Path) -> Result<Vec<String>, GuestError> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| GuestError::ListApplets { path: busybox.to_owned(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(GuestError::ListApplets {
            path: busybox.to_owned(),
            source: std::io::Error::other(format!("{}: {}", out.status, stderr.trim())),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .map(|l| l.trim().trim_start_matches('/'))
        .filter(|l| !l.is_empty() && !l.split('/').any(|c| c == ".."))
        .map(str::to_owned)
        .collect())
}

/// A build directory inside the cache root, removed on drop unless renamed away.
struct TempDir(PathBuf);

impl TempDir {
    fn new(root: &Path, prefix: &str, key: &str) -> std::io::Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!(".tmp-{prefix}-{key}-{}-{nanos}-{seq}", std::process::id());
        let path = root.join(name);
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Marks a cache entry as used (its mtime), so [`prune`] keeps it.
fn touch(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Best effort: removes other `<prefix>-*` entries and abandoned build dirs not used for
/// [`STALE_AFTER`]. Recently used ones may belong to a concurrent provium with another agent.
fn prune(root: &Path, keep: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.strip_prefix(".tmp-").unwrap_or(&name).strip_prefix(prefix).is_some_and(|r| r.starts_with('-'));
        if path == keep || !ours {
            continue;
        }
        let idle = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if idle.is_some_and(|idle| idle > STALE_AFTER) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::guest::cpio::tests::names;
    use std::time::Instant;

    /// The kernel and busybox `scripts/setup` installs, located as provium locates them
    /// (`$PROVIUM_GUEST_DIR`, else `~/.cache/provium/guest`). Fails the test when they are
    /// missing: a test that quietly passed without them would prove nothing.
    pub(in crate::guest) fn setup_inputs() -> GuestInputs {
        GuestInputs::locate().unwrap_or_else(|e| {
            panic!("the guest inputs `scripts/setup` installs are missing: {}", crate::errors::chain(&e))
        })
    }

    /// The static busybox `scripts/setup` installs (package busybox-static); fails the test
    /// when it is missing.
    pub(in crate::guest) fn setup_busybox() -> PathBuf {
        let path = Path::new(DEFAULT_BUSYBOX);
        assert!(path.is_file(), "`{DEFAULT_BUSYBOX}` is missing; run `scripts/setup` (it installs busybox-static)");
        path.to_owned()
    }

    #[test]
    fn missing_inputs_point_at_setup() {
        let dir = tempfile::tempdir().unwrap();
        let err = GuestInputs::in_dir(dir.path(), Path::new("/bin/busybox")).unwrap_err();
        assert!(matches!(err, GuestError::NotSetUp { .. }));
        let msg = err.to_string();
        assert!(msg.contains("kernel/VERSION`") && msg.contains("run `scripts/setup`"), "{msg}");
    }

    #[test]
    fn busybox_static_check() {
        let path = setup_busybox();
        let busybox = std::fs::read(&path).unwrap();
        assert!(busybox.starts_with(b"\x7fELF"), "`{}` is not an ELF file", path.display());
        assert!(!has_interpreter(&busybox), "`{}` should be static (busybox-static)", path.display());
        let this_test = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&this_test), "test binaries are dynamically linked");
    }

    #[test]
    fn overlay_holds_only_the_agent() {
        let overlay = overlay_cpio(b"agent");
        assert_eq!(names(&overlay), ["sbin", "sbin/provium-agent", "TRAILER!!!"]);
        assert_eq!(overlay.len() % 4, 0);
    }

    #[test]
    fn prepare_builds_once_then_reuses() {
        let inputs = setup_inputs();
        let cache = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let first = prepare(&inputs, b"agent-1", cache.path()).unwrap();
        let cold = t.elapsed();
        let t = Instant::now();
        let again = prepare(&inputs, b"agent-1", cache.path()).unwrap();
        let hit = t.elapsed();
        eprintln!("prepare: cold {cold:?}, cached {hit:?}");
        assert_eq!(first, again);
        assert_eq!(first.key.len(), 16);

        let vmlinux = std::fs::read(&first.vmlinux).unwrap();
        assert_eq!(&vmlinux[..4], b"\x7fELF");
        let initrd = std::fs::read(&first.initrd).unwrap();
        let entries = names(&initrd);
        let lib = format!("lib/modules/{}", inputs.kernel_release);
        for want in [
            "bin/busybox",
            "bin/sh",
            "sbin/provium-agent",
            "etc/provium/modules",
            "etc/passwd",
            &format!("{lib}/modules.dep"),
            &format!("{lib}/kernel/drivers/char/virtio_console.ko"),
        ] {
            assert!(entries.iter().any(|e| e == want), "{want} missing from initramfs");
        }
        assert!(!entries.iter().any(|e| e == "init"), "no /init: the agent is rdinit");

        let other = prepare(&inputs, b"agent-2", cache.path()).unwrap();
        assert_ne!(other.key, first.key);
        assert!(first.initrd.exists(), "a fresh entry of another key is not pruned");
        let leftovers = std::fs::read_dir(cache.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".tmp"))
            .count();
        assert_eq!(leftovers, 0, "build dirs are renamed away");
    }
}
