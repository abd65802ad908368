//! What finished tests and files report: the payload of
//! `TestFinished` and `FileFinished` events.

use std::time::Duration;

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

/// One finished test.
#[derive(Debug, Clone)]
pub struct TestReport {
    pub name: String,
    pub outcome: Outcome,
    pub log: Vec<String>,
    pub duration: Duration,
    /// For failures: (vm name, last console lines) of each VM in scope.
    pub console: Vec<(String, String)>,
    /// The test's `meta` table, as data.
    pub meta: super::MetaMap,
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
