//! Finding test files: `*.test.lua` under the given paths, sorted, hidden
//! directories and `target/` skipped.

use std::path::{Path, PathBuf};

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
