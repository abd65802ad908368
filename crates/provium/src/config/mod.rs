//! `provium.toml`: reading, validating, and resolving profiles.
//!
//! Every error names the file and, where it applies, the key. Relative paths
//! in a profile resolve against the directory of the file that declares them,
//! so a suite runs the same from any working directory. Whether the files a
//! profile names exist is checked by [`Config::check_files`] for the
//! profiles a run can use (before any VM boots, after dynamic profiles are
//! built), so one config still serves machines that only have some of the
//! kernels. [`profile`] owns one profile's keys; `[profiles] from_dir`
//! reads one `profile.provium.toml` per sub-directory.

mod profile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use profile::{
    check_disk_id, default_out_dir, DebianBase, DiskDecl, DiskFormat, Guest, Profile, DEFAULT_MIRROR, DEFAULT_SUITE,
};

/// The profile that needs no configuration: provium's embedded guest.
pub const DEFAULT_PROFILE: &str = "default";
/// The file each sub-directory of `[profiles] from_dir` declares its profile in.
pub const PROFILE_FILE: &str = "profile.provium.toml";

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
    /// Profile tables, and `from_dir` (a string) beside them.
    #[serde(default)]
    profiles: RawProfiles,
}

/// `[profiles]`: `[profiles.<name>]` tables and `from_dir`. Read by hand
/// (one key is a string, the others tables) so that an error inside a
/// profile keeps its line and column.
#[derive(Debug, Default)]
struct RawProfiles {
    from_dir: Option<PathBuf>,
    tables: BTreeMap<String, profile::RawProfile>,
}

impl<'de> Deserialize<'de> for RawProfiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawProfiles;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[profiles.NAME] tables and `from_dir`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawProfiles, A::Error> {
                let mut out = RawProfiles::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "from_dir" {
                        out.from_dir = Some(map.next_value()?);
                    } else {
                        out.tables.insert(key, map.next_value()?);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visit)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvium {
    #[serde(default)]
    roots: Vec<PathBuf>,
    cache_dir: Option<PathBuf>,
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
        let text = read(&path)?;
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
        let invalid = |key: String, message: String| ConfigError::Invalid { path: path.to_path_buf(), key, message };
        let mut profiles = BTreeMap::new();
        for (name, raw) in raw.profiles.tables {
            let p =
                raw.resolve(&name, &base).map_err(|e| invalid(format!("profiles.{name}.{}", e.field), e.message))?;
            profiles.insert(name, p);
        }
        if let Some(dir) = raw.profiles.from_dir.map(anchor) {
            for (name, p) in profiles_in_dir(&dir)? {
                if profiles.contains_key(&name) {
                    return Err(invalid(
                        format!("profiles.{name}"),
                        format!("is declared here and in `{}`; keep one", dir.join(&name).join(PROFILE_FILE).display()),
                    ));
                }
                profiles.insert(name, p);
            }
        }
        let roots = raw.provium.roots.into_iter().map(anchor).collect();
        let cache_dir = raw.provium.cache_dir.map(anchor);
        Ok(Config { path: Some(path.to_path_buf()), roots, cache_dir, profiles })
    }

    /// Checks that the files of each profile in `names` exist (kernel,
    /// initrd, cmdline file, disk images); unknown names and `default` are
    /// skipped. `used` says why the profile matters (`; used by a.test.lua`).
    pub fn check_files(&self, names: &[(String, String)]) -> Result<(), ConfigError> {
        let path = self.path.clone().unwrap_or_else(|| PathBuf::from("provium.toml"));
        for (name, used) in names {
            let Some(p) = self.profiles.get(name) else { continue };
            for (field, file) in p.files() {
                if file.exists() {
                    continue;
                }
                return Err(ConfigError::MissingFile {
                    path: path.clone(),
                    key: format!("profiles.{name}.{field}"),
                    file: file.to_path_buf(),
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

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
}

/// The profiles of `[profiles] from_dir`: `<dir>/<name>/profile.provium.toml`
/// each (a profile's keys at top level), paths and `build` relative to
/// `<dir>/<name>`.
fn profiles_in_dir(dir: &Path) -> Result<Vec<(String, Profile)>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read { path: dir.to_path_buf(), source })?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(PROFILE_FILE).is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let own_dir = dir.join(&name);
        let file = own_dir.join(PROFILE_FILE);
        let text = read(&file)?;
        let raw: profile::RawProfile = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: file.clone(), message: one_line(&e, &text) })?;
        let p = raw.resolve(&name, &own_dir).map_err(|e| ConfigError::Invalid {
            path: file.clone(),
            key: e.field,
            message: e.message,
        })?;
        out.push((name, p));
    }
    Ok(out)
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
        let Guest::Files { kernel, initrd, inject_agent, .. } = &p.guest else { panic!("{p:?}") };
        assert_eq!(kernel, &PathBuf::from("/suite/bz"));
        assert_eq!(initrd, &Some(PathBuf::from("/abs/i.cpio")));
        assert_eq!(p.cmdline, "quiet panic=1");
        assert!(inject_agent);
        assert_eq!(c.roots, vec![PathBuf::from("/suite/tests")]);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse("[profiles.k]\ninitrd = \"x\"\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid config in `/suite/provium.toml`: `profiles.k.kernel`: missing; a profile needs a kernel, or base \
             = \"debian\" for one provium builds"
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

    #[test]
    fn debian_profiles_take_packages_and_vm_defaults() {
        let c =
            parse("[profiles.web]\nbase = \"debian\"\npackages = [\"python3\", \"curl\"]\nmemory = \"1G\"\ncpus = 2\n")
                .unwrap();
        let p = &c.profiles["web"];
        let Guest::Debian(d) = &p.guest else { panic!("{p:?}") };
        assert_eq!((d.suite.as_str(), d.mirror.as_str()), (DEFAULT_SUITE, DEFAULT_MIRROR));
        assert_eq!(d.packages, ["python3", "curl"]);
        assert_eq!((p.memory, p.cpus), (Some(1 << 30), Some(2)));
        assert!(p.files().is_empty(), "nothing of the user's to check");
        let bad = |t: &str| parse(t).unwrap_err().to_string();
        assert!(bad("[profiles.w]\nbase = \"arch\"\n").contains("`profiles.w.base`: unknown base `arch`"));
        let e = bad("[profiles.w]\nbase = \"debian\"\nkernel = \"/k\"\n");
        assert!(e.contains("`profiles.w.kernel`: cannot be set with base = \"debian\""), "{e}");
        let e = bad("[profiles.w]\nkernel = \"/k\"\npackages = [\"curl\"]\n");
        assert!(e.contains("`profiles.w.packages`: only means something with base"), "{e}");
        let e = bad("[profiles.w]\nbase = \"debian\"\npackages = [\"a b\"]\n");
        assert!(e.contains("`a b` is not a Debian package name"), "{e}");
        let e = bad("[profiles.w]\nbase = \"debian\"\nmemory = \"lots\"\n");
        assert!(e.contains("`profiles.w.memory`: cannot parse size `lots`"), "{e}");
    }

    #[test]
    fn disks_are_checked_where_declared() {
        let c = parse(
            "[profiles.d]\nkernel = \"/k\"\ndisks = [{ path = \"img/a.raw\", id = \"data\" }, { size = \"64M\" }]\n",
        )
        .unwrap();
        let d = &c.profiles["d"].disks;
        assert_eq!(d[0].image.as_deref(), Some(Path::new("/suite/img/a.raw")));
        assert_eq!((d[1].id.as_deref(), d[1].size), (None, Some(64 << 20)));
        let e = c.check_files(&[("d".into(), String::new())]).unwrap_err().to_string();
        assert!(e.contains("`profiles.d.kernel`"), "the kernel is checked first: {e}");
        let bad = |t: &str| parse(t).unwrap_err().to_string();
        let e = bad("[profiles.d]\nkernel = \"/k\"\ndisks = [{ size = 1, id = \"x\" }, { size = 1, id = \"x\" }]\n");
        assert!(e.contains("disk id `x` is used twice"), "{e}");
        let e = bad("[profiles.d]\nkernel = \"/k\"\ndisks = [{ id = \"x\" }]\n");
        assert!(e.contains("`profiles.d.disks[0]`: needs `image` (or `path`: a file to start from) or `size`"), "{e}");
        let e = bad("[profiles.d]\nkernel = \"/k\"\ndisks = [{ size = 1, id = \"a/b\" }]\n");
        assert!(e.contains("disk id `a/b` must be"), "{e}");
        assert!(parse("[profiles.d]\nkernel = \"/k\"\ndisks = [{ size = 1, mediated = true }]\n").is_ok());
        let e = bad("[profiles.d]\nkernel = \"/k\"\ndisks = [{ size = 1, mediated = false }]\n");
        assert!(e.contains("mediated = false is not supported"), "{e}");
    }

    #[test]
    fn dynamic_profiles_expand_out_and_from_dir_anchors_to_each_profile() {
        let c = parse(
            "[profiles.dyn]\nbuild = \"make -C src OUT={out}\"\nbuild_out = \"/b/dyn\"\nkernel = \"{out}/bzImage\"\n\
             cmdline = \"root={out}/x\"\n",
        )
        .unwrap();
        let p = &c.profiles["dyn"];
        assert_eq!(p.build.as_deref(), Some("make -C src OUT=/b/dyn"));
        assert_eq!(p.kernel(), Some(Path::new("/b/dyn/bzImage")));
        assert_eq!(p.cmdline, "root=/b/dyn/x");
        assert_eq!(p.dir, PathBuf::from("/suite"));

        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("profiles/peinit");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(
            own.join(PROFILE_FILE),
            "build = \"./build.sh {out}\"\nbuild_out = \"out\"\nkernel = \"{out}/k\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("profiles/not-a-profile")).unwrap();
        let file = dir.path().join("provium.toml");
        let c = Config::parse(&file, "[profiles]\nfrom_dir = \"profiles\"\n").unwrap();
        assert_eq!(c.profiles.keys().collect::<Vec<_>>(), ["peinit"]);
        let p = &c.profiles["peinit"];
        assert_eq!(p.dir, own);
        assert_eq!(p.out_dir, own.join("out"));
        assert_eq!(p.kernel(), Some(own.join("out/k").as_path()));
        let e = Config::parse(&file, "[profiles]\nfrom_dir = \"profiles\"\n[profiles.peinit]\nkernel = \"/k\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`profiles.peinit`: is declared here and in"), "{e}");
        let e = Config::parse(&file, "[profiles]\nfrom_dir = \"nope\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
