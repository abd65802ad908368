//! A private apt root per (mirror, suite): its own `sources.list`, `apt.conf` (passed as
//! `APT_CONFIG`, so the host's `/etc/apt` is never read) and an empty dpkg status, so the
//! host's installed packages play no part. Owns `apt-get update` (at most once a day unless
//! asked), resolving a package set (`apt-get -s install`, cached per spec and state of the
//! lists), downloading .debs, and reading apt's complaints into typed errors.
//!
//! Runs as the caller: `APT::Sandbox::User` is the caller and locking is off, so no root is
//! needed. Messages are parsed with `LC_ALL=C`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::{hex16, tool, DebianError, Step, ARCH, DEFAULT_MIRROR, SECURITY_MIRROR};

/// The Essential set (minus apt, which marks itself Essential-ish and drags in libapt and
/// gpgv) plus `usr-is-merged`, which keeps apt from choosing `usrmerge` and with it perl.
const BASE: [&str; 2] = ["?and(?essential,?not(?name(^apt$)))", "usr-is-merged"];
/// Suites that have `<suite>-updates` and `<suite>-security`.
const SUITES_WITH_UPDATES: &[&str] = &["bullseye", "bookworm", "trixie", "oldstable", "stable"];
/// Lists older than this are updated before use.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Bump when the stored resolution format changes.
const RESOLUTION_FORMAT: &str = "resolution-1";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One resolved package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

impl Package {
    /// The file name apt gives the package's .deb: `name_version_arch.deb`, `:` as `%3a`.
    pub fn deb_file_name(&self) -> String {
        format!("{}_{}_{}.deb", self.name, self.version.replace(':', "%3a"), self.arch)
    }
}

/// A package argument as apt takes it: a Debian package name, optionally `=version`.
pub(super) fn check_package_arg(arg: &str) -> Result<(), DebianError> {
    let (name, version) = arg.split_once('=').map_or((arg, None), |(n, v)| (n, Some(v)));
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let version_ok =
        version.is_none_or(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c)));
    if name_ok && version_ok {
        Ok(())
    } else {
        Err(DebianError::InvalidPackage(arg.to_owned()))
    }
}

/// The private apt root of one (mirror, suite).
pub(super) struct AptRoot {
    dir: PathBuf,
    conf: PathBuf,
    mirror: String,
    suite: String,
}

impl AptRoot {
    /// Creates (or reuses) the root under `base`; writes its config if it changed.
    pub fn open(base: &Path, mirror: &str, suite: &str) -> Result<Self, DebianError> {
        let mirror = mirror.trim_end_matches('/').to_owned();
        let id = hex16(&Sha256::digest(format!("{mirror}\0{suite}\0{ARCH}")));
        let dir = base.join(format!("{suite}-{id}"));
        for sub in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "var/log/apt",
            "resolved",
        ] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(DebianError::io("cannot create", &path))?;
        }
        let status = dir.join("var/lib/dpkg/status");
        if !status.exists() {
            std::fs::write(&status, "").map_err(DebianError::io("cannot write", &status))?;
        }
        let root = AptRoot { conf: dir.join("apt.conf"), dir, mirror, suite: suite.to_owned() };
        let _lock = root.lock()?;
        write_if_changed(&root.dir.join("etc/apt/sources.list"), &sources_list(&root.mirror, suite))?;
        write_if_changed(&root.conf, &apt_conf(&root.dir, &sandbox_user()))?;
        Ok(root)
    }

    /// Serializes apt runs in this root across threads and processes (locking is off inside
    /// apt, since the caller may not be root).
    pub fn lock(&self) -> Result<crate::fixture::BuildLock, DebianError> {
        let path = self.dir.join("provium.lock");
        crate::fixture::lock::acquire(path.clone(), |_| {}).map_err(|source| DebianError::Lock { path, source })
    }

    fn apt_get(&self) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.env("APT_CONFIG", &self.conf).env("LC_ALL", "C").env_remove("LANGUAGE");
        cmd
    }

    pub(super) fn lists_dir(&self) -> PathBuf {
        self.dir.join("var/lib/apt/lists")
    }

    /// Identity of the downloaded lists (names, sizes, mtimes); `None` when there are none.
    fn lists_identity(&self) -> Option<String> {
        let mut files: Vec<String> = std::fs::read_dir(self.lists_dir())
            .ok()?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                let mtime = meta.modified().ok()?.duration_since(SystemTime::UNIX_EPOCH).ok()?;
                Some(format!("{}\0{}\0{}", e.file_name().to_string_lossy(), meta.len(), mtime.as_nanos()))
            })
            .collect();
        if !files.iter().any(|f| f.contains("_Packages\0")) {
            return None;
        }
        files.sort();
        Some(hex16(&Sha256::digest(files.join("\n"))))
    }

    /// Runs `apt-get update` when the lists are missing, older than a day, or `refresh`. If
    /// it fails but old lists exist, says so and goes on with them.
    pub fn update_if_needed(&self, refresh: bool, progress: &mut dyn FnMut(Step)) -> Result<(), DebianError> {
        let stamp = self.dir.join("updated");
        let have_lists = self.lists_identity().is_some();
        let age = std::fs::metadata(&stamp).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if have_lists && !refresh && age.is_some_and(|a| a < LISTS_MAX_AGE) {
            return Ok(());
        }
        progress(Step::Updating { suite: self.suite.clone() });
        match self.update() {
            Ok(()) => std::fs::write(&stamp, "").map_err(DebianError::io("cannot write", &stamp)),
            Err(e @ DebianError::Apt { .. }) if have_lists => {
                progress(Step::Warning(format!(
                    "{}; using the package lists of the last successful update",
                    crate::errors::chain(&e)
                )));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn update(&self) -> Result<(), DebianError> {
        // Without --error-on=any an unreachable mirror is only a warning (exit 0).
        let out = tool::output("apt-get", self.apt_get().args(["update", "-q", "--error-on=any"]))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(e) = update_error(&stderr, &self.suite, &self.mirror) {
            return Err(e);
        }
        Err(DebianError::Apt { action: "update", status: out.status.to_string(), stderr: tool::tail(&out.stderr) })
    }

    /// The full package set for `packages` (Essential set included), sorted by name, and
    /// whether it came from the stored resolution (no apt run).
    pub fn resolve(&self, packages: &[String]) -> Result<(Vec<Package>, bool), DebianError> {
        let lists = self.lists_identity().unwrap_or_default();
        let id = hex16(&Sha256::digest(format!("{RESOLUTION_FORMAT}\0{lists}\0{}", packages.join("\0"))));
        let stored = self.dir.join("resolved").join(format!("{id}.txt"));
        if let Ok(text) = std::fs::read_to_string(&stored) {
            let pkgs = parse_stored(&text);
            if !pkgs.is_empty() {
                return Ok((pkgs, true));
            }
        }
        let out = tool::output("apt-get", self.apt_get().args(["-s", "-q", "install"]).args(BASE).args(packages))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(resolve_error(&stderr, &self.suite).unwrap_or_else(|| DebianError::Apt {
                action: "install --simulate",
                status: out.status.to_string(),
                stderr: tool::tail(&out.stderr),
            }));
        }
        let mut pkgs = parse_inst_lines(&stdout);
        if pkgs.is_empty() {
            return Err(DebianError::Apt {
                action: "install --simulate",
                status: out.status.to_string(),
                stderr: "it would install nothing (are the package lists empty?)".to_owned(),
            });
        }
        pkgs.sort_by(|a, b| a.name.cmp(&b.name));
        let text: String = pkgs.iter().map(|p| format!("{} {} {}\n", p.name, p.version, p.arch)).collect();
        crate::files::write_atomically(&stored, text.as_bytes()).map_err(DebianError::io("cannot write", &stored))?;
        Ok((pkgs, false))
    }
}

/// Makes sure every package's .deb is in `debs` (downloading the missing ones through a
/// staging dir, so no half file ever has a final name). Returns the paths in `pkgs` order and
/// (count, bytes) downloaded.
pub(super) fn download(
    root: &AptRoot,
    pkgs: &[Package],
    debs: &Path,
) -> Result<(Vec<PathBuf>, (usize, u64)), DebianError> {
    std::fs::create_dir_all(debs).map_err(DebianError::io("cannot create", debs))?;
    remove_stale_staging(debs);
    let paths: Vec<PathBuf> = pkgs.iter().map(|p| debs.join(p.deb_file_name())).collect();
    let missing: Vec<&Package> = pkgs.iter().zip(&paths).filter(|(_, path)| !path.is_file()).map(|(p, _)| p).collect();
    if missing.is_empty() {
        return Ok((paths, (0, 0)));
    }
    let staging = Staging::new(debs)?;
    let args: Vec<String> = missing.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
    let out = tool::output("apt-get", root.apt_get().args(["download", "-q"]).args(&args).current_dir(&staging.0))?;
    if !out.status.success() {
        return Err(DebianError::Apt {
            action: "download",
            status: out.status.to_string(),
            stderr: tool::tail(&out.stderr),
        });
    }
    let mut bytes = 0;
    for p in &missing {
        let name = p.deb_file_name();
        let from = staging.0.join(&name);
        bytes += std::fs::metadata(&from).map_err(DebianError::io("apt-get download did not write", &from))?.len();
        let to = debs.join(&name);
        std::fs::rename(&from, &to).map_err(DebianError::io("cannot move a download to", &to))?;
    }
    Ok((paths, (missing.len(), bytes)))
}

/// A download dir `debs/.partial-<pid>-<n>`, removed on drop.
struct Staging(PathBuf);

impl Staging {
    fn new(debs: &Path) -> Result<Self, DebianError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = debs.join(format!(".partial-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(DebianError::io("cannot create", &path))?;
        Ok(Staging(path))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes staging dirs of downloads that died, once nobody can still be using them.
fn remove_stale_staging(debs: &Path) {
    let Ok(entries) = std::fs::read_dir(debs) else {
        return;
    };
    for e in entries.flatten() {
        let idle = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if e.file_name().to_string_lossy().starts_with(".partial-")
            && idle.is_some_and(|i| i > Duration::from_secs(3600))
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<(), DebianError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    crate::files::write_atomically(path, text.as_bytes()).map_err(DebianError::io("cannot write", path))
}

fn sources_list(mirror: &str, suite: &str) -> String {
    let line = |uri: &str, suite: &str| format!("deb [signed-by={KEYRING}] {uri} {suite} main\n");
    let mut text = line(mirror, suite);
    if SUITES_WITH_UPDATES.contains(&suite) {
        text.push_str(&line(mirror, &format!("{suite}-updates")));
        if mirror == DEFAULT_MIRROR {
            text.push_str(&line(SECURITY_MIRROR, &format!("{suite}-security")));
        }
    }
    text
}

fn apt_conf(dir: &Path, user: &str) -> String {
    let d = dir.display();
    format!(
        "Dir \"{d}/\";\n\
         Dir::State::status \"{d}/var/lib/dpkg/status\";\n\
         Dir::Etc::Trusted \"/nonexistent\";\n\
         Dir::Etc::TrustedParts \"/nonexistent\";\n\
         APT::Architecture \"{ARCH}\";\n\
         APT::Architectures \"{ARCH}\";\n\
         APT::Install-Recommends \"false\";\n\
         APT::Install-Suggests \"false\";\n\
         APT::Sandbox::User \"{user}\";\n\
         Debug::NoLocking \"true\";\n\
         Acquire::Languages \"none\";\n"
    )
}

/// The caller's user name, for `APT::Sandbox::User` (apt must not switch to `_apt`).
fn sandbox_user() -> String {
    // SAFETY: geteuid has no preconditions. getpwuid returns NULL or a pointer to a static
    // record that stays valid until the next getpw* call on this thread; it is copied at once.
    let name = unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            None
        } else {
            Some(std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned())
        }
    };
    name.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "root".to_owned())
}

/// The packages of `apt-get -s install` output: `Inst name [old] (version origins [arch])`.
pub(super) fn parse_inst_lines(stdout: &str) -> Vec<Package> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let name = name.split(':').next()?;
            let inner = &rest[rest.find('(')? + 1..rest.rfind(')')?];
            let version = inner.split_whitespace().next()?;
            let arch = inner[inner.rfind('[')? + 1..].strip_suffix(']')?;
            Some(Package { name: name.to_owned(), version: version.to_owned(), arch: arch.to_owned() })
        })
        .collect()
}

fn parse_stored(text: &str) -> Vec<Package> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            let (name, version, arch) = (it.next()?, it.next()?, it.next()?);
            Some(Package { name: name.into(), version: version.into(), arch: arch.into() })
        })
        .collect()
}

/// An unknown package in `apt-get install` stderr.
pub(super) fn resolve_error(stderr: &str, suite: &str) -> Option<DebianError> {
    let unknown = |package: &str| DebianError::UnknownPackage { package: package.to_owned(), suite: suite.to_owned() };
    for line in stderr.lines() {
        let Some(msg) = line.strip_prefix("E: ") else { continue };
        if let Some(p) = msg.strip_prefix("Unable to locate package ") {
            return Some(unknown(p.trim()));
        }
        if let Some(p) = msg.strip_prefix("Package '").and_then(|m| m.strip_suffix("' has no installation candidate")) {
            return Some(unknown(p));
        }
        // E: Version '9.9' for 'libc6' was not found
        if let Some(rest) = msg.strip_prefix("Version '").and_then(|m| m.strip_suffix("' was not found")) {
            if let Some((version, package)) = rest.split_once("' for '") {
                return Some(unknown(&format!("{package}={version}")));
            }
        }
    }
    None
}

/// A suite the mirror does not have, in `apt-get update` stderr: `E: The repository '<uri>
/// <suite> Release' does not have a Release file.` (for the suite or its -updates/-security).
pub(super) fn update_error(stderr: &str, suite: &str, mirror: &str) -> Option<DebianError> {
    stderr
        .lines()
        .any(|l| l.starts_with("E: The repository '") && l.contains("does not have a Release file"))
        .then(|| DebianError::UnknownSuite { suite: suite.to_owned(), mirror: mirror.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from apt 2.6.1 (bookworm host) with the private root of this module.
    const SIMULATE: &str = "\
Reading package lists...
Building dependency tree...
The following additional packages will be installed:
  debconf gcc-12-base libacl1
Inst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])
Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []
Inst libgcrypt20 (1.10.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64])
Inst libaudit-common (1:3.0.9-1 Debian:12.15/oldstable [all])
Inst libfoo [1.0-1] (1.0-2 Debian:12.15/oldstable [amd64])
Conf libaudit-common (1:3.0.9-1 Debian:12.15/oldstable [all])
";

    #[test]
    fn inst_lines() {
        let pkgs = parse_inst_lines(SIMULATE);
        let got: Vec<String> = pkgs.iter().map(|p| format!("{} {} {}", p.name, p.version, p.arch)).collect();
        assert_eq!(
            got,
            [
                "gcc-12-base 12.2.0-14+deb12u1 amd64",
                "libc6 2.36-9+deb12u14 amd64",
                "libgcrypt20 1.10.1-3+deb12u1 amd64",
                "libaudit-common 1:3.0.9-1 all",
                "libfoo 1.0-2 amd64",
            ]
        );
        assert_eq!(pkgs[3].deb_file_name(), "libaudit-common_1%3a3.0.9-1_all.deb");
    }

    #[test]
    fn unknown_package_errors() {
        let e = resolve_error("E: Unable to locate package nosuchpkg-xyz\n", "bookworm").unwrap();
        assert!(matches!(&e, DebianError::UnknownPackage { package, .. } if package == "nosuchpkg-xyz"), "{e}");
        assert_eq!(e.to_string(), "package `nosuchpkg-xyz` is not in Debian bookworm");
        let e = resolve_error("E: Package 'awk' has no installation candidate\n", "bookworm").unwrap();
        assert!(matches!(&e, DebianError::UnknownPackage { package, .. } if package == "awk"), "{e}");
        let e = resolve_error("E: Version '9.9' for 'libc6' was not found\n", "bookworm").unwrap();
        assert!(matches!(&e, DebianError::UnknownPackage { package, .. } if package == "libc6=9.9"), "{e}");
        assert!(resolve_error("E: Unmet dependencies.\n", "bookworm").is_none());
    }

    #[test]
    fn unknown_suite_error() {
        let stderr = "\
E: The repository 'http://deb.debian.org/debian nosuchsuite Release' does not have a Release file.
E: The repository 'http://deb.debian.org/debian nosuchsuite-updates Release' does not have a Release file.
";
        let e = update_error(stderr, "nosuchsuite", DEFAULT_MIRROR).unwrap();
        assert!(matches!(&e, DebianError::UnknownSuite { suite, .. } if suite == "nosuchsuite"), "{e}");
        // A network failure (with --error-on=any) is not an unknown suite.
        let net = "\
E: Failed to fetch http://127.0.0.1:9/debian/dists/nosuchsuite/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)
E: Some index files failed to download. They have been ignored, or old ones used instead.
";
        assert!(update_error(net, "bookworm", DEFAULT_MIRROR).is_none());
        assert!(tool::tail(net.as_bytes()).contains("Connection refused"));
    }

    #[test]
    fn package_arguments() {
        for ok in ["python3", "libc6=2.36-9+deb12u14", "g++", "libaudit-common=1:3.0.9-1"] {
            check_package_arg(ok).unwrap();
        }
        for bad in ["-o", "Foo", "a", "x y", "python3=", "?essential", "a;b"] {
            assert!(matches!(check_package_arg(bad), Err(DebianError::InvalidPackage(_))), "{bad}");
        }
    }

    #[test]
    fn sources_for_known_and_unknown_suites() {
        let s = sources_list(DEFAULT_MIRROR, "bookworm");
        assert_eq!(s.lines().count(), 3);
        assert!(s.contains(" http://deb.debian.org/debian-security bookworm-security main"));
        assert!(s.contains(" bookworm-updates main"));
        assert_eq!(sources_list("http://mirror.example/debian", "bookworm").lines().count(), 2);
        assert_eq!(sources_list(DEFAULT_MIRROR, "sid").lines().count(), 1);
    }
}
