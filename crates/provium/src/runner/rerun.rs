//! The rerun state (`--rerun-failed`) and `--since`: narrowing the
//! discovered files to the ones that failed last time, or that changed
//! after a given file.
//!
//! The state is a JSON array of the canonical paths of the files that
//! failed, at `$PROVIUM_RERUN_STATE`, else `$HOME/.cache/provium/rerun.json`,
//! else `/tmp/provium-rerun.json`. It is written (atomically) only by a run
//! in which a file failed; a clean run leaves it as it was.

use std::path::{Path, PathBuf};

use super::TestFile;

/// Where the rerun state lives.
pub fn state_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PROVIUM_RERUN_STATE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Path::new(&home).join(".cache/provium/rerun.json"),
        None => PathBuf::from("/tmp/provium-rerun.json"),
    }
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// The failed files the state at `path` lists; empty when it is missing,
/// unreadable or not a list.
pub fn read_state(path: &Path) -> Vec<PathBuf> {
    std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice::<Vec<PathBuf>>(&bytes).ok()).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
#[error("writing the rerun state `{path}`")]
pub struct RerunWriteError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Records `failed` as the state, when it is not empty (tmp + rename).
pub fn write_state(path: &Path, failed: &[PathBuf]) -> Result<(), RerunWriteError> {
    if failed.is_empty() {
        return Ok(());
    }
    let err = |source| RerunWriteError { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let list: Vec<PathBuf> = failed.iter().map(|p| canonical(p)).collect();
    crate::files::write_atomically(path, &serde_json::to_vec_pretty(&list).expect("paths serialise")).map_err(err)
}

/// The files of `files` that the state lists.
pub fn only_failed(files: Vec<TestFile>, state: &[PathBuf]) -> Vec<TestFile> {
    files.into_iter().filter(|f| state.contains(&canonical(&f.path))).collect()
}

/// `--since PATH`: the files modified strictly after `reference` was; all
/// of them when `reference` cannot be read.
pub fn changed_since(files: Vec<TestFile>, reference: &Path) -> Vec<TestFile> {
    let Ok(since) = std::fs::metadata(reference).and_then(|m| m.modified()) else {
        return files;
    };
    files
        .into_iter()
        .filter(|f| std::fs::metadata(&f.path).and_then(|m| m.modified()).map(|t| t > since).unwrap_or(true))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn touch(p: &Path, t: SystemTime) {
        std::fs::write(p, "").unwrap();
        std::fs::File::options().write(true).open(p).unwrap().set_modified(t).unwrap();
    }

    fn file(p: PathBuf) -> TestFile {
        let shown = p.file_name().unwrap().to_string_lossy().into_owned();
        TestFile { path: p, shown }
    }

    #[test]
    fn the_state_lists_canonical_failed_paths_and_is_written_only_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("sub/rerun.json");
        write_state(&state, &[]).unwrap();
        assert!(!state.exists(), "a clean run writes nothing");
        let (a, b) = (d.path().join("a.test.lua"), d.path().join("b.test.lua"));
        touch(&a, SystemTime::now());
        touch(&b, SystemTime::now());
        write_state(&state, &[d.path().join("./a.test.lua")]).unwrap();
        let listed = read_state(&state);
        assert_eq!(listed, vec![a.canonicalize().unwrap()]);
        let kept = only_failed(vec![file(a.clone()), file(b)], &listed);
        assert_eq!(kept, vec![file(a)]);
        std::fs::write(&state, "not json").unwrap();
        assert!(read_state(&state).is_empty());
        assert!(read_state(&d.path().join("missing.json")).is_empty());
    }

    #[test]
    fn since_keeps_files_strictly_newer_than_the_reference() {
        let d = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(100);
        let (old, new, reference) = (d.path().join("old"), d.path().join("new"), d.path().join("ref"));
        touch(&old, t0);
        touch(&reference, t0);
        touch(&new, t0 + Duration::from_secs(10));
        let files = vec![file(old), file(new.clone())];
        assert_eq!(changed_since(files.clone(), &reference), vec![file(new)], "equal mtime is not newer");
        assert_eq!(changed_since(files.clone(), &d.path().join("nope")), files);
    }
}
