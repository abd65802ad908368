//! Which profiles of `provium.toml` a run can use: the ones whose name
//! appears as a quoted string in a test file being run, or in a Lua file
//! beside it (helpers, fixture builders). Their files are checked before
//! any VM boots ([`crate::config::Config::check_files`]), so a missing
//! kernel is one clear error at load, not a failure in the middle of a run.
//! A profile named nowhere is not checked: one config can serve machines
//! that only have some of its kernels.

use std::path::{Path, PathBuf};

use super::TestFile;

/// How deep below a test file's directory Lua files are read.
const DEPTH: usize = 3;

/// `(profile, "; used by <file>")` for each of `names` that some file names.
pub fn profiles_used(files: &[TestFile], names: &[String]) -> Vec<(String, String)> {
    if names.is_empty() {
        return Vec::new(); // no profiles in provium.toml: read no file
    }
    let mut sources: Vec<(String, String)> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in files {
        sources.push((f.shown.clone(), std::fs::read_to_string(&f.path).unwrap_or_default()));
        let dir = f.path.parent().map(Path::to_path_buf).unwrap_or_default();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in &dirs {
        let mut lua = Vec::new();
        walk(dir, DEPTH, &mut lua);
        for p in lua {
            if !files.iter().any(|f| f.path == p) {
                sources.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    names
        .iter()
        .filter_map(|name| {
            let quoted = [format!("\"{name}\""), format!("'{name}'")];
            let (file, _) = sources.iter().find(|(_, text)| quoted.iter().any(|q| text.contains(q.as_str())))?;
            Some((name.clone(), format!("; used by {file}")))
        })
        .collect()
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && depth > 0 && !name.starts_with('.') && name != "target" {
            walk(&e.path(), depth - 1, out);
        } else if ft.is_file() && name.ends_with(".lua") {
            out.push(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_used_when_a_file_or_a_helper_beside_it_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.test.lua");
        std::fs::write(&t, "local vm = provium:vm(\"v\", \"web\")\n").unwrap();
        std::fs::create_dir(dir.path().join("helpers")).unwrap();
        std::fs::write(dir.path().join("helpers/h.lua"), "return function() return provium:vm('d', 'db') end\n")
            .unwrap();
        let files = vec![TestFile { path: t, shown: "a.test.lua".into() }];
        let names: Vec<String> = ["web", "db", "unused", "we"].iter().map(|s| s.to_string()).collect();
        let used = profiles_used(&files, &names);
        let got: Vec<&str> = used.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(got, vec!["web", "db"]);
        assert_eq!(used[0].1, "; used by a.test.lua");
        assert!(used[1].1.ends_with("helpers/h.lua"), "{}", used[1].1);
    }
}
