//! The runner: finds test files ([`discover`]), runs them on worker threads
//! within a budget ([`dispatch`]), and runs each file's tests in order with
//! their scopes and time limits ([`file`], [`watchdog`]). It emits events
//! and renders nothing. The only module besides the CLI's that drives the
//! Lua layer.

pub mod discover;
pub mod dispatch;
pub mod file;
pub mod partition;
pub mod profiles_used;
pub mod rerun;
pub mod select;
pub mod watch;
pub mod watchdog;

pub use discover::{discover, DiscoverError, TestFile};
pub use dispatch::{default_jobs, run, RunConfig};
pub use profiles_used::profiles_used;

/// `provium fixture build|rebuild`: builds fixture `name` unless its key is
/// cached, in a Lua state of its own.
pub fn build_fixture(
    name: &str,
    fixtures: std::sync::Arc<crate::fixture::Fixtures>,
    vms: crate::lab::VmContext,
) -> Result<(), String> {
    crate::lua::fixtures::build_from_cli(name, fixtures, vms)
}
