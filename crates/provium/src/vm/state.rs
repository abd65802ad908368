//! The states a VM goes through, and what a refused operation is told:
//!
//! ```text
//! created ──boot()──► booted ──shutdown()──► shutdown
//!                      │  ▲
//!              pause() │  │ resume()
//!                      ▼  │
//!                     paused
//!
//! booted ── the guest powers itself off (power button, `poweroff`) ──► shutdown
//! booted / paused ── crash() (a power cut) ──► shutdown
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

    /// What a VM in this state should do before trying again: the hint of
    /// a wrong-state error. `stopped_by` says who stopped a shut-down VM
    /// (a timeout), when provium did.
    pub(super) fn way_out(self, needs: Needs, stopped_by: Option<&str>) -> String {
        match (self, needs) {
            (VmState::Created, _) => "call vm:boot() first".into(),
            (VmState::Booted | VmState::Paused, Needs::Created) => "it has booted already".into(),
            (VmState::Booted | VmState::Paused, Needs::CreatedOrShutdown) => "call vm:shutdown() first".into(),
            (VmState::Paused, _) => "call vm:resume() first".into(),
            (VmState::Shutdown, _) => match stopped_by {
                Some(by) => format!("it was stopped by {by}; create a new VM (or restore a snapshot into this one)"),
                None => {
                    "a shut-down VM does not start again; create a new VM (or restore a snapshot into this one)".into()
                }
            },
            (VmState::Dead, _) => {
                "it died (its console tail is in the test report); create a new VM (or restore a snapshot into \
                 this one)"
                    .into()
            }
            (VmState::Booted, _) => "call vm:pause() first".into(),
        }
    }
}

/// The states an operation accepts, as its wrong-state error says them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Booted,
    Paused,
    Created,
    BootedOrPaused,
    CreatedOrShutdown,
}

impl Needs {
    pub fn as_str(self) -> &'static str {
        match self {
            Needs::Booted => "a booted VM",
            Needs::Paused => "a paused VM",
            Needs::Created => "a created VM",
            Needs::BootedOrPaused => "a booted or paused VM",
            Needs::CreatedOrShutdown => "a created, shut-down or dead VM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_says_what_to_do() {
        let states = [VmState::Created, VmState::Booted, VmState::Paused, VmState::Shutdown, VmState::Dead];
        let needs = [Needs::Booted, Needs::Paused, Needs::Created, Needs::BootedOrPaused, Needs::CreatedOrShutdown];
        for s in states {
            for n in needs {
                assert!(!s.way_out(n, None).is_empty(), "{s:?} {n:?}");
            }
        }
        assert_eq!(VmState::Created.way_out(Needs::Booted, None), "call vm:boot() first");
        assert_eq!(VmState::Paused.way_out(Needs::Created, None), "it has booted already");
        assert_eq!(VmState::Booted.way_out(Needs::Paused, None), "call vm:pause() first");
        assert!(VmState::Shutdown
            .way_out(Needs::Booted, Some("the timeout of test \"t\""))
            .starts_with("it was stopped by the timeout of test \"t\""));
    }
}
