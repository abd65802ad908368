//! How a run is shown. Renderers consume [`Event`]s and nothing else: they
//! depend on `crate::events` (and the crate's leaves: `units`, `sync`,
//! `files`) only and never run anything.
//!
//! - [`human`]: the terminal format (and [`progress`], the live bar on an
//!   interactive terminal);
//! - [`json`]: one versioned JSON object per event line, for machines;
//! - [`wire`]: the msgpack event stream (file, stdout, socket);
//! - [`junit`]: the JUnit XML report (`--junit`), and [`junit_merge`]
//!   (`provium merge-junit`), both over the small XML tree of [`xml`];
//! - [`RunSummary`] and [`exit_code`]: what the run amounts to.

pub mod human;
pub mod json;
pub mod junit;
pub mod junit_merge;
pub mod progress;
pub mod wire;
pub mod xml;

use std::time::Duration;

pub use crate::events::{Counts, Event, FileReport, Outcome, TestReport};

/// A consumer of a run's events.
pub trait Reporter {
    /// Called with every event, in the order emitted.
    fn event(&mut self, event: &Event);

    /// Called once after the last event: whether what this reporter had to
    /// write at the end (a report file) was written.
    fn finish(&mut self) -> Result<(), ReportError> {
        Ok(())
    }
}

/// An output that could not be written (the run exits 2).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Junit(#[from] junit::JunitError),
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub files: usize,
    pub counts: Counts,
    pub errored_files: usize,
    pub failed_files: usize,
    pub duration: Duration,
    /// The run's seed (bridges' loss draws), said again after a failure.
    pub seed: Option<u64>,
}

impl RunSummary {
    /// Counts what `e` reports: finished files, and the run's duration.
    pub fn record(&mut self, e: &Event) {
        match e {
            Event::FileFinished { report } => self.add(report),
            Event::RunFinished { duration } => self.duration = *duration,
            Event::RunStarted { seed, .. } => self.seed = Some(*seed),
            _ => {}
        }
    }

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

/// How a run ended, for its exit code.
#[derive(Debug, Clone, Copy)]
pub enum RunEnd<'a> {
    /// Every selected file ran; the summary says how.
    Ran(&'a RunSummary),
    /// No file matched: nothing failed.
    NothingToRun,
    /// provium could not run (bad config, bad arguments, missing paths).
    CouldNotRun,
}

/// The process exit code: 0 when everything passed (or nothing had to run),
/// 1 when a test or a file failed, 2 when provium could not run at all.
/// (Ctrl-C exits 130 from the signal handler, see `crate::cleanup`.)
pub fn exit_code(end: RunEnd) -> i32 {
    match end {
        RunEnd::Ran(s) if s.failed_files == 0 => 0,
        RunEnd::Ran(_) => 1,
        RunEnd::NothingToRun => 0,
        RunEnd::CouldNotRun => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(outcomes: &[Outcome], chunk_error: bool, timed_out: bool) -> FileReport {
        let mut f = FileReport::new("a.test.lua");
        for (i, o) in outcomes.iter().enumerate() {
            f.tests.push(TestReport {
                name: format!("t{i}"),
                outcome: o.clone(),
                log: vec![],
                duration: Duration::ZERO,
                console: vec![],
                meta: Default::default(),
            });
        }
        f.chunk_error = chunk_error.then(|| "boom".into());
        f.timed_out = timed_out;
        f
    }

    fn code(files: &[FileReport]) -> i32 {
        let mut s = RunSummary::default();
        for f in files {
            s.add(f);
        }
        exit_code(RunEnd::Ran(&s))
    }

    #[test]
    fn exit_codes() {
        let pass = Outcome::Passed;
        let skip = Outcome::Skipped("later".into());
        let fail = Outcome::Failed("no".into());
        assert_eq!(code(&[file(&[pass.clone(), skip.clone()], false, false)]), 0);
        assert_eq!(code(&[file(&[skip], false, false)]), 0, "skipped tests are not failures");
        assert_eq!(code(&[file(std::slice::from_ref(&pass), false, false), file(&[fail], false, false)]), 1);
        assert_eq!(code(&[file(&[], true, false)]), 1, "a chunk error fails its file");
        assert_eq!(code(&[file(&[pass], false, true)]), 1, "a file that timed out fails");
        assert_eq!(code(&[]), 0);
        assert_eq!(exit_code(RunEnd::NothingToRun), 0);
        assert_eq!(exit_code(RunEnd::CouldNotRun), 2);
    }
}
