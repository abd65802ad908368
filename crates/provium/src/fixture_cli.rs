//! `provium fixture list|build|rebuild|clean|stale`: the fixture cache from
//! the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::events::Events;
use crate::fixture::{EntryKind, Fixtures, KeyError};
use crate::image::Images;
use crate::lab::VmContext;
use crate::vmm::Accel;

#[derive(Debug, clap::Subcommand)]
pub enum FixtureAction {
    /// Every cache entry: size, kind and key.
    List,
    /// Build a fixture unless its current key is cached ("fixtures/base").
    Build { name: String },
    /// Evict a fixture's entry and build it again.
    Rebuild { name: String },
    /// Remove every cache entry.
    Clean,
    /// Fixtures under the roots whose current key has no entry.
    Stale,
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Every `*.fixture.lua` under `roots`, as fixture names.
fn fixture_names(roots: &[PathBuf]) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let hidden = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if p.is_dir() && !hidden {
                walk(root, &p, out);
            } else if let Some(rel) = p.strip_prefix(root).ok().and_then(|r| r.to_str()) {
                if let Some(name) = rel.strip_suffix(crate::fixture::key::FIXTURE_SUFFIX) {
                    out.push(name.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for r in roots {
        walk(r, r, &mut out);
    }
    out.dedup();
    out
}

/// Runs one action; returns the exit code.
pub fn run(action: &FixtureAction, fixtures: Arc<Fixtures>, images: Arc<Images>, accel: Accel, events: Events) -> i32 {
    let store = &fixtures.store;
    match action {
        FixtureAction::List => {
            let entries = store.entries();
            let total: u64 = entries.iter().map(|e| e.bytes).sum();
            for e in &entries {
                let kind = if e.kind == EntryKind::Vm { "vm" } else { "lab" };
                println!("  {:>12}  {kind:<3}  {}", human_size(e.bytes), e.key);
            }
            println!("\n{} entries, {} in {}", entries.len(), human_size(total), store.dir().display());
            0
        }
        FixtureAction::Clean => {
            println!("  removed {} cache entries", store.clean());
            0
        }
        FixtureAction::Stale => {
            let mut stale = 0;
            for name in fixture_names(&fixtures.roots) {
                match fixtures.key(&name) {
                    Ok(k) if store.lookup(&k.hex).is_none() => {
                        println!("  {name}");
                        stale += 1;
                    }
                    Ok(_) => {}
                    Err(e) => println!("  {name} (cannot compute its key: {})", crate::errors::chain(&e)),
                }
            }
            println!("\n{stale} stale fixture(s)");
            0
        }
        FixtureAction::Build { name } | FixtureAction::Rebuild { name } => {
            let key = match fixtures.key(name) {
                Ok(k) => k,
                Err(e) => return key_failed(&e),
            };
            if matches!(action, FixtureAction::Rebuild { .. }) {
                if let Err(e) = store.evict(&key.hex) {
                    eprintln!("provium: {}", crate::errors::chain(&e));
                    return 2;
                }
                println!("  evicted cache entry for `{name}`; rebuilding…");
            } else if store.lookup(&key.hex).is_some() {
                println!("  already built: {name}");
                return 0;
            }
            // Fixture builds use seed 0: a build is the same whatever the run.
            let net = crate::net::NetContext::new(0);
            // A build from the command line runs alone: no pool to share.
            let pool = crate::pool::Account::unlimited();
            let vms = VmContext { images, accel, kill_switches: Default::default(), events, net, pool };
            match crate::runner::build_fixture(name, fixtures.clone(), vms) {
                Ok(()) => {
                    println!("  built: {name}");
                    0
                }
                Err(e) => {
                    eprintln!("provium: {e}");
                    1
                }
            }
        }
    }
}

fn key_failed(e: &KeyError) -> i32 {
    eprintln!("provium: {}", crate::errors::chain(e));
    2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fixtures_by_root_relative_name() {
        let d = tempfile::tempdir().unwrap();
        for p in ["fixtures/base.fixture.lua", "a.fixture.lua", "x.test.lua", ".hidden/h.fixture.lua"] {
            let full = d.path().join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, "").unwrap();
        }
        assert_eq!(fixture_names(&[d.path().to_path_buf()]), vec!["a", "fixtures/base"]);
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
