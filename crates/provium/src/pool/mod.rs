//! The resource pool: the memory and vCPU budget every file and VM of a run
//! reserves from before it runs, so that files run in parallel only as far
//! as the host can hold them (reference §11). Typed Rust, no Lua: the CLI
//! sizes it, the runner dispatches through it, the VM and lab layers reserve
//! from it, `lua::lab_ud` only converts `provium:claim{…}`.
//!
//! ```text
//!  cli ── budget (--mem, --cpus, --cpu-overcommit) ──► Pool (one per run)
//!                                                       ▲
//!  runner::dispatch ── Account per file ── overhead ────┤  FIFO queue,
//!  vm::Vm boot/restore ── memory+100 MiB, cpus ─────────┤  condvar, deadlock
//!  lab::Lab boot/restore ── one joint reservation ──────┤  detection
//!  provium:claim ── Claim (the file's whole VM budget) ─┘
//! ```
//!
//! - [`ledger`]: [`Pool`] (what is held, who waits, FIFO admission, the
//!   deadlock check) and [`Reservation`], the RAII guard that gives back
//!   what it holds when dropped;
//! - [`account`]: [`Account`], a file's face of the pool: its reservations,
//!   its claim, its `file_blocked` events and its [`WaitClock`] (the time it
//!   spent waiting, which its watchdogs do not count);
//! - [`amount`]: arithmetic and display of [`ResourceAmount`];
//! - [`budget`]: the pool's size from the command line and the host;
//! - [`monitor`]: the run's background threads: PSI pressure and the 1 Hz
//!   `pool_state` events;
//! - [`error`]: [`PoolError`], what a reservation fails with.
//!
//! It must not touch VMs or Lua: it counts amounts, nothing else.

pub mod account;
pub mod amount;
pub mod budget;
pub mod error;
pub mod ledger;
pub mod monitor;

pub use account::{Account, WaitClock};
pub use amount::Shown;
pub use budget::{Budget, BudgetError};
pub use error::PoolError;
pub use ledger::{Pool, Reservation};

pub use crate::events::ResourceAmount;

/// What a VM holds of the pool beyond its guest RAM: QEMU itself, its
/// device buffers and the host side of its connections.
pub const VM_OVERHEAD_BYTES: u64 = 100 << 20;
