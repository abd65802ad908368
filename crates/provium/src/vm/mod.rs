//! The VM as test authors see it, in typed Rust (no Lua here; `lua::vm_ud`
//! only converts arguments and results):
//!
//! - [`lifecycle`]: [`Vm`], its state machine and the operations that check
//!   the state first (boot, pause, snapshot, restore, exec, files, …);
//! - [`state`], [`opts`], [`error`], [`kill`]: its states, boot options,
//!   errors and the watchdog's kill switch;
//! - [`resources`]: the VM's open streams and file handles, with where each
//!   was opened.

pub mod error;
pub mod kill;
pub mod lifecycle;
pub mod opts;
pub mod resources;
pub mod state;

pub use error::VmError;
pub use kill::KillSwitch;
pub use lifecycle::Vm;
pub use opts::{BootOpts, DEFAULT_MEMORY};
pub use state::VmState;
