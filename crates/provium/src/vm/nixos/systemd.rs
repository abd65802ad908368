//! systemd units: [`Vm::systemctl`] and [`Vm::wait_for_unit`], through
//! `systemctl` run by the agent. Both first check that the guest runs
//! systemd (its [`MARKER`] directory exists, as `sd_booted(3)` checks), so a
//! guest without it (provium's default busybox guest) gets an error that
//! says so instead of a confusing `systemctl: not found`.

use std::time::{Duration, Instant};

use provium_protocol::EntryType;

use super::{sh_quote, NixosError};
use crate::vm::{Vm, VmError};

/// What exists when systemd is the running init.
pub const MARKER: &str = "/run/systemd/system";

/// How often `wait_for_unit` asks again.
const POLL: Duration = Duration::from_millis(250);

/// How much of `systemctl status` a failed unit's error quotes.
const STATUS_BYTES: usize = 2000;

impl Vm {
    fn require_systemd(&mut self, op: &'static str) -> Result<(), VmError> {
        match self.with_agent(op, |a| a.stat(MARKER, true)) {
            Ok(md) if md.entry_type == EntryType::Directory => Ok(()),
            Ok(_) | Err(VmError::Os { .. }) => Err(self.nixos_error(|vm| NixosError::NoSystemd { vm, op })),
            Err(e) => Err(e),
        }
    }

    /// `systemctl <args>` (a shell line): its exit code and stdout, as
    /// [`Vm::execute`] gives them.
    pub fn systemctl(&mut self, args: &str) -> Result<(i32, Vec<u8>), VmError> {
        self.require_systemd("systemctl")?;
        self.execute(&format!("systemctl {args}"), None)
    }

    /// Waits until `unit` is active. Fails at once when it has failed, or
    /// is inactive with no job pending that would start it; fails after
    /// `timeout` otherwise, saying the state it was last in.
    pub fn wait_for_unit(&mut self, unit: &str, timeout: Duration) -> Result<(), VmError> {
        self.require_systemd("wait_for_unit")?;
        let quoted = sh_quote(unit);
        let deadline = Instant::now() + timeout;
        loop {
            let (_, out) = self.execute(&format!("systemctl is-active {quoted}"), None)?;
            let state = String::from_utf8_lossy(&out).trim().to_string();
            match state.as_str() {
                "active" => return Ok(()),
                "failed" => {
                    let (_, status) = self.execute(&format!("systemctl status --no-pager {quoted} 2>&1"), None)?;
                    let status = String::from_utf8_lossy(&status);
                    let status = status.trim_end();
                    let cut = status.len().saturating_sub(STATUS_BYTES);
                    let cut = (cut..=status.len()).find(|&i| status.is_char_boundary(i)).unwrap_or(status.len());
                    let status = if status.is_empty() { String::new() } else { format!(":\n{}", &status[cut..]) };
                    return Err(self.nixos_error(|vm| NixosError::UnitFailed { vm, unit: unit.into(), status }));
                }
                "inactive" => {
                    let (_, jobs) = self.execute("systemctl list-jobs --full 2>&1", None)?;
                    if String::from_utf8_lossy(&jobs).contains("No jobs") {
                        return Err(self.nixos_error(|vm| NixosError::UnitInactive { vm, unit: unit.into() }));
                    }
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(self.nixos_error(|vm| NixosError::UnitTimeout { vm, unit: unit.into(), timeout, state }));
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_that_is_not_running_is_told_so_before_systemd_is_looked_for() {
        let images = std::sync::Arc::new(crate::image::Images::new(Default::default()));
        let mut vm = Vm::new("s", "default", Default::default(), images, crate::vmm::Accel::Tcg);
        let e = vm.wait_for_unit("x.service", Duration::from_secs(1)).unwrap_err().to_string();
        assert_eq!(e, "vm `s` is created; wait_for_unit needs a booted VM: call vm:boot() first");
        let e = vm.systemctl("status").unwrap_err().to_string();
        assert_eq!(e, "vm `s` is created; systemctl needs a booted VM: call vm:boot() first");
    }
}
