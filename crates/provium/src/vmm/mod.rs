//! Running guests under QEMU.
//!
//! - [`spec`]: what one QEMU invocation is ([`LaunchSpec`]: machine, devices,
//!   RAM, boot), recorded whole in snapshots;
//! - [`argv`]: the command line, built from a spec (boots, restores and the
//!   KVM probe alike);
//! - [`process`], [`qmp`], [`socket`]: the QEMU child, its control socket,
//!   connecting to its sockets;
//! - [`launch`]: [`Instance`], one running QEMU with its agent connection and
//!   scratch directory;
//! - [`accel`]: KVM only after a probe proves it works;
//! - [`snapshot`], [`sparse`], [`shm`]: snapshot files and guest RAM;
//! - [`rng`]: the seeded hwrng source; [`console`]: console tails;
//! - [`nbd`]: data disks provium serves itself (fault injection, power cut).
//!
//! This module knows nothing of Lua or of VM states; `crate::vm` does.

pub mod accel;
pub mod argv;
pub mod console;
pub mod launch;
pub mod nbd;
pub mod process;
pub mod qmp;
pub mod rng;
mod shm;
pub mod snapshot;
pub mod socket;
pub mod sparse;
pub mod spec;

pub use argv::VmPaths;
pub use console::{format_console, tail_of, CONSOLE_TAIL_BYTES};
pub use launch::{Instance, LaunchError, NicEnd};
pub use socket::connect_when_ready;
pub use spec::{Accel, Boot, Device, DiskSource, LaunchSpec, Mac, Machine, Ram};
