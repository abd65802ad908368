//! One `[profiles.<name>]` table (or one `profile.provium.toml` of a
//! `from_dir`): its raw form, the checks, and the resolved [`Profile`].
//!
//! A profile boots either files the user names (`kernel`, `initrd`, …) or
//! a userland provium builds (`base = "debian"` with `packages`). Either may
//! be *dynamic*: `build` is a shell command run before the profile's first
//! use, and `{out}` in its paths and command names the directory it builds
//! into. Relative paths resolve against the directory that declares the
//! profile (the config file's, or the profile's own for `from_dir`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The Debian suite a `base = "debian"` profile gets unless it says `suite`.
pub const DEFAULT_SUITE: &str = "bookworm";
/// The mirror Debian profiles download from unless they say `mirror`.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    #[serde(default)]
    cmdline: String,
    cmdline_file: Option<PathBuf>,
    inject_agent: Option<bool>,
    agent_boot_timeout: Option<f64>,
    base: Option<String>,
    suite: Option<String>,
    mirror: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
    memory: Option<toml::Value>,
    cpus: Option<u32>,
    #[serde(default)]
    disks: Vec<RawDisk>,
    build: Option<String>,
    build_out: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    id: Option<String>,
    /// The image the disk starts as (`image` is the same key).
    #[serde(alias = "image")]
    path: Option<PathBuf>,
    size: Option<toml::Value>,
    format: Option<String>,
    #[serde(default)]
    readonly: bool,
    /// The reference's opt-in to a disk provium serves; every disk is.
    mediated: Option<bool>,
}

/// The userland a profile asks provium to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianBase {
    pub suite: String,
    pub mirror: String,
    /// As written (order kept for messages; the image key sorts them).
    pub packages: Vec<String>,
}

/// How a profile's guest starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Guest {
    /// The user's kernel and initramfs.
    Files {
        kernel: PathBuf,
        /// `None`: the agent overlay alone is the initramfs.
        initrd: Option<PathBuf>,
        cmdline_file: Option<PathBuf>,
        inject_agent: bool,
    },
    /// provium's kernel with a Debian userland provium builds.
    Debian(DebianBase),
}

/// A disk's image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// A data disk, as a profile or a boot declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDecl {
    /// `None`: derived from its place (`disk<i>` for a profile's, `boot<i>`
    /// for a boot's).
    pub id: Option<String>,
    /// The image it starts as (copied per VM, never written).
    pub image: Option<PathBuf>,
    pub format: Option<DiskFormat>,
    /// The size of a blank disk (or of the copy, if larger than the image).
    pub size: Option<u64>,
    pub readonly: bool,
}

impl DiskDecl {
    /// A disk as written (in `provium.toml` or in Lua boot options),
    /// checked: its id, its format, `mediated`, and that it says what it
    /// starts as. The error is the message; the caller names where.
    pub fn new(
        id: Option<String>,
        image: Option<PathBuf>,
        size: Option<u64>,
        format: Option<&str>,
        readonly: bool,
        mediated: Option<bool>,
    ) -> Result<DiskDecl, String> {
        if let Some(id) = &id {
            check_disk_id(id)?;
        }
        let format = match format {
            None => None,
            Some("raw") => Some(DiskFormat::Raw),
            Some("qcow2") => Some(DiskFormat::Qcow2),
            Some(f) => return Err(format!("unknown format `{f}` (raw, qcow2)")),
        };
        if mediated == Some(false) {
            return Err("mediated = false is not supported: provium serves every disk itself (that is what makes \
                        fault_inject and power_cut reach the guest); remove the key"
                .into());
        }
        if image.is_none() && size.is_none() {
            return Err("needs `image` (or `path`: a file to start from) or `size` (a blank disk)".into());
        }
        Ok(DiskDecl { id, image, format, size, readonly })
    }
}

/// A user-declared guest: what to boot and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub guest: Guest,
    pub cmdline: String,
    pub agent_boot_timeout: Option<f64>,
    /// VM defaults a boot's own options override.
    pub memory: Option<u64>,
    pub cpus: Option<u32>,
    pub disks: Vec<DiskDecl>,
    /// The dynamic profile's build command (`{out}` expanded), run in `dir`.
    pub build: Option<String>,
    /// The `{out}` directory.
    pub out_dir: PathBuf,
    /// The directory that declared it: relative paths and `build` start here.
    pub dir: PathBuf,
}

impl Profile {
    /// The kernel, for profiles that name one.
    pub fn kernel(&self) -> Option<&Path> {
        match &self.guest {
            Guest::Files { kernel, .. } => Some(kernel),
            Guest::Debian(_) => None,
        }
    }

    /// The files it names that must exist before it boots: (field, path).
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut v = Vec::new();
        if let Guest::Files { kernel, initrd, cmdline_file, .. } = &self.guest {
            v.push(("kernel", kernel.as_path()));
            v.extend(initrd.as_deref().map(|p| ("initrd", p)));
            v.extend(cmdline_file.as_deref().map(|p| ("cmdline_file", p)));
        }
        v.extend(self.disks.iter().filter_map(|d| d.image.as_deref()).map(|p| ("disks", p)));
        v
    }
}

/// Why a profile table is wrong: the key (relative to the profile) and what.
pub(super) struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid { field: field.to_string(), message: message.into() }
}

/// The `{out}` directory of `name`: `build_out`, else `$PROVIUM_BUILD_DIR/<name>`, else
/// `$XDG_CACHE_HOME/provium/builds/<name>`, else `~/.cache/provium/builds/<name>`.
pub fn default_out_dir(name: &str) -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = env("PROVIUM_BUILD_DIR") {
        return d.join(name);
    }
    if let Some(d) = env("XDG_CACHE_HOME") {
        return d.join("provium/builds").join(name);
    }
    match env("HOME") {
        Some(h) => h.join(".cache/provium/builds").join(name),
        None => PathBuf::from("/tmp/provium-builds").join(name),
    }
}

/// A size written as a number of bytes or a string (`"512M"`).
fn size(field: &str, v: &toml::Value) -> Result<u64, Invalid> {
    match v {
        toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
        toml::Value::String(s) => crate::units::parse_size(s).map_err(|e| invalid(field, e.to_string())),
        _ => Err(invalid(field, "must be a positive number of bytes or a size like \"1G\"")),
    }
}

/// A disk id becomes the guest-visible serial (at most 20 bytes) and part
/// of file names.
pub fn check_disk_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 20
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "disk id `{id}` must be 1 to 20 letters, digits, `-`, `_` or `.` (it is the disk's serial in the guest)"
        ))
    }
}

impl RawProfile {
    /// Checks the table and resolves it; relative paths against `dir`.
    pub(super) fn resolve(self, name: &str, dir: &Path) -> Result<Profile, Invalid> {
        let out_dir = self.build_out.clone().map(|p| anchor(dir, p)).unwrap_or_else(|| default_out_dir(name));
        let out = out_dir.display().to_string();
        let expand = |s: &str| s.replace("{out}", &out);
        let path = |p: PathBuf| anchor(dir, PathBuf::from(expand(&p.to_string_lossy())));
        if let Some(t) = self.agent_boot_timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(invalid("agent_boot_timeout", "must be a positive number of seconds"));
            }
        }
        let cmdline = expand(&self.cmdline).split_whitespace().collect::<Vec<_>>().join(" ");
        let guest = match self.base.as_deref() {
            Some("debian") => {
                for (field, set) in [
                    ("kernel", self.kernel.is_some()),
                    ("initrd", self.initrd.is_some()),
                    ("cmdline_file", self.cmdline_file.is_some()),
                    ("inject_agent", self.inject_agent.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            field,
                            "cannot be set with base = \"debian\": provium boots its own kernel and agent into the \
                             Debian userland it builds (remove the key, or drop `base` to boot your own files)",
                        ));
                    }
                }
                let suite = self.suite.unwrap_or_else(|| DEFAULT_SUITE.to_string());
                if suite.is_empty() || !suite.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')) {
                    return Err(invalid("suite", format!("`{suite}` is not a Debian suite name (e.g. \"bookworm\")")));
                }
                for p in &self.packages {
                    let ok = !p.is_empty()
                        && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | ':'));
                    if !ok {
                        return Err(invalid("packages", format!("`{p}` is not a Debian package name")));
                    }
                }
                let mirror = self.mirror.unwrap_or_else(|| DEFAULT_MIRROR.to_string());
                Guest::Debian(DebianBase { suite, mirror, packages: self.packages })
            }
            Some(other) => {
                return Err(invalid("base", format!("unknown base `{other}` (provium builds: \"debian\")")));
            }
            None => {
                for (field, set) in [
                    ("suite", self.suite.is_some()),
                    ("mirror", self.mirror.is_some()),
                    ("packages", !self.packages.is_empty()),
                ] {
                    if set {
                        return Err(invalid(field, "only means something with base = \"debian\""));
                    }
                }
                let kernel = self.kernel.ok_or_else(|| {
                    invalid("kernel", "missing; a profile needs a kernel, or base = \"debian\" for one provium builds")
                })?;
                let inject_agent = self.inject_agent.unwrap_or(true);
                if inject_agent && crate::vmm::argv::pins_other_rdinit(&cmdline) {
                    return Err(invalid(
                        "cmdline",
                        "already pins rdinit=; remove it, or set inject_agent = false and start the agent from the \
                         image",
                    ));
                }
                Guest::Files {
                    kernel: path(kernel),
                    initrd: self.initrd.filter(|p| !p.as_os_str().is_empty()).map(path),
                    cmdline_file: self.cmdline_file.map(path),
                    inject_agent,
                }
            }
        };
        let memory = self.memory.as_ref().map(|v| size("memory", v)).transpose()?;
        if self.cpus == Some(0) {
            return Err(invalid("cpus", "must be at least 1"));
        }
        let mut disks = Vec::new();
        for (i, d) in self.disks.into_iter().enumerate() {
            let field = format!("disks[{i}]");
            let size = d.size.as_ref().map(|v| size(&field, v)).transpose()?;
            let decl = DiskDecl::new(d.id, d.path.map(path), size, d.format.as_deref(), d.readonly, d.mediated);
            disks.push(decl.map_err(|m| invalid(&field, m))?);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, d) in disks.iter().enumerate() {
            let id = d.id.clone().unwrap_or_else(|| format!("disk{i}"));
            if !seen.insert(id.clone()) {
                return Err(invalid("disks", format!("disk id `{id}` is used twice; give each disk its own id")));
            }
        }
        Ok(Profile {
            name: name.to_string(),
            guest,
            cmdline,
            agent_boot_timeout: self.agent_boot_timeout,
            memory,
            cpus: self.cpus,
            disks,
            build: self.build.as_deref().map(expand),
            out_dir,
            dir: dir.to_path_buf(),
        })
    }
}

fn anchor(dir: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() || dir.as_os_str().is_empty() {
        p
    } else {
        dir.join(p)
    }
}
