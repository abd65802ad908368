//! The terminal format: one line per file, failures with their messages and
//! console excerpts indented beneath, and a summary line.
//!
//! ```text
//! PASS examples/basics.test.lua (3 passed, 0 failed, 0 skipped)
//! FAIL examples/broken.test.lua (1 passed, 1 failed, 0 skipped)
//!     FAIL reads a file
//!         examples/broken.test.lua:9: vm `v`: read_file: …
//!         ---- vm v (console, last lines) ----
//!         …
//! 2 file(s); 4 passed, 1 failed, 0 skipped; 12.34s
//! ```

use std::fmt::Write;

use super::progress::ProgressLine;
use super::{Event, FileReport, Outcome, Reporter, RunSummary};

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

fn indent(out: &mut String, text: &str, by: usize) {
    for line in text.lines() {
        let _ = writeln!(out, "{:by$}{line}", "");
    }
}

/// The human-readable line for an event that is not a result (fixture
/// builds, warnings, the run header), or `None`.
pub fn note(e: &Event) -> Option<String> {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    Some(match e {
        Event::RunStarted { files, jobs, accel, accel_reason, seed } => {
            format!("provium: {files} file(s), {jobs} at a time, accelerator {accel} ({accel_reason}), seed {seed}")
        }
        Event::FixtureBuilding { name, path, .. } => format!("provium: building fixture `{name}` ({})", path.display()),
        Event::FixtureWaiting { name, holder, .. } => {
            format!("provium: fixture `{name}` is being built by {holder}; waiting for it")
        }
        Event::FixtureBuilt { name, took, cache_bytes, .. } => format!(
            "provium: built fixture `{name}` in {:.1}s ({:.1} MiB in the cache)",
            took.as_secs_f64(),
            mib(*cache_bytes)
        ),
        Event::FixtureEvicted { key, reason, rebuilding, .. } => {
            let then = if *rebuilding { "evicting and rebuilding" } else { "evicted" };
            format!("provium: fixture cache entry `{key}` {reason}; {then}")
        }
        Event::Warning { file: Some(file), message } => format!("provium: {file}: {message}"),
        Event::Warning { file: None, message } => format!("provium: {message}"),
        _ => return None,
    })
}

/// The terminal reporter: results on `out`, notes (and the live progress
/// line) on `err`, the summary at the end.
pub struct HumanReporter<O: std::io::Write, E: std::io::Write> {
    pub verbosity: Verbosity,
    out: O,
    err: E,
    progress: Option<ProgressLine>,
    summary: RunSummary,
}

impl<O: std::io::Write, E: std::io::Write> HumanReporter<O, E> {
    pub fn new(verbosity: Verbosity, live: bool, out: O, err: E) -> Self {
        HumanReporter {
            verbosity,
            out,
            err,
            progress: live.then(ProgressLine::default),
            summary: RunSummary::default(),
        }
    }

    fn clear_progress(&mut self) {
        if let Some(p) = &mut self.progress {
            p.clear(&mut self.err);
        }
    }
}

impl<O: std::io::Write, E: std::io::Write> Reporter for HumanReporter<O, E> {
    fn event(&mut self, e: &Event) {
        self.summary.record(e);
        match e {
            Event::TestFinished { file, test } => {
                if let Some(p) = &mut self.progress {
                    p.show(&mut self.err, &format!("  {file}: {} done", test.name));
                }
            }
            Event::FileFinished { report } => {
                self.clear_progress();
                let _ = self.out.write_all(render_file(report, self.verbosity).as_bytes());
                let _ = self.out.flush();
            }
            Event::RunFinished { .. } => {
                self.clear_progress();
                let _ = write!(self.out, "\n{}", render_summary(&self.summary));
                let _ = self.out.flush();
            }
            Event::RunStarted { .. } if self.verbosity == Verbosity::Quiet => {}
            other => {
                if let Some(line) = note(other) {
                    self.clear_progress();
                    let _ = writeln!(self.err, "{line}");
                }
            }
        }
    }
}

/// Renders one finished file.
pub fn render_file(f: &FileReport, v: Verbosity) -> String {
    let mut out = String::new();
    if f.passed() && v == Verbosity::Quiet {
        return out;
    }
    let c = f.counts();
    let tag = if f.timed_out {
        "TIME"
    } else if f.passed() {
        "PASS"
    } else {
        "FAIL"
    };
    if let Some(err) = &f.chunk_error {
        let _ = writeln!(out, "{tag} {}", f.path);
        let _ = writeln!(out, "  chunk_error:");
        indent(&mut out, err, 4);
        return out;
    }
    let _ = writeln!(out, "{tag} {} ({} passed, {} failed, {} skipped)", f.path, c.passed, c.failed, c.skipped);
    for t in &f.tests {
        match &t.outcome {
            Outcome::Failed(msg) => {
                let _ = writeln!(out, "    FAIL {}", t.name);
                indent(&mut out, msg, 8);
                for line in &t.log {
                    let _ = writeln!(out, "        log: {line}");
                }
                for (vm, tail) in &t.console {
                    let _ = writeln!(out, "        ---- vm {vm} (console, last lines) ----");
                    indent(&mut out, tail, 8);
                }
            }
            Outcome::Passed if v == Verbosity::Verbose => {
                let _ = writeln!(out, "    PASS {} ({:.2}s)", t.name, t.duration.as_secs_f64());
            }
            Outcome::Skipped(reason) if v == Verbosity::Verbose => {
                let _ = writeln!(out, "    SKIP {} ({reason})", t.name);
            }
            _ => {}
        }
    }
    out
}

/// The final line.
pub fn render_summary(s: &RunSummary) -> String {
    let errored = if s.errored_files > 0 { format!(", {} file(s) errored", s.errored_files) } else { String::new() };
    let mut out = format!(
        "{} file(s); {} passed, {} failed, {} skipped{errored}; {:.2}s\n",
        s.files,
        s.counts.passed,
        s.counts.failed,
        s.counts.skipped,
        s.duration.as_secs_f64()
    );
    if let (Some(seed), true) = (s.seed, s.failed_files > 0) {
        out.push_str(&format!("seed {seed}: `--seed {seed}` repeats this run's random choices (bridge loss)\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::TestReport;

    fn sample() -> FileReport {
        let t = |name: &str, outcome| TestReport {
            name: name.into(),
            outcome,
            log: vec![],
            duration: Duration::from_millis(1500),
            console: vec![],
            meta: Default::default(),
        };
        let mut f = FileReport::new("suite/a.test.lua");
        f.tests.push(t("boots", Outcome::Passed));
        let mut failed = t("reads", Outcome::Failed("suite/a.test.lua:9: assert_eq failed: \"a\" ~= \"b\"".into()));
        failed.console = vec![("v".into(), "Run /sbin/provium-agent as init process\nok".into())];
        failed.log = vec!["about to read".into()];
        f.tests.push(failed);
        f.tests.push(t("later", Outcome::Skipped("skipped (meta.skip)".into())));
        f
    }

    #[test]
    fn failing_file_normal() {
        insta::assert_snapshot!(render_file(&sample(), Verbosity::Normal));
    }

    #[test]
    fn failing_file_verbose() {
        insta::assert_snapshot!(render_file(&sample(), Verbosity::Verbose));
    }

    #[test]
    fn chunk_error_and_summary() {
        let mut f = FileReport::new("suite/bad.test.lua");
        f.chunk_error = Some("suite/bad.test.lua:3: unexpected symbol near 'end'".into());
        let mut s = RunSummary { duration: Duration::from_millis(12340), ..Default::default() };
        s.add(&sample());
        s.add(&f);
        insta::assert_snapshot!(format!("{}{}", render_file(&f, Verbosity::Quiet), render_summary(&s)));
    }
}
