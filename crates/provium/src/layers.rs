//! The dependency rule of `ARCHITECTURE.md` ("Layers"), checked on the
//! source: renderers depend on events alone; nothing but the runner (and
//! the crate root) uses the Lua layer; nothing below the runner reaches up
//! into it or into the CLI.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Every `crate::<module>` a source file names (in code, not comments).
    fn uses(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut found = Vec::new();
        for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let module: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !module.is_empty() {
                    found.push(module);
                }
            }
        }
        found
    }

    fn violations(allowed: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut bad = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            if rel == "layers.rs" {
                continue; // this file names the modules it checks
            }
            for m in uses(&f) {
                if !allowed(&rel, &m) {
                    bad.push(format!("{rel} uses crate::{m}"));
                }
            }
        }
        bad.sort();
        bad.dedup();
        bad
    }

    #[test]
    fn only_the_runner_uses_the_lua_layer() {
        let bad = violations(|file, m| m != "lua" || file.starts_with("lua/") || file.starts_with("runner/"));
        assert!(bad.is_empty(), "the Lua layer is used outside lua/ and runner/:\n{}", bad.join("\n"));
    }

    #[test]
    fn renderers_depend_on_events_only() {
        // Leaves (they use nothing of the crate) are anyone's.
        let bad = violations(|file, m| {
            !file.starts_with("report/") || matches!(m, "events" | "report") || LEAVES.contains(&m)
        });
        assert!(bad.is_empty(), "report/ reaches past the events:\n{}", bad.join("\n"));
    }

    /// Modules any layer may use: sizes, durations and timestamps; the one
    /// way to take a lock; atomic file writes.
    const LEAVES: [&str; 3] = ["units", "sync", "files"];

    #[test]
    fn leaves_use_nothing_of_the_crate() {
        let bad = violations(|file, _| !LEAVES.iter().any(|l| file == format!("{l}.rs")));
        assert!(bad.is_empty(), "a module every layer may use uses the crate:\n{}", bad.join("\n"));
    }

    #[test]
    fn nothing_below_the_runner_uses_it_or_the_cli() {
        let upper = ["runner", "cli", "fixture_cli", "doctor"];
        let bad = violations(|file, m| {
            let top = file.split('/').next().unwrap().trim_end_matches(".rs");
            !(matches!(m, "runner" | "cli" | "fixture_cli" | "doctor") && !upper.contains(&top) && file != "lib.rs")
        });
        assert!(bad.is_empty(), "lower layers reach up:\n{}", bad.join("\n"));
    }

    #[test]
    fn the_check_sees_a_violation() {
        // The scanner itself: modules named in code are found, in comments not.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.rs");
        std::fs::write(&f, "// crate::cli in a comment\nuse crate::runner::run;\nlet x = crate::vm::Vm::new;\n")
            .unwrap();
        assert_eq!(uses(&f), vec!["runner", "vm"]);
    }
}
