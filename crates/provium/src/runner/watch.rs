//! `--watch`'s view of the files: what is compared between polls to tell
//! whether anything changed.

use std::path::PathBuf;
use std::time::SystemTime;

use super::TestFile;

/// The files' paths with their modification times, sorted.
pub fn fingerprint(files: &[TestFile]) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut out: Vec<_> =
        files.iter().map(|f| (f.path.clone(), std::fs::metadata(&f.path).and_then(|m| m.modified()).ok())).collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_edit_or_a_new_file_changes_the_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.test.lua");
        std::fs::write(&a, "").unwrap();
        let files = vec![TestFile { path: a.clone(), shown: "a.test.lua".into() }];
        let before = fingerprint(&files);
        assert_eq!(before, fingerprint(&files));
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&a).unwrap().set_modified(later).unwrap();
        assert_ne!(before, fingerprint(&files));
        let b = TestFile { path: d.path().join("b.test.lua"), shown: "b.test.lua".into() };
        assert_ne!(fingerprint(&files), fingerprint(&[files[0].clone(), b]));
    }
}
