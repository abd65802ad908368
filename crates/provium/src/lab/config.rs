//! File-scope settings a test file makes on its root lab (`provium.<key> =
//! value` at top level).

use std::time::Duration;

/// The keys, as error messages list them.
pub const CONFIG_KEYS: &str = "reset_between_tests, timeout";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// Restore the root lab to its state after the top level before every
    /// test.
    pub reset_between_tests: bool,
    /// Every test's time limit unless its `meta.timeout` says otherwise.
    pub timeout: Option<Duration>,
}
