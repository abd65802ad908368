//! Results and how they are shown. The runner produces [`FileReport`]s; the
//! renderers ([`human`], [`json`]) only consume them and never run anything.

pub mod human;
pub mod json;

use std::time::Duration;

pub use crate::lua::framework::Outcome;

/// One finished test.
#[derive(Debug, Clone)]
pub struct TestReport {
    pub name: String,
    pub outcome: Outcome,
    pub log: Vec<String>,
    pub duration: Duration,
    /// For failures: (vm name, last console lines) of each VM in scope.
    pub console: Vec<(String, String)>,
}

/// One finished test file.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    /// The path as shown to the user.
    pub path: String,
    pub tests: Vec<TestReport>,
    /// The file failed before its tests could run (syntax error, error at
    /// top level, internal error).
    pub chunk_error: Option<String>,
    pub timed_out: bool,
    pub duration: Duration,
}

/// Counts of test outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl FileReport {
    pub fn new(path: &str) -> FileReport {
        FileReport { path: path.to_string(), ..Default::default() }
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for t in &self.tests {
            match t.outcome {
                Outcome::Passed => c.passed += 1,
                Outcome::Failed(_) => c.failed += 1,
                Outcome::Skipped(_) => c.skipped += 1,
            }
        }
        c
    }

    /// Passed: no failed test, no chunk error, no timeout.
    pub fn passed(&self) -> bool {
        self.chunk_error.is_none() && !self.timed_out && self.counts().failed == 0
    }
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub files: usize,
    pub counts: Counts,
    pub errored_files: usize,
    pub failed_files: usize,
    pub duration: Duration,
}

impl RunSummary {
    pub fn add(&mut self, f: &FileReport) {
        let c = f.counts();
        self.files += 1;
        self.counts.passed += c.passed;
        self.counts.failed += c.failed;
        self.counts.skipped += c.skipped;
        if f.chunk_error.is_some() {
            self.errored_files += 1;
        }
        if !f.passed() {
            self.failed_files += 1;
        }
    }
}
