//! provium: a test harness that boots real Linux guests under QEMU and
//! drives them from Lua.
//!
//! ```text
//!  cli ─► runner ──(one OS thread + Lua state per *.test.lua)──► lua (adapters)
//!   ▲       │                                                      │
//!   │       │            ┌─────────────────────────────────────────┘
//!   │       ▼            ▼
//!   │     lab (tree, scopes, Close) · fixture (cache, build loop) · vm (state machine)
//!   │                     │
//!   │                     ├─► vmm: LaunchSpec → argv, QEMU process, QMP, accel, snapshots
//!   │                     └─► agent: frames over virtio-serial to provium-agent
//!   │     guest (default guest: vmlinux + agent initramfs) · debian (userland rootfs.sqfs
//!   │       from .debs, rootless, cached by resolved versions)
//!   │
//!   └── report (human, progress, JSON, JUnit) ◄── events ◄── runner, lua, lab, vm, fixture
//! ```
//!
//! The layering is checked by `layers` (a test over the source): renderers
//! depend on `events` alone; only `runner` uses `lua`; nothing below the
//! runner reaches up. Resources that must not leak (QEMU processes, scratch
//! directories) are owned by RAII guards registered with [`cleanup`], which
//! also handles Ctrl-C.

pub mod agent;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod debian;
pub mod doctor;
pub mod errors;
pub mod events;
pub mod files;
pub mod fixture;
pub mod fixture_cli;
pub mod guest;
pub mod image;
pub mod lab;
mod layers;
pub mod lua;
pub mod net;
pub mod pool;
pub mod report;
pub mod runner;
pub mod sync;
pub mod units;
pub mod vm;
pub mod vmm;
