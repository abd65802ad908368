//! The host tools the image build runs (`apt-get`, `dpkg-deb`, `tar2sqfs`): how each is
//! started, and what a missing one tells the user to install.

use std::process::{Command, Output};

use super::DebianError;

/// What to install when `tool` is missing.
pub(super) fn hint(tool: &'static str) -> &'static str {
    match tool {
        "tar2sqfs" => "install squashfs-tools-ng (run scripts/setup)",
        "dpkg-deb" => "install dpkg (a Debian host has it; run scripts/setup)",
        _ => "install apt (a Debian host has it; run scripts/setup)",
    }
}

/// The error for a spawn of `tool` that failed.
pub(super) fn spawn_error(tool: &'static str, source: std::io::Error) -> DebianError {
    if source.kind() == std::io::ErrorKind::NotFound {
        DebianError::ToolMissing { tool, hint: hint(tool) }
    } else {
        DebianError::Spawn { tool, source }
    }
}

/// Runs `cmd` (the program `tool`) to completion, logging its argv. A non-zero exit is left
/// to the caller, which knows how to read the tool's complaints.
pub(super) fn output(tool: &'static str, cmd: &mut Command) -> Result<Output, DebianError> {
    tracing::debug!(command = ?cmd, "running");
    cmd.output().map_err(|e| spawn_error(tool, e))
}

/// The last lines of a tool's stderr, for an error message.
pub(super) fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let start = lines.len().saturating_sub(6);
    let tail = lines[start..].join(" | ");
    if tail.is_empty() {
        "(no output)".to_owned()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_says_what_to_install() {
        let e = spawn_error("tar2sqfs", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(e.to_string(), "`tar2sqfs` not found; install squashfs-tools-ng (run scripts/setup)");
        let e = output("apt-get", &mut Command::new("/nonexistent/apt-get")).unwrap_err();
        assert!(e.to_string().contains("install apt"), "{e}");
        let e = spawn_error("dpkg-deb", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(matches!(e, DebianError::Spawn { tool: "dpkg-deb", .. }), "{e}");
    }
}
