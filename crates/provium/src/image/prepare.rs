//! Getting profiles ready before anything boots: running a dynamic
//! profile's `build` command, and building (or finding cached) a Debian
//! profile's userland. One line of progress per step goes to `say`.
//!
//! A run prepares the profiles its files use, `provium prepare` the one it
//! names or all of them. A `build` runs once per run, in the profile's own
//! directory, with its output on stderr (so `--json` stays clean), and
//! `PROVIUM_BUILD_DIR` naming its `{out}`; its failure keeps the last lines
//! of its stderr for the error.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{ImageError, Images};
use crate::config::{Guest, Profile};

/// Lines of a failed build's stderr kept for its error.
const STDERR_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("profile `{profile}`: build command failed ({status}){}", tail_text(.tail))]
    BuildFailed { profile: String, status: String, tail: Vec<String> },
    #[error("profile `{profile}`: cannot run its build command `{command}`")]
    BuildSpawn {
        profile: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("profile `{profile}`: cannot create its build directory `{}`", .dir.display())]
    OutDir {
        profile: String,
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::from("; it wrote nothing to stderr")
    } else {
        format!("; the end of its stderr:\n{}", tail.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n"))
    }
}

/// What to do about `build` commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builds {
    Run,
    /// `--no-build`: use what an earlier build left in `{out}`.
    Skip,
}

impl Images {
    /// Whether resolving a profile may run its `build` (not under
    /// `--no-build`, nor for `provium doctor`).
    pub fn set_builds(&self, builds: Builds) {
        self.skip_builds.store(builds == Builds::Skip, std::sync::atomic::Ordering::Relaxed);
    }

    /// Prepares each profile of `names` that needs it (unknown names and
    /// `default` are skipped): its build, then its Debian userland.
    pub fn prepare_profiles(
        &self,
        names: &[String],
        builds: Builds,
        refresh: bool,
        say: &mut dyn FnMut(String),
    ) -> Result<(), PrepareError> {
        self.set_builds(builds);
        for name in names {
            let Some(p) = self.config().profiles.get(name) else { continue };
            if builds == Builds::Run {
                self.run_build(p, say)?;
            }
            if let Guest::Debian(base) = &p.guest {
                let start = Instant::now();
                let img =
                    self.prepare_debian(p, refresh, &mut |step| say(format!("provium: profile `{}`: {step}", p.name)))?;
                if img.built {
                    say(format!(
                        "provium: profile `{}`: Debian {} with {} packages ready in {:.1}s ({})",
                        p.name,
                        base.suite,
                        img.packages.len(),
                        start.elapsed().as_secs_f64(),
                        img.rootfs.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Runs `p`'s build command, once per run (not at all under `--no-build`).
    pub(super) fn run_build(&self, p: &Profile, say: &mut dyn FnMut(String)) -> Result<(), PrepareError> {
        let Some(command) = &p.build else { return Ok(()) };
        if self.skip_builds.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        if !crate::sync::lock(&self.built).insert(p.name.clone()) {
            return Ok(());
        }
        std::fs::create_dir_all(&p.out_dir).map_err(|source| PrepareError::OutDir {
            profile: p.name.clone(),
            dir: p.out_dir.clone(),
            source,
        })?;
        say(format!("provium: building profile `{}` → {}", p.name, p.out_dir.display()));
        let start = Instant::now();
        let spawn_failed =
            |source| PrepareError::BuildSpawn { profile: p.name.clone(), command: command.clone(), source };
        // The build's stdout goes to provium's stderr: stdout may be JSON.
        let stdout = std::io::stderr().as_fd().try_clone_to_owned().map_err(spawn_failed)?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(if p.dir.as_os_str().is_empty() { std::path::Path::new(".") } else { &p.dir })
            .env("PROVIUM_BUILD_DIR", &p.out_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_failed)?;
        let mut tail = VecDeque::new();
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
        let status = child.wait().map_err(spawn_failed)?;
        if !status.success() {
            let status = match status.code() {
                Some(code) => format!("exit code {code}"),
                None => format!("{status}"),
            };
            return Err(PrepareError::BuildFailed { profile: p.name.clone(), status, tail: tail.into() });
        }
        say(format!("provium: built profile `{}` in {:.1}s", p.name, start.elapsed().as_secs_f64()));
        Ok(())
    }
}
