//! From a profile name to the files QEMU boots: kernel, initramfs (with the
//! agent injected) and command line.
//!
//! The `default` profile is provium's embedded guest ([`crate::guest`]),
//! prepared once and cached by its inputs. A user profile's initrd gets the
//! agent overlay appended (cached by the initrd's identity and the agent's
//! hash). A Debian profile boots provium's kernel with a small first-stage
//! initramfs ([`guest::Flavor::DiskRoot`]) and the squashfs root image
//! `crate::debian` builds. Paths are checked here, at boot, with errors that
//! name the profile field. [`prepare`] runs dynamic profiles' builds and
//! Debian builds before a run.

mod prepare;

pub use prepare::{Builds, PrepareError};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{Config, DiskDecl, Guest, Profile, DEFAULT_PROFILE};
use crate::guest::{self, Flavor, GuestError, GuestInputs, PreparedGuest};

/// The embedded static guest agent.
pub static AGENT: &[u8] = include_bytes!(env!("PROVIUM_AGENT_PATH"));

/// Default time to wait for the agent's handshake after spawning QEMU.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What one boot needs.
#[derive(Debug, Clone)]
pub struct BootImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The profile's command line (provium's additions come later).
    pub cmdline: String,
    pub inject_agent: bool,
    pub agent_timeout: Duration,
    /// The read-only image the guest's root lives on (a Debian profile's).
    pub root_image: Option<PathBuf>,
    /// The profile's data disks, attached before a boot's own.
    pub disks: Vec<DiskDecl>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("profile `{name}` is not defined ({where_}); available: {available}")]
    UnknownProfile { name: String, where_: String, available: String },
    #[error("profile `{profile}`: `{field}` points to `{path}`, which does not exist")]
    MissingPath { profile: String, field: &'static str, path: PathBuf },
    #[error("profile `{profile}`: cannot read `{path}`")]
    Read {
        profile: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the default guest")]
    DefaultGuest(#[source] GuestError),
    #[error("profile `{profile}`: cannot prepare provium's kernel for it")]
    Kernel {
        profile: String,
        #[source]
        source: GuestError,
    },
    #[error(transparent)]
    Build(Box<PrepareError>),
    #[error("profile `{profile}`: cannot build its Debian userland")]
    Debian {
        profile: String,
        #[source]
        source: Box<crate::debian::DebianError>,
    },
    #[error("cannot write the merged initramfs to `{path}`")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// provium's cache directory: `$PROVIUM_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/provium`, else `~/.cache/provium`.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("PROVIUM_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("provium");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("provium")
}

/// The default guest's kernel command line (what `kernel_cmdline`
/// replaces). `loglevel=5` puts the kernel's warnings and worse on the
/// console (so a failure's excerpt shows them) but not its boot chatter.
pub fn default_cmdline() -> String {
    String::from("console=ttyS0 loglevel=5 cryptomgr.notests 8250.nr_uarts=1 random.trust_cpu=on")
}

/// Resolves profiles to boot images; shared by all test files of a run.
pub struct Images {
    config: Arc<Config>,
    cache: PathBuf,
    default: Mutex<Option<PreparedGuest>>,
    disk_root: Mutex<Option<PreparedGuest>>,
    /// Debian root images by profile, once prepared in this run.
    debian: Mutex<std::collections::HashMap<String, crate::debian::DebianImage>>,
    /// Profiles whose `build` ran in this run.
    built: Mutex<std::collections::HashSet<String>>,
    /// `--no-build`.
    skip_builds: std::sync::atomic::AtomicBool,
}

impl Images {
    pub fn new(config: Arc<Config>) -> Images {
        Images {
            config,
            cache: cache_root(),
            default: Mutex::new(None),
            disk_root: Mutex::new(None),
            debian: Mutex::default(),
            built: Mutex::default(),
            skip_builds: Default::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Prepares (or finds cached) the default guest. Held under a lock so
    /// concurrent files build it once.
    pub fn default_guest(&self) -> Result<PreparedGuest, ImageError> {
        self.prepared(&self.default, Flavor::Default).map_err(ImageError::DefaultGuest)
    }

    /// The first-stage initramfs of a guest whose root is a disk image.
    fn disk_root_guest(&self, profile: &str) -> Result<PreparedGuest, ImageError> {
        self.prepared(&self.disk_root, Flavor::DiskRoot)
            .map_err(|source| ImageError::Kernel { profile: profile.to_string(), source })
    }

    /// `flavor`'s initramfs (and the vmlinux), prepared once per run and
    /// kept in `slot`.
    fn prepared(&self, slot: &Mutex<Option<PreparedGuest>>, flavor: Flavor) -> Result<PreparedGuest, GuestError> {
        let mut slot = crate::sync::lock(slot);
        if let Some(g) = slot.as_ref() {
            return Ok(g.clone());
        }
        let inputs = GuestInputs::locate()?;
        let g = guest::prepare_flavor(&inputs, AGENT, &self.cache, flavor)?;
        *slot = Some(g.clone());
        Ok(g)
    }

    /// Builds (or finds cached) the Debian userland of `profile`, saying
    /// what it does on `progress`; later calls in this run return at once.
    pub fn prepare_debian(
        &self,
        profile: &Profile,
        refresh: bool,
        progress: &mut dyn FnMut(crate::debian::Step),
    ) -> Result<crate::debian::DebianImage, ImageError> {
        let Guest::Debian(base) = &profile.guest else {
            unreachable!("prepare_debian is called for Debian profiles only")
        };
        if let Some(img) = crate::sync::lock(&self.debian).get(&profile.name) {
            return Ok(img.clone());
        }
        let failed = |source| ImageError::Debian { profile: profile.name.clone(), source: Box::new(source) };
        let kernel =
            GuestInputs::locate().map_err(|source| ImageError::Kernel { profile: profile.name.clone(), source })?;
        let spec = crate::debian::DebianSpec {
            suite: base.suite.clone(),
            packages: base.packages.clone(),
            mirror: base.mirror.clone(),
            ..Default::default()
        };
        let img = crate::debian::prepare(&spec, &kernel, &self.cache, refresh, progress).map_err(failed)?;
        crate::sync::lock(&self.debian).insert(profile.name.clone(), img.clone());
        Ok(img)
    }

    /// One line per input that decides what a guest boots into: every
    /// profile's kernel, initrd and command line (sorted by name), the
    /// default guest's cache key, and the agent. Fixture cache keys include
    /// these, so changing any of them rebuilds every fixture (deliberately
    /// coarse: a fixture may boot any profile).
    pub fn identity(&self) -> Vec<String> {
        let stamp = |p: &Path| match std::fs::metadata(p) {
            Ok(md) => {
                let mtime = md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                format!("{}@{}:{}", p.display(), md.len(), mtime.map(|d| d.as_nanos()).unwrap_or(0))
            }
            Err(_) => format!("{}@missing", p.display()),
        };
        let mut lines = vec![format!("agent={:x}", Sha256::digest(AGENT))];
        for (name, p) in &self.config.profiles {
            lines.push(format!("profile={name}"));
            match &p.guest {
                Guest::Files { kernel, initrd, cmdline_file, inject_agent } => {
                    lines.push(format!("kernel={}", stamp(kernel)));
                    if let Some(i) = initrd {
                        lines.push(format!("initrd={}", stamp(i)));
                    }
                    if let Some(f) = cmdline_file {
                        lines.push(format!("cmdline_file={}", stamp(f)));
                    }
                    lines.push(format!("inject_agent={inject_agent}"));
                }
                // The declaration, not the versions the mirror resolved: a
                // key must not depend on which files a run prepared. A
                // fixture keeps the userland it was built on (its snapshot
                // names that image, which stays in the cache) until the
                // declaration changes or the fixture is rebuilt.
                Guest::Debian(d) => {
                    let mut packages = d.packages.clone();
                    packages.sort();
                    lines.push(format!("debian={} {} {}", d.suite, d.mirror, packages.join(",")));
                }
            }
            lines.push(format!("cmdline={}", p.cmdline));
            for d in &p.disks {
                let image = d.image.as_deref().map(stamp).unwrap_or_default();
                lines.push(format!("disk={:?} image={image} size={:?} ro={}", d.id, d.size, d.readonly));
            }
        }
        match self.default_guest() {
            Ok(g) => lines.push(format!("default_guest={}", g.key)),
            Err(_) => lines.push("default_guest=unavailable".into()),
        }
        lines
    }

    pub fn resolve(&self, name: &str) -> Result<BootImage, ImageError> {
        if let Some(p) = self.config.profiles.get(name) {
            return self.resolve_profile(p);
        }
        if name == DEFAULT_PROFILE {
            let g = self.default_guest()?;
            return Ok(BootImage {
                kernel: g.vmlinux,
                initrd: g.initrd,
                cmdline: default_cmdline(),
                inject_agent: true,
                agent_timeout: DEFAULT_AGENT_TIMEOUT,
                root_image: None,
                disks: Vec::new(),
            });
        }
        let where_ = match &self.config.path {
            Some(p) => format!("no [profiles.{name}] in `{}`", p.display()),
            None => "there is no provium.toml here".to_string(),
        };
        Err(ImageError::UnknownProfile {
            name: name.to_string(),
            where_,
            available: self.config.profile_names().join(", "),
        })
    }

    fn resolve_profile(&self, p: &Profile) -> Result<BootImage, ImageError> {
        // Built before the run for the profiles its files name; one picked
        // at run time builds at its first boot.
        self.run_build(p, &mut |line| eprintln!("{line}")).map_err(|e| ImageError::Build(Box::new(e)))?;
        let agent_timeout = p.agent_boot_timeout.map(Duration::from_secs_f64).unwrap_or(DEFAULT_AGENT_TIMEOUT);
        let (kernel, initrd, cmdline_file, inject_agent) = match &p.guest {
            Guest::Files { kernel, initrd, cmdline_file, inject_agent } => {
                (kernel, initrd, cmdline_file, *inject_agent)
            }
            Guest::Debian(_) => {
                let root =
                    self.prepare_debian(p, false, &mut |step| eprintln!("provium: profile `{}`: {step}", p.name))?;
                let g = self.disk_root_guest(&p.name)?;
                let mut cmdline = default_cmdline();
                if !p.cmdline.is_empty() {
                    cmdline.push(' ');
                    cmdline.push_str(&p.cmdline);
                }
                return Ok(BootImage {
                    kernel: g.vmlinux,
                    initrd: g.initrd,
                    cmdline,
                    inject_agent: true,
                    agent_timeout,
                    root_image: Some(root.rootfs),
                    disks: p.disks.clone(),
                });
            }
        };
        let exists = |field: &'static str, path: &Path| {
            if path.exists() {
                Ok(())
            } else {
                Err(ImageError::MissingPath { profile: p.name.clone(), field, path: path.to_path_buf() })
            }
        };
        exists("kernel", kernel)?;
        if let Some(i) = initrd {
            exists("initrd", i)?;
        }
        let mut cmdline = String::new();
        if let Some(f) = cmdline_file {
            exists("cmdline_file", f)?;
            let text = std::fs::read_to_string(f).map_err(|source| ImageError::Read {
                profile: p.name.clone(),
                path: f.clone(),
                source,
            })?;
            cmdline = text.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        if !p.cmdline.is_empty() {
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(&p.cmdline);
        }
        let initrd = match (initrd, inject_agent) {
            (Some(i), false) => i.clone(),
            (initrd, true) => self.merged_initrd(&p.name, initrd.as_deref())?,
            (None, false) => {
                return Err(ImageError::MissingPath { profile: p.name.clone(), field: "initrd", path: PathBuf::new() })
            }
        };
        Ok(BootImage {
            kernel: kernel.clone(),
            initrd,
            cmdline,
            inject_agent,
            agent_timeout,
            root_image: None,
            disks: p.disks.clone(),
        })
    }

    /// The user's initrd (zero-padded to 4 bytes) followed by the agent
    /// overlay, cached by the initrd's path, size, mtime and the agent.
    fn merged_initrd(&self, profile: &str, initrd: Option<&Path>) -> Result<PathBuf, ImageError> {
        let mut h = Sha256::new();
        h.update(b"merged-initrd-v2\0");
        h.update(Sha256::digest(AGENT));
        if let Some(i) = initrd {
            let md = std::fs::metadata(i).map_err(|source| ImageError::Read {
                profile: profile.to_string(),
                path: i.to_path_buf(),
                source,
            })?;
            h.update(i.display().to_string().as_bytes());
            h.update(md.len().to_le_bytes());
            h.update(format!("{:?}", md.modified().ok()).as_bytes());
        }
        let key: String = h.finalize().iter().take(10).map(|b| format!("{b:02x}")).collect();
        let dir = self.cache.join("initrd");
        let dest = dir.join(format!("{key}.cpio"));
        if dest.exists() {
            return Ok(dest);
        }
        let cache_err = |source| ImageError::Cache { path: dest.clone(), source };
        let mut bytes = match initrd {
            Some(i) => std::fs::read(i).map_err(|source| ImageError::Read {
                profile: profile.to_string(),
                path: i.to_path_buf(),
                source,
            })?,
            None => Vec::new(),
        };
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes.extend(guest::overlay_cpio(AGENT));
        guest::pad_to_page(&mut bytes);
        std::fs::create_dir_all(&dir).map_err(cache_err)?;
        let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(cache_err)?;
        std::fs::rename(&tmp, &dest).map_err(cache_err)?;
        Ok(dest)
    }
}
