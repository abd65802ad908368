//! Writing a file so that a reader sees the old content or the new, never
//! half of it: a temporary file beside it (`<path>.tmp.<pid>`), then a
//! rename. Used by the reports (JUnit, merged JUnit) and the rerun state.
//! A leaf: it uses nothing of the crate, and any layer may use it.

use std::path::{Path, PathBuf};

/// Where [`write_atomically`] stages `path`: beside it, named for this
/// process, so two runs writing one report do not share it.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(tmp)
}

/// Writes `bytes` to `path` through [`tmp_path`] and a rename; on failure
/// the temporary file is removed and `path` is as it was.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_and_a_failed_one_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report.xml");
        std::fs::write(&p, "old").unwrap();
        write_atomically(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert!(!tmp_path(&p).exists());
        let missing = d.path().join("no/such/dir/report.xml");
        assert!(write_atomically(&missing, b"x").is_err());
        assert!(!tmp_path(&missing).exists());
    }
}
