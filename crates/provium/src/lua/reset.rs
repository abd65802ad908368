//! `provium.reset_between_tests = true`: a snapshot of the root lab taken
//! after the file's top level ran, restored after every test, so each test
//! starts from the same guests whatever the previous one did to them.
//!
//! Host-side Lua state is not reset, and no hooks run.

use std::path::PathBuf;

use mlua::Lua;

use super::errors::raise;
use super::{lab_snapshot, lab_ud, snapshot_ud};

/// Takes the baseline if the file asked for one.
pub fn take_baseline(lua: &Lua, shown: &str) -> mlua::Result<Option<PathBuf>> {
    if !lab_ud::file_config(lua).reset_between_tests {
        return Ok(None);
    }
    let root = lab_ud::root(lua);
    let streams = lab_snapshot::file_scope_streams(&root.borrow());
    if !streams.is_empty() {
        return Err(raise(
            lua,
            format!(
                "{shown}: cannot use reset_between_tests with file-scope streams\n{}\n  reset_between_tests would \
                 auto-snapshot after this stream is open\n  Either move the stream into a test() block, or set \
                 reset_between_tests = false.",
                streams.join("\n")
            ),
        ));
    }
    let dir = snapshot_ud::default_path(lua, "baseline", ".lab")?;
    lab_snapshot::save(lua, &root, &dir).map_err(|e| {
        raise(lua, format!("reset_between_tests baseline snapshot failed: {}", super::errors::message(&e)))
    })?;
    Ok(Some(dir))
}

/// Puts the root lab back to the baseline; a failure is a warning, since
/// the test that just ran has its outcome already.
pub fn restore_baseline(lua: &Lua, shown: &str, dir: &std::path::Path) {
    if let Err(e) = lab_snapshot::restore(lua, &lab_ud::root(lua), dir) {
        eprintln!(
            "provium: reset_between_tests restore failed in `{shown}`: {}\n  Subsequent tests in this file may see \
             leaked state.",
            super::errors::message(&e)
        );
    }
}
