//! Debian userland images: a squashfs root filesystem holding the Essential set plus the
//! packages a test asks for, built without root and without running maintainer scripts, and
//! cached by what went into it.
//!
//! ```text
//!  DebianSpec{suite, mirror, packages}
//!    │ apt.rs      private apt root per (mirror, suite): update (≤ once a day), resolve
//!    │             `?essential` + usr-is-merged + packages → [(name, version, arch)]
//!    │             (cached per spec and lists), download the missing .debs
//!    │ unpack.rs   each .deb: `dpkg-deb --fsys-tarfile` (2 at a time) → tar entries,
//!    │             merged-/usr rewrite, pruned docs, deduplicated dirs → ONE tar stream
//!    │ fixups.rs   what skipped maintainer scripts would have made: passwd, group, shadow,
//!    │             alternatives symlinks, hostname, hosts, mount points
//!    │ (kernel)    the whole module tree of the guest kernel + a complete modules.dep
//!    ▼ squashfs.rs the stream → `tar2sqfs` stdin → rootfs.sqfs
//!
//!  cache_root/debian/
//!    apt/<mirror+suite hash>/      private apt root (lists, apt.conf, resolutions)
//!    debs/<name>_<version>_<arch>.deb   shared by every image (`:` written `%3a`)
//!    images/<key>/rootfs.sqfs      immutable, named by key (+ manifest.json)
//!    images/<key>.lock             one build per key at a time (flock)
//!    images/.tmp-<key>-…           a build in progress; removed by the next build
//! ```
//!
//! The key covers the resolved `name=version` list, so a point release of any package makes
//! a new image, while a cache hit runs no apt at all: the resolution is cached per spec and
//! per state of the package lists. Owners and modes come from the .deb headers (setuid `su`,
//! `/tmp` 1777) without root, fakeroot or user namespaces, because nothing is extracted.
//!
//! This module builds files only; it does not boot anything and holds no agent (the agent
//! lives in a separate initramfs).

mod apt;
mod fixups;
mod squashfs;
mod tool;
mod unpack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::fixture::StoreError;
use crate::guest::{GuestInputs, KmodError};
pub use squashfs::Compression;

/// The default Debian mirror; only with it is `<suite>-security` added (from
/// [`SECURITY_MIRROR`]).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Where the security updates of the default mirror live.
pub const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// The default suite.
pub const DEFAULT_SUITE: &str = "bookworm";
/// Bump when the image contents change for the same inputs (layout, pruning, fixups).
const FORMAT_VERSION: &str = "provium-debian-1";
/// The only architecture built (the guest kernel is amd64).
const ARCH: &str = "amd64";

/// What to build: a suite of a mirror, and the packages wanted on top of the Essential set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DebianSpec {
    /// `bookworm` unless set.
    pub suite: String,
    /// Package names (`python3`) or pinned versions (`python3=3.11.2-1+b1`).
    pub packages: Vec<String>,
    /// `http://deb.debian.org/debian` unless set.
    pub mirror: String,
    /// Squashfs block compression; part of the key.
    pub compression: Compression,
}

impl Default for DebianSpec {
    fn default() -> Self {
        DebianSpec {
            suite: DEFAULT_SUITE.to_owned(),
            packages: Vec::new(),
            mirror: DEFAULT_MIRROR.to_owned(),
            compression: Compression::default(),
        }
    }
}

impl DebianSpec {
    /// The default suite and mirror with `packages`.
    pub fn with_packages<S: AsRef<str>>(packages: &[S]) -> Self {
        DebianSpec { packages: packages.iter().map(|p| p.as_ref().to_owned()).collect(), ..Default::default() }
    }
}

/// A built (or cached) image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianImage {
    /// The squashfs image; never modified once it has this name.
    pub rootfs: PathBuf,
    /// Cache key (16 hex digits) naming the image.
    pub key: String,
    /// Every package in the image (resolved name, version), sorted by name.
    pub packages: Vec<(String, String)>,
    /// `false` when the image came from the cache.
    pub built: bool,
}

/// Progress of [`prepare`], one line each for the caller to print (see `Display`).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `apt-get update` of the private lists is starting.
    Updating { suite: String },
    /// The package set is known.
    Resolved { count: usize, secs: f64 },
    /// Missing .debs were fetched (only when some were).
    Downloaded { count: usize, bytes: u64, secs: f64 },
    /// Streaming the .debs into the image is starting.
    Unpacking { count: usize },
    /// The image is written.
    Done { bytes: u64, secs: f64 },
    /// The image came from the cache.
    Cached,
    /// Something went wrong that the build could work around.
    Warning(String),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MB: f64 = 1e6;
        match self {
            Step::Updating { suite } => write!(f, "updating the package lists of {suite}"),
            Step::Resolved { count, secs } => write!(f, "resolved {count} packages in {secs:.1} s"),
            Step::Downloaded { count, bytes, secs } => {
                write!(f, "downloaded {count} packages ({:.1} MB) in {secs:.1} s", *bytes as f64 / MB)
            }
            Step::Unpacking { count } => write!(f, "writing the image from {count} packages"),
            Step::Done { bytes, secs } => write!(f, "image written ({:.1} MB) in {secs:.1} s", *bytes as f64 / MB),
            Step::Cached => write!(f, "image is cached"),
            Step::Warning(text) => write!(f, "warning: {text}"),
        }
    }
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("`{tool}` not found; {hint}")]
    ToolMissing { tool: &'static str, hint: &'static str },
    #[error("cannot run `{tool}`")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("package `{package}` is not in Debian {suite}")]
    UnknownPackage { package: String, suite: String },
    #[error("mirror {mirror} has no suite `{suite}` (no Release file); check the suite name")]
    UnknownSuite { suite: String, mirror: String },
    #[error("invalid package name `{0}` (expected a Debian package name, optionally `=version`)")]
    InvalidPackage(String),
    #[error("`apt-get {action}` failed ({status}): {stderr}")]
    Apt { action: &'static str, status: String, stderr: String },
    #[error("`{tool}` failed on `{path}` ({status}): {stderr}")]
    Tool { tool: &'static str, path: PathBuf, status: String, stderr: String },
    #[error("reading the data of package `{path}`")]
    ReadDeb {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the image stream")]
    Stream {
        #[source]
        source: std::io::Error,
    },
    #[error("collecting the kernel modules under `{path}`")]
    Modules {
        path: PathBuf,
        #[source]
        source: KmodError,
    },
    #[error("cannot take the build lock `{path}`")]
    Lock {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("{action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DebianError {
    pub(crate) fn stream(source: std::io::Error) -> DebianError {
        DebianError::Stream { source }
    }

    pub(crate) fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DebianError + 'a {
        move |source| DebianError::Io { action, path: path.to_owned(), source }
    }
}

/// Where the pieces of the cache live. [`CacheDirs::under`] is the normal layout; tests point
/// `apt` and `debs` at a shared place so each test does not download the archive again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDirs {
    /// Private apt roots, one per (mirror, suite).
    pub apt: PathBuf,
    /// Downloaded .debs, shared by all images.
    pub debs: PathBuf,
    /// Built images and their locks.
    pub images: PathBuf,
}

impl CacheDirs {
    /// `cache_root/debian/{apt,debs,images}`.
    pub fn under(cache_root: &Path) -> Self {
        let base = cache_root.join("debian");
        CacheDirs { apt: base.join("apt"), debs: base.join("debs"), images: base.join("images") }
    }
}

/// Returns the image for `spec` with `kernel`'s modules, building it if needed. `refresh`
/// forces an `apt-get update` (else the lists are updated when missing or older than a day).
pub fn prepare(
    spec: &DebianSpec,
    kernel: &GuestInputs,
    cache_root: &Path,
    refresh: bool,
    progress: &mut dyn FnMut(Step),
) -> Result<DebianImage, DebianError> {
    prepare_in(spec, kernel, &CacheDirs::under(cache_root), refresh, progress)
}

/// [`prepare`] with the cache pieces in `dirs`.
pub fn prepare_in(
    spec: &DebianSpec,
    kernel: &GuestInputs,
    dirs: &CacheDirs,
    refresh: bool,
    progress: &mut dyn FnMut(Step),
) -> Result<DebianImage, DebianError> {
    let started = Instant::now();
    for p in &spec.packages {
        apt::check_package_arg(p)?;
    }
    let root = apt::AptRoot::open(&dirs.apt, &spec.mirror, &spec.suite)?;
    let apt_lock = root.lock()?;
    root.update_if_needed(refresh, progress)?;
    let t = Instant::now();
    let (resolved, from_cache) = root.resolve(&spec.packages)?;
    drop(apt_lock);
    if !from_cache {
        progress(Step::Resolved { count: resolved.len(), secs: t.elapsed().as_secs_f64() });
    }

    let modules_id = modules_identity(&kernel.modules_dir())?;
    let key = image_key(spec, &resolved, &kernel.kernel_release, &modules_id);
    let entry = dirs.images.join(&key);
    let image = DebianImage {
        rootfs: entry.join(ROOTFS),
        key: key.clone(),
        packages: resolved.iter().map(|p| (p.name.clone(), p.version.clone())).collect(),
        built: false,
    };
    if image.rootfs.is_file() {
        progress(Step::Cached);
        return Ok(image);
    }

    std::fs::create_dir_all(&dirs.images).map_err(DebianError::io("cannot create", &dirs.images))?;
    let lock_path = dirs.images.join(format!("{key}.lock"));
    let _lock = crate::fixture::lock::acquire(lock_path.clone(), |_| {})
        .map_err(|source| DebianError::Lock { path: lock_path, source })?;
    if image.rootfs.is_file() {
        progress(Step::Cached);
        return Ok(image);
    }
    remove_leftovers(&dirs.images, &key);

    let t = Instant::now();
    let apt_lock = root.lock()?;
    let (debs, fetched) = apt::download(&root, &resolved, &dirs.debs)?;
    drop(apt_lock);
    if fetched.0 > 0 {
        progress(Step::Downloaded { count: fetched.0, bytes: fetched.1, secs: t.elapsed().as_secs_f64() });
    }

    let tmp = TempEntry::new(&dirs.images, &key)?;
    let tmp_image = tmp.0.join(ROOTFS);
    progress(Step::Unpacking { count: debs.len() });
    let t = Instant::now();
    let stats = squashfs::write(&tmp_image, spec.compression, |out| {
        let mut stream = unpack::Stream::new(out);
        let captured = stream.add_debs(&debs, progress)?;
        fixups::apply(&mut stream, &captured, progress)?;
        stream.add_modules(&kernel.modules_dir(), &kernel.kernel_release)?;
        Ok(stream.finish().map_err(DebianError::stream)?.0)
    })?;
    let bytes = std::fs::metadata(&tmp_image).map_err(DebianError::io("cannot stat", &tmp_image))?.len();
    let secs = t.elapsed().as_secs_f64();

    let manifest = serde_json::json!({
        "format": FORMAT_VERSION,
        "spec": spec,
        "arch": ARCH,
        "kernel_release": kernel.kernel_release,
        "packages": resolved.iter().map(|p| (p.name.clone(), p.version.clone())).collect::<BTreeMap<_, _>>(),
        "entries": stats.entries,
        "tar_bytes": stats.tar_bytes,
        "image_bytes": bytes,
        "build_secs": started.elapsed().as_secs_f64(),
        "built_at": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    let manifest_path = tmp.0.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    std::fs::write(&manifest_path, text).map_err(DebianError::io("cannot write", &manifest_path))?;
    tmp.install(&entry)?;
    progress(Step::Done { bytes, secs });
    Ok(DebianImage { built: true, ..image })
}

const ROOTFS: &str = "rootfs.sqfs";

/// The image key: 16 hex digits of a SHA-256 over everything that decides the contents.
fn image_key(spec: &DebianSpec, resolved: &[apt::Package], kernel_release: &str, modules_id: &str) -> String {
    let mut pins: Vec<String> = resolved.iter().map(|p| format!("{}={}:{}", p.name, p.version, p.arch)).collect();
    pins.sort();
    let mut h = Sha256::new();
    for part in [
        FORMAT_VERSION,
        &spec.suite,
        &spec.mirror,
        ARCH,
        &pins.join(" "),
        &unpack::settings(),
        fixups::SETTINGS,
        &spec.compression.args().join(" "),
        kernel_release,
        modules_id,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex16(&h.finalize())
}

pub(crate) fn hex16(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Identity of a kernel module tree by metadata: every file's relative path, length and
/// mtime (a few ms for the ~1100 files of a Debian cloud kernel).
fn modules_identity(dir: &Path) -> Result<String, DebianError> {
    let mut h = Sha256::new();
    let mut pending = vec![dir.to_owned()];
    let mut files = Vec::new();
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).map_err(DebianError::io("cannot list", &d))? {
            let e = e.map_err(DebianError::io("cannot list", &d))?;
            let meta = e.metadata().map_err(DebianError::io("cannot stat", &e.path()))?;
            if meta.is_dir() {
                pending.push(e.path());
            } else {
                let mtime = meta.modified().ok().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
                let rel = e.path().strip_prefix(dir).unwrap_or(&e.path()).to_string_lossy().into_owned();
                files.push(format!("{rel}\0{}\0{}", meta.len(), mtime.unwrap_or_default().as_nanos()));
            }
        }
    }
    files.sort();
    for f in files {
        h.update(f.as_bytes());
        h.update([0]);
    }
    Ok(hex16(&h.finalize()))
}

/// A build directory `images/.tmp-<key>-<pid>-<n>`, removed on drop unless installed.
struct TempEntry(PathBuf);

impl TempEntry {
    fn new(images: &Path, key: &str) -> Result<Self, DebianError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = images.join(format!(".tmp-{key}-{}-{seq}", std::process::id()));
        std::fs::create_dir(&path).map_err(DebianError::io("cannot create", &path))?;
        Ok(TempEntry(path))
    }

    /// Renames the finished build to its final name; the image is read-only from then on.
    fn install(self, entry: &Path) -> Result<(), DebianError> {
        let rootfs = self.0.join(ROOTFS);
        if let Ok(meta) = std::fs::metadata(&rootfs) {
            let mut perms = meta.permissions();
            perms.set_readonly(true);
            let _ = std::fs::set_permissions(&rootfs, perms);
        }
        // A final dir without an image is a broken leftover (we hold the key's lock).
        if entry.exists() {
            let _ = std::fs::remove_dir_all(entry);
        }
        std::fs::rename(&self.0, entry).map_err(DebianError::io("cannot install", entry))
    }
}

impl Drop for TempEntry {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Removes what an interrupted build of `key` left behind (called under the key's lock, so no
/// build of the key is running), and builds of other keys abandoned for over an hour.
fn remove_leftovers(images: &Path, key: &str) {
    let prefix = format!(".tmp-{key}-");
    let Ok(entries) = std::fs::read_dir(images) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let idle = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        let abandoned = name.starts_with(".tmp-") && idle.is_some_and(|i| i > std::time::Duration::from_secs(3600));
        if name.starts_with(&prefix) || abandoned {
            tracing::debug!(path = %e.path().display(), "removing an interrupted debian image build");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests;
