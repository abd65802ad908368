//! The VM as test authors see it, in typed Rust (no Lua here; `lua::vm_ud`
//! only converts arguments and results):
//!
//! - [`lifecycle`]: [`Vm`], its state machine and the operations that check
//!   the state first (boot, pause, snapshot, restore, exec, files, …);
//! - [`state`], [`opts`], [`error`], [`kill`]: its states, boot options,
//!   errors and the watchdog's kill switch;
//! - [`resources`]: the VM's open streams and file handles, with where each
//!   was opened;
//! - [`nics`]: its network cards and the bridges they are attached to;
//! - [`disks`]: its data disks (the files behind them, sector access,
//!   faults the guest sees, power cuts);
//! - [`stream`], [`process`], [`file`], [`console`]: what a VM opens that
//!   lives on (streams, background processes, file handles, the console
//!   stream); each closes behind `crate::lab::Close`;
//! - [`layer0`]: raw syscalls (also sent now and awaited later), ioctls on
//!   file handles, and reads of the agent's memory;
//! - [`nixos`]: the NixOS test driver's conveniences (`execute`, `crash`,
//!   `wait_for_shutdown`, copies, console keys, systemd units);
//! - [`worker`]: a second agent process in the guest with credentials of its
//!   own (commands, processes and syscalls as another user), relayed through
//!   the main agent; it closes behind `crate::lab::Close` too.

pub mod badness;
pub mod batch;
pub mod console;
pub mod disks;
pub mod error;
pub mod file;
pub mod kill;
pub mod layer0;
pub mod lifecycle;
pub mod nics;
pub mod nixos;
pub mod opts;
pub mod process;
pub mod resources;
pub mod state;
pub mod stream;
pub mod worker;

pub use error::VmError;
pub use kill::KillSwitch;
pub use lifecycle::Vm;
pub use opts::{BootOpts, DEFAULT_MEMORY};
pub use state::VmState;
pub use stream::{ChunkSource, Stream};

/// Shared ownership of one VM: labs, handles and the Lua objects hold it;
/// each operation locks it (`crate::sync::lock`).
pub type VmRef = std::sync::Arc<std::sync::Mutex<Vm>>;
