//! `provium.reset_between_tests = true`: a snapshot of the root lab taken
//! after the file's top level ran, restored after every test, so each test
//! starts from the same guests whatever the previous one did to them.
//!
//! Host-side Lua state is not reset, and no hooks run.

use std::path::Path;

use super::context::VmContext;
use super::error::LabError;
use super::snapshot;
use super::tree::Lab;

/// Saves the baseline of `root` into `dir`; refused while file-scope VMs
/// have streams open (`file` names the test file in the message).
pub fn take_baseline(root: &Lab, file: &str, dir: &Path) -> Result<(), LabError> {
    let streams = snapshot::file_scope_streams(root);
    if !streams.is_empty() {
        return Err(LabError::ResetWithStreams { file: file.to_string(), streams });
    }
    snapshot::save(root, dir).map_err(|e| LabError::Baseline(Box::new(e)))
}

/// Puts `root` back to the baseline in `dir`.
pub fn restore_baseline(root: &Lab, dir: &Path, ctx: &VmContext) -> Result<(), LabError> {
    snapshot::restore(root, dir, ctx)
}
