//! The NixOS test driver's machine methods that make sense without a
//! display, as typed [`Vm`] operations (`lua::nixos_ud` only converts):
//!
//! - here: [`Vm::execute`] (a command's exit code and stdout, never an
//!   error for a non-zero exit) and the errors of the whole module;
//! - [`power`]: [`Vm::crash`] (a power cut) and [`Vm::wait_for_shutdown`]
//!   (the guest powers itself off), and telling a guest poweroff from a
//!   death when QEMU exits;
//! - [`copy`]: [`Vm::copy_from_host`] and [`Vm::copy_from_vm`], files and
//!   whole trees with their modes, over the agent's file operations;
//! - [`keys`]: [`Vm::send_chars`] and [`Vm::send_key`], typing into the
//!   serial console;
//! - [`systemd`]: [`Vm::systemctl`] and [`Vm::wait_for_unit`], which first
//!   check that the guest runs systemd.
//!
//! What the driver does with a screen (screenshots, OCR, `wait_for_x`) has
//! no counterpart: provium's guests have no display. `succeed`, `fail` and
//! the `wait_until_*` / `wait_for_*` waits predate this module
//! (`lua::waits`).

pub mod copy;
pub mod keys;
pub mod power;
pub mod systemd;

use std::path::PathBuf;
use std::time::Duration;

use provium_protocol::{ExecRequest, ExitStatus};

use super::{Vm, VmError};

/// What the operations of this module fail with, besides [`VmError`]'s
/// common cases (wrong state, a lost guest, an OS error in the guest).
#[derive(Debug, thiserror::Error)]
pub enum NixosError {
    #[error(
        "vm `{vm}`: wait_for_shutdown: the guest did not power off within {timeout:?}; it still runs (power it off \
         from inside, e.g. `poweroff -f`, or use vm:power_button() or vm:shutdown())"
    )]
    StillRunning { vm: String, timeout: Duration },
    /// The guest powered off while an operation waited for its answer.
    #[error(
        "vm `{vm}` powered off during {op} (the guest shut itself down) and is shutdown now; to power it off from a \
         command, start that command with vm:run_async(…) and call vm:wait_for_shutdown()"
    )]
    PoweredOff { vm: String, op: &'static str },
    #[error("vm `{vm}`: {op}: cannot {what} `{}` on the host", path.display())]
    Host {
        vm: String,
        op: &'static str,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vm `{vm}`: {op}: `{path}` is a {kind}; only files, directories and symbolic links are copied")]
    Unsupported { vm: String, op: &'static str, path: String, kind: &'static str },
    #[error("vm `{vm}`: copy_from_vm: `{path}` has no name to copy under (name a file or a directory)")]
    NoName { vm: String, path: String },
    #[error("vm `{vm}`: send_key: unknown key `{key}` (known: {})", keys::NAMES.join(", "))]
    UnknownKey { vm: String, key: String },
    #[error("vm `{vm}`: {op}: cannot write to the serial console (`{}`)", path.display())]
    Console {
        vm: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vm `{vm}`: {op} needs systemd, which this guest does not have (no {})", systemd::MARKER)]
    NoSystemd { vm: String, op: &'static str },
    #[error("vm `{vm}`: wait_for_unit: unit `{unit}` failed{status}")]
    UnitFailed { vm: String, unit: String, status: String },
    #[error("vm `{vm}`: wait_for_unit: unit `{unit}` is inactive and no job is pending (nothing will start it)")]
    UnitInactive { vm: String, unit: String },
    #[error("vm `{vm}`: wait_for_unit: unit `{unit}` was not active within {timeout:?} (last state: `{state}`)")]
    UnitTimeout { vm: String, unit: String, timeout: Duration, state: String },
}

/// A command's exit code the way a shell (and the NixOS driver) reports
/// it: the code, 128 + N for signal N, and 124 (`timeout(1)`'s code) when
/// it ran out of time.
pub fn exit_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Exited(code) => code,
        ExitStatus::Signalled(signal) => 128 + signal,
        ExitStatus::TimedOut => 124,
    }
}

/// `s` as one word for `sh`, whatever it holds.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Vm {
    /// Runs `cmd` through `/bin/sh -c` and returns its exit code (see
    /// [`exit_code`]) and stdout; a command that fails is a result, not an
    /// error. With `timeout`, its process group is killed when time is up.
    pub fn execute(&mut self, cmd: &str, timeout: Option<Duration>) -> Result<(i32, Vec<u8>), VmError> {
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            timeout_ms: timeout.map(|t| t.as_millis().max(1) as u64),
            ..Default::default()
        };
        let out = self.with_agent("execute", |a| a.exec(req, &[]))?;
        Ok((exit_code(out.status), out.stdout))
    }

    fn nixos_error(&self, make: impl FnOnce(String) -> NixosError) -> VmError {
        VmError::Nixos(make(self.name().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_read_like_a_shell_s() {
        assert_eq!(exit_code(ExitStatus::Exited(3)), 3);
        assert_eq!(exit_code(ExitStatus::Signalled(9)), 137);
        assert_eq!(exit_code(ExitStatus::TimedOut), 124);
    }

    #[test]
    fn quoting_keeps_every_byte_one_word() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn errors_name_the_vm_and_the_way_out() {
        let e = VmError::Nixos(NixosError::NoSystemd { vm: "x".into(), op: "wait_for_unit" });
        assert_eq!(
            e.to_string(),
            "vm `x`: wait_for_unit needs systemd, which this guest does not have (no /run/systemd/system)"
        );
        let e = NixosError::UnknownKey { vm: "x".into(), key: "f13".into() }.to_string();
        assert!(e.starts_with("vm `x`: send_key: unknown key `f13` (known: ret, enter, tab"), "{e}");
        let e = NixosError::StillRunning { vm: "x".into(), timeout: Duration::from_secs(2) }.to_string();
        assert!(e.contains("did not power off within 2s; it still runs"), "{e}");
    }
}
