//! `provium.reset_between_tests`: where the file's baseline goes (its
//! snapshot directory); taking and restoring it is `crate::lab::reset`'s.

use std::path::{Path, PathBuf};

use mlua::Lua;

use super::errors::LuaResultExt;
use super::{lab_ud, snapshot_ud};
use crate::lab;

/// Takes the baseline if the file asked for one.
pub fn take_baseline(lua: &Lua, shown: &str) -> mlua::Result<Option<PathBuf>> {
    if !lab_ud::file_config(lua).reset_between_tests {
        return Ok(None);
    }
    let dir = snapshot_ud::default_path(lua, "baseline", ".lab")?;
    lab::reset::take_baseline(&lab_ud::root(lua), shown, &dir).lua(lua)?;
    Ok(Some(dir))
}

/// Puts the root lab back to the baseline.
pub fn restore_baseline(lua: &Lua, dir: &Path) -> Result<(), lab::LabError> {
    let ctx = lab_ud::ctx(lua).vms.clone();
    lab::reset::restore_baseline(&lab_ud::root(lua), dir, &ctx)
}
