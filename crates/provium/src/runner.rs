//! Finding test files and running them: each file on its own OS thread with
//! its own Lua state, several files at once within a CPU and memory budget,
//! tests within a file in order. Results flow to the caller as
//! [`FileReport`]s through a channel as files finish.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::image::Images;
use crate::lua::{run_file, FileEnv};
use crate::report::{FileReport, TestReport};
use crate::vmm::Accel;

/// A discovered test file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFile {
    pub path: PathBuf,
    /// How the path is shown (relative to where it was found).
    pub shown: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("`{0}` does not exist")]
    Missing(PathBuf),
    #[error("`{0}` is not a *.test.lua file")]
    NotATest(PathBuf),
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if !name.starts_with('.') && name != "target" {
                walk(&e.path(), out);
            }
        } else if ft.is_file() && name.ends_with(".test.lua") {
            out.push(e.path());
        }
    }
}

/// Collects `*.test.lua` files under `paths` (files are taken as given),
/// sorted and without duplicates.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<TestFile>, DiscoverError> {
    let mut found = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut found);
        } else if p.is_file() {
            if !p.to_string_lossy().ends_with(".test.lua") {
                return Err(DiscoverError::NotATest(p.clone()));
            }
            found.push(p.clone());
        } else {
            return Err(DiscoverError::Missing(p.clone()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    found.retain(|p| seen.insert(p.clone()));
    Ok(found
        .into_iter()
        .map(|path| {
            let shown = path.strip_prefix("./").unwrap_or(&path).display().to_string();
            TestFile { path, shown }
        })
        .collect())
}

/// How many files may run at once: one per CPU, and no more than the
/// available memory allows at ~1 GiB per file.
pub fn default_jobs() -> usize {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kib| (kib >> 20) as usize)
        .unwrap_or(1);
    cpus.min(mem_gib).max(1)
}

/// What a run shares across files.
pub struct RunConfig {
    pub images: Arc<Images>,
    pub accel: Accel,
    pub fixtures: Arc<crate::fixture::Fixtures>,
    pub timeout: Option<Duration>,
    pub jobs: usize,
}

/// Something that happened, for live output.
pub enum Progress {
    Test { file: String, test: TestReport },
    File(FileReport),
}

/// Runs every file; sends progress as it happens; returns when all are done.
pub fn run(files: Vec<TestFile>, cfg: Arc<RunConfig>, progress: Sender<Progress>) {
    let queue = Arc::new(Mutex::new(files.into_iter().collect::<VecDeque<_>>()));
    let workers: Vec<_> = (0..cfg.jobs.max(1))
        .map(|i| {
            let queue = queue.clone();
            let cfg = cfg.clone();
            let progress = progress.clone();
            std::thread::Builder::new()
                .name(format!("file-runner-{i}"))
                .stack_size(16 << 20)
                .spawn(move || loop {
                    let Some(file) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let report = run_one(&file, &cfg, &progress);
                    let _ = progress.send(Progress::File(report));
                })
                .expect("spawn runner thread")
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

fn run_one(file: &TestFile, cfg: &RunConfig, progress: &Sender<Progress>) -> FileReport {
    let on_test = |t: &TestReport| {
        let _ = progress.send(Progress::Test { file: file.shown.clone(), test: t.clone() });
    };
    let env = FileEnv {
        images: cfg.images.clone(),
        accel: cfg.accel,
        fixtures: cfg.fixtures.clone(),
        timeout: cfg.timeout,
        on_test: &on_test,
    };
    // A panic in provium itself fails this file only.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_file(&file.path, &file.shown, &env))) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let mut r = FileReport::new(&file.shown);
            r.chunk_error = Some(format!("internal error: provium panicked: {what}"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_sorts_recurses_and_skips_hidden() {
        let d = tempfile::tempdir().unwrap();
        for p in ["b.test.lua", "a/z.test.lua", "a/helper.lua", ".hidden/x.test.lua", "c.fixture.lua"] {
            let full = d.path().join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, "").unwrap();
        }
        let found = discover(&[d.path().to_path_buf()]).unwrap();
        let names: Vec<String> =
            found.iter().map(|f| f.path.strip_prefix(d.path()).unwrap().display().to_string()).collect();
        assert_eq!(names, vec!["a/z.test.lua", "b.test.lua"]);
        assert!(matches!(discover(&[d.path().join("nope")]), Err(DiscoverError::Missing(_))));
        assert!(matches!(discover(&[d.path().join("a/helper.lua")]), Err(DiscoverError::NotATest(_))));
    }
}
