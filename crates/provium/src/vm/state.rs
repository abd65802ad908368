//! The states a VM goes through and what each refuses:
//!
//! ```text
//! created ──boot()──► booted ──shutdown()──► shutdown
//!                      │  ▲
//!              pause() │  │ resume()
//!                      ▼  │
//!                     paused
//!
//! any running state ── QEMU or the agent connection dies ──► dead
//! created / shutdown / dead ──restore()──► booted
//! ```

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Created,
    Booted,
    Paused,
    Shutdown,
    Dead,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Booted => "booted",
            VmState::Paused => "paused",
            VmState::Shutdown => "shutdown",
            VmState::Dead => "dead",
        }
    }

    /// Why an operation cannot run in this state, and what to do instead.
    pub(super) fn refusal(self) -> &'static str {
        match self {
            VmState::Created => "VM not booted; call vm:boot() first",
            VmState::Booted => "VM already booted",
            VmState::Paused => "VM is paused; use resume()",
            VmState::Shutdown => "VM is shut down; create a new one",
            VmState::Dead => "VM died; create a new one (its console tail is in the test report)",
        }
    }
}
