//! Labs: the tree of VMs and sub-labs of one test file, its scopes, and what
//! each scope owns and closes. No Lua here (`lua::lab_ud` only converts).
//!
//! - [`tree`]: [`Lab`], a `Send` handle on one lab (the file root, a test's
//!   scope, a sub-lab): lookups through scopes, name rules, close order;
//! - [`close`]: the [`Close`] trait every owned resource implements
//!   (streams, processes, files; bridges and disks later);
//! - [`batch`]: operations on several VMs at once;
//! - [`snapshot`]: the `lab.json` lab-snapshot format, saved and restored;
//! - [`reset`]: `reset_between_tests`' baseline;
//! - [`context`]: [`VmContext`], what a file's VMs are made with;
//! - [`config`], [`error`]: file-scope keys, and what lab operations fail with.

pub mod barrier;
pub mod batch;
pub mod close;
pub mod config;
pub mod context;
pub mod error;
pub mod reset;
pub mod snapshot;
pub mod tree;

pub use close::{Close, CloseRank};
pub use config::{LabConfig, CONFIG_KEYS};
pub use context::VmContext;
pub use error::LabError;
pub use tree::{valid_name, Lab, Member, Resource};
