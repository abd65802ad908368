//! The Lua adapter: one Lua 5.4 state per `*.test.lua` file, with the
//! framework and the `provium` global installed. Everything here converts
//! arguments and results; behaviour lives in the domain (`crate::lab`,
//! `crate::vm`, `crate::fixture`), and only `crate::runner` uses this module.
//!
//! [`file::LuaFile`] is what the runner drives. One Lua type per file:
//! [`framework`] (`test`, `t`), [`lab_ud`] (`provium` and labs), [`vm_ud`]
//! (VMs), [`stream_ud`], [`proc_ud`], [`file_ud`], [`console_ud`],
//! [`clock_ud`], [`snapshot_ud`], [`result_ud`], [`layer0_ud`] (syscalls and
//! their pending results), [`nixos_ud`] (the NixOS driver's names),
//! [`worker_ud`] (workers); [`opts`] parses option tables, [`errors`] shapes
//! error text.

pub mod args;
pub mod batch_ud;
pub mod bridge_ud;
pub mod clock_ud;
pub mod console_ud;
pub mod disk_ud;
pub mod errors;
pub mod file;
pub mod file_ud;
pub mod fixtures;
pub mod framework;
pub mod jobs;
pub mod json;
pub mod lab_ud;
pub mod layer0_ud;
pub mod nixos_ud;
pub mod opts;
pub mod proc_ud;
pub mod reset;
pub mod result_ud;
pub mod snapshot_ud;
pub mod stream_ud;
pub mod vm_streams;
pub mod vm_ud;
pub mod waits;
pub mod worker_ud;

use std::path::{Path, PathBuf};

use mlua::{Lua, Table};

pub use file::{Interrupts, LoadedTest, LuaFile, TestMeta};
pub use lab_ud::FileContext;

fn set_package_path(lua: &Lua, file: &Path, roots: &[PathBuf]) -> mlua::Result<()> {
    let package: Table = lua.globals().get("package")?;
    let mut dirs: Vec<PathBuf> = roots.to_vec();
    if let Some(d) = file.parent() {
        dirs.push(if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() });
    }
    let mut path = String::new();
    for d in dirs {
        path.push_str(&format!("{0}/?.lua;{0}/?/init.lua;", d.display()));
    }
    let old: String = package.get("path")?;
    package.set("path", path + &old)
}

/// Installs provium's Lua API into a fresh state for the file at `path`
/// (a test file or a fixture builder).
pub(crate) fn install_api(lua: &Lua, path: &Path, roots: &[PathBuf], ctx: FileContext) -> mlua::Result<()> {
    set_package_path(lua, path, roots)?;
    // The file's own canonical path, as the reference names it (a test
    // that runs host tools on files beside it needs it).
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    lua.globals().set("_PROVIUM_SOURCE_PATH", canonical.display().to_string())?;
    framework::install(lua)?;
    json::install(lua)?;
    jobs::install(lua)?;
    waits::install(lua)?;
    nixos_ud::install(lua)?;
    lab_ud::install(lua, ctx)
}
