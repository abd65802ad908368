//! `provium.toml`: reading, validating, and resolving profiles.
//!
//! Every error names the file and, where it applies, the key. Relative paths
//! in a profile resolve against the directory of the file that declares them,
//! so a suite runs the same from any working directory. Whether the files a
//! profile names exist is checked by [`Config::check_files`] for the
//! profiles a run can use (before any VM boots), so one config still serves
//! machines that only have some of the kernels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The profile that needs no configuration: provium's embedded guest.
pub const DEFAULT_PROFILE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config in `{path}`: `{key}`: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
    #[error("invalid config in `{path}`: `{key}`: `{file}` does not exist{used}")]
    MissingFile { path: PathBuf, key: String, file: PathBuf, used: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    provium: RawProvium,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvium {
    #[serde(default)]
    roots: Vec<PathBuf>,
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    #[serde(default)]
    cmdline: String,
    cmdline_file: Option<PathBuf>,
    inject_agent: Option<bool>,
    agent_boot_timeout: Option<f64>,
}

/// A user-declared guest: what to boot and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub kernel: PathBuf,
    /// `None`: the agent overlay alone is the initramfs.
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cmdline_file: Option<PathBuf>,
    pub inject_agent: bool,
    pub agent_boot_timeout: Option<f64>,
}

/// The loaded configuration (an empty one when there is no file).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    pub roots: Vec<PathBuf>,
    /// Where fixture snapshots are cached (`[provium] cache_dir`).
    pub cache_dir: Option<PathBuf>,
    pub profiles: BTreeMap<String, Profile>,
}

impl Config {
    /// Loads `explicit` (which must exist), else `./provium.toml` if present,
    /// else an empty configuration.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let p = PathBuf::from("provium.toml");
                if !p.exists() {
                    return Ok(Config::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        Config::parse(&path, &text)
    }

    /// Parses config text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: one_line(&e, text) })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let anchor = |p: PathBuf| {
            if p.is_absolute() || base.as_os_str().is_empty() {
                p
            } else {
                base.join(p)
            }
        };
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message: message.to_string(),
        };
        let mut profiles = BTreeMap::new();
        for (name, p) in raw.profiles {
            let key = |field: &str| format!("profiles.{name}.{field}");
            let kernel = p.kernel.ok_or_else(|| invalid(key("kernel"), "missing; every profile needs a kernel"))?;
            if let Some(t) = p.agent_boot_timeout {
                if !(t.is_finite() && t > 0.0) {
                    return Err(invalid(key("agent_boot_timeout"), "must be a positive number of seconds"));
                }
            }
            let inject_agent = p.inject_agent.unwrap_or(true);
            if inject_agent && crate::vmm::argv::pins_other_rdinit(&p.cmdline) {
                return Err(invalid(
                    key("cmdline"),
                    "already pins rdinit=; remove it, or set inject_agent = false and start the agent from the image",
                ));
            }
            profiles.insert(
                name.clone(),
                Profile {
                    name: name.clone(),
                    kernel: anchor(kernel),
                    initrd: p.initrd.filter(|p| !p.as_os_str().is_empty()).map(anchor),
                    cmdline: p.cmdline.split_whitespace().collect::<Vec<_>>().join(" "),
                    cmdline_file: p.cmdline_file.map(anchor),
                    inject_agent,
                    agent_boot_timeout: p.agent_boot_timeout,
                },
            );
        }
        let roots = raw.provium.roots.into_iter().map(anchor).collect();
        let cache_dir = raw.provium.cache_dir.map(anchor);
        Ok(Config { path: Some(path.to_path_buf()), roots, cache_dir, profiles })
    }

    /// Checks that the files of each profile in `names` exist (kernel,
    /// initrd, cmdline file); unknown names and `default` are skipped.
    /// `used` says why the profile matters (`; used by a.test.lua`).
    pub fn check_files(&self, names: &[(String, String)]) -> Result<(), ConfigError> {
        let path = self.path.clone().unwrap_or_else(|| PathBuf::from("provium.toml"));
        for (name, used) in names {
            let Some(p) = self.profiles.get(name) else { continue };
            let files =
                [("kernel", Some(&p.kernel)), ("initrd", p.initrd.as_ref()), ("cmdline_file", p.cmdline_file.as_ref())];
            for (field, file) in files {
                let Some(file) = file.filter(|f| !f.exists()) else { continue };
                return Err(ConfigError::MissingFile {
                    path: path.clone(),
                    key: format!("profiles.{name}.{field}"),
                    file: file.clone(),
                    used: used.clone(),
                });
            }
        }
        Ok(())
    }

    /// Names every profile a test can use, the built-in one included.
    pub fn profile_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.profiles.keys().cloned().collect();
        if !self.profiles.contains_key(DEFAULT_PROFILE) {
            names.insert(0, DEFAULT_PROFILE.to_string());
        }
        names
    }
}

/// A TOML error in one line, with where it is (`line 3, column 7`).
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/suite/provium.toml"), text)
    }

    #[test]
    fn empty_file_is_fine_and_default_profile_exists() {
        let c = parse("").unwrap();
        assert!(c.profiles.is_empty());
        assert_eq!(c.profile_names(), vec!["default"]);
    }

    #[test]
    fn profile_paths_anchor_to_the_config_dir() {
        let c = parse(
            "[provium]\nroots = [\"tests\"]\n[profiles.k]\nkernel = \"bz\"\ninitrd = \"/abs/i.cpio\"\ncmdline = \"quiet   panic=1\"\n",
        )
        .unwrap();
        let p = &c.profiles["k"];
        assert_eq!(p.kernel, PathBuf::from("/suite/bz"));
        assert_eq!(p.initrd, Some(PathBuf::from("/abs/i.cpio")));
        assert_eq!(p.cmdline, "quiet panic=1");
        assert!(p.inject_agent);
        assert_eq!(c.roots, vec![PathBuf::from("/suite/tests")]);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse("[profiles.k]\ninitrd = \"x\"\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid config in `/suite/provium.toml`: `profiles.k.kernel`: missing; every profile needs a kernel"
        );
        let e = parse("[profiles.k]\nkernal = \"x\"\n").unwrap_err().to_string();
        assert!(e.starts_with("cannot parse `/suite/provium.toml`: line 2, column 1: unknown field `kernal`"), "{e}");
        let e = parse("[profiles.k]\nkernel = \"x\"\ncmdline = \"rdinit=/init\"\n").unwrap_err().to_string();
        assert!(e.contains("`profiles.k.cmdline`: already pins rdinit="), "{e}");
        let e = parse("[profiles.k\n").unwrap_err().to_string();
        assert!(e.starts_with("cannot parse `/suite/provium.toml`: line 1, column"), "{e}");
        let e = parse("[profiles.k]\nkernel = \"x\"\nmemory = = 3\n").unwrap_err().to_string();
        assert!(e.contains("line 3, column 10"), "{e}");
    }

    #[test]
    fn missing_files_of_used_profiles_are_reported_with_their_key() {
        let c = parse(
            "[profiles.k]\nkernel = \"/no/vmlinuz\"\n[profiles.j]\nkernel = \"/bin/sh\"\ninitrd = \"/no/initrd\"\n",
        )
        .unwrap();
        assert!(c.check_files(&[]).is_ok(), "nothing used, nothing checked");
        let e = c.check_files(&[("k".into(), "; used by a.test.lua".into())]).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid config in `/suite/provium.toml`: `profiles.k.kernel`: `/no/vmlinuz` does not exist; used by a.test.lua"
        );
        let e = c.check_files(&[("j".into(), String::new())]).unwrap_err().to_string();
        assert!(e.contains("`profiles.j.initrd`: `/no/initrd` does not exist"), "{e}");
        assert!(c.check_files(&[("default".into(), String::new()), ("nope".into(), String::new())]).is_ok());
    }
}
