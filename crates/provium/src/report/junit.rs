//! `--junit PATH`: the run as a JUnit XML report, for CI servers. It
//! collects each `FileFinished` and writes the file once, on `RunFinished`,
//! atomically (a temporary file beside it, then a rename), so a reader
//! never sees half a report.
//!
//! ```text
//! <testsuites name="provium" tests=… failures=… errors=… skipped=… time=… timestamp=…>
//!   <testsuite name="a.test.lua" tests=… failures=… errors=… skipped=… time=… timestamp=…>
//!     <testcase classname="a.test.lua" name="boots" time="1.204"/>
//!     <testcase classname="a.test.lua" name="reads" time="0.031">
//!       <failure message="first line" type="failure">whole message
//! ---- vm v (console, last lines) ----
//! …</failure>
//!       <system-out>each t:log line</system-out>
//!     </testcase>
//!     <testcase …><skipped message="reason"/></testcase>
//!     <testcase classname="a.test.lua" name="(file)" time=…><error message=… type="chunk_error|timeout">…</error></testcase>
//!   </testsuite>
//! </testsuites>
//! ```
//!
//! One `<testsuite>` per file, sorted by path; one `<testcase>` per test. A
//! file whose chunk failed, or that timed out, adds one errored testcase
//! named `(file)` whose time is what the file spent outside its tests.
//! Times are seconds; timestamps are UTC, `YYYY-MM-DDTHH:MM:SS` (the JUnit
//! schema's form, without a zone). Suites' and the root's counts are
//! recomputed from their children by [`recount`] and [`totals`], which
//! `provium merge-junit` (`super::junit_merge`) shares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::xml::{self, Element};
use super::{Event, FileReport, Outcome, Reporter, TestReport};

/// The testcase that stands for a whole file's error.
pub const FILE_CASE: &str = "(file)";

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("--junit `{path}`: cannot write there")]
    Unwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--junit `{path}`: cannot write the report")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Seconds, as JUnit wants them.
fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// `t` in UTC as `YYYY-MM-DDTHH:MM:SS`.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    crate::units::utc_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// One test's `<testcase>`.
fn testcase(path: &str, t: &TestReport) -> Element {
    let mut case =
        Element::new("testcase").attr("classname", path).attr("name", &t.name).attr("time", seconds(t.duration));
    match &t.outcome {
        Outcome::Passed => {}
        Outcome::Failed(msg) => {
            let mut text = msg.clone();
            for (vm, tail) in &t.console {
                text.push_str(&format!("\n---- vm {vm} (console, last lines) ----\n{tail}"));
            }
            let failure = Element::new("failure").attr("message", first_line(msg)).attr("type", "failure").text(&text);
            case = case.child(failure);
        }
        Outcome::Skipped(reason) => case = case.child(Element::new("skipped").attr("message", reason)),
    }
    if !t.log.is_empty() {
        case = case.child(Element::new("system-out").text(&(t.log.join("\n") + "\n")));
    }
    case
}

/// The errored testcase of a file that failed as a whole, if it did.
fn file_error(f: &FileReport) -> Option<Element> {
    let (kind, text) = match (&f.chunk_error, f.timed_out) {
        (Some(e), false) => ("chunk_error", e.clone()),
        (Some(e), true) => ("timeout", format!("the file timed out; its VMs were stopped\n{e}")),
        (None, true) => ("timeout", "the file timed out; its VMs were stopped".to_string()),
        (None, false) => return None,
    };
    let in_tests: Duration = f.tests.iter().map(|t| t.duration).sum();
    let error = Element::new("error").attr("message", first_line(&text)).attr("type", kind).text(&text);
    let case = Element::new("testcase")
        .attr("classname", &f.path)
        .attr("name", FILE_CASE)
        .attr("time", seconds(f.duration.saturating_sub(in_tests)));
    Some(case.child(error))
}

/// One file's `<testsuite>`; `started`: when the file started.
pub fn testsuite(f: &FileReport, started: SystemTime) -> Element {
    let mut suite = Element::new("testsuite").attr("name", &f.path);
    for key in ["tests", "failures", "errors", "skipped"] {
        suite.set(key, 0);
    }
    suite = suite.attr("time", seconds(f.duration)).attr("timestamp", timestamp(started));
    for t in &f.tests {
        suite = suite.child(testcase(&f.path, t));
    }
    if let Some(case) = file_error(f) {
        suite = suite.child(case);
    }
    recount(&mut suite);
    suite
}

/// Counts of a suite or a whole report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub skipped: u64,
    pub time: f64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.tests += o.tests;
        self.failures += o.failures;
        self.errors += o.errors;
        self.skipped += o.skipped;
        self.time += o.time;
    }

    /// Writes the counts (and, if `time`, the time) on `e`.
    fn set_on(&self, e: &mut Element, time: bool) {
        e.set("tests", self.tests);
        e.set("failures", self.failures);
        e.set("errors", self.errors);
        e.set("skipped", self.skipped);
        if time {
            e.set("time", format!("{:.3}", self.time));
        }
    }
}

fn time_of(e: &Element) -> f64 {
    e.get("time").and_then(|t| t.trim().parse::<f64>().ok()).filter(|t| t.is_finite()).unwrap_or(0.0)
}

/// Sets a `<testsuite>`'s counts from its testcases (a case with
/// `<failure>` failed, with `<error>` errored, with `<skipped>` was
/// skipped), and its time from theirs if it has none. Its counts.
pub fn recount(suite: &mut Element) -> Totals {
    let mut t = Totals::default();
    for case in suite.elements().filter(|e| e.name == "testcase") {
        t.tests += 1;
        t.time += time_of(case);
        if case.elements().any(|e| e.name == "error") {
            t.errors += 1;
        } else if case.elements().any(|e| e.name == "failure") {
            t.failures += 1;
        } else if case.elements().any(|e| e.name == "skipped") {
            t.skipped += 1;
        }
    }
    let has_time = suite.get("time").is_some();
    if has_time {
        t.time = time_of(suite);
    }
    t.set_on(suite, !has_time);
    t
}

/// The `<testsuites>` root over `suites` (each already [`recount`]ed):
/// counts summed; its time is `time` if given, else the suites' sum.
pub fn totals(suites: Vec<Element>, time: Option<f64>, started: Option<SystemTime>) -> Element {
    let mut sum = Totals::default();
    for s in &suites {
        let mut t = Totals { time: time_of(s), ..Default::default() };
        for (key, field) in [
            ("tests", &mut t.tests),
            ("failures", &mut t.failures),
            ("errors", &mut t.errors),
            ("skipped", &mut t.skipped),
        ] {
            *field = s.get(key).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        }
        sum.add(&t);
    }
    if let Some(time) = time {
        sum.time = time;
    }
    let mut root = Element::new("testsuites").attr("name", "provium");
    sum.set_on(&mut root, true);
    if let Some(at) = started {
        root.set("timestamp", timestamp(at));
    }
    root.children = suites.into_iter().map(xml::Node::Element).collect();
    root
}

/// Collects the run's files and writes the report when the run ends.
pub struct JunitReporter {
    path: PathBuf,
    run_started: Option<SystemTime>,
    file_started: HashMap<String, SystemTime>,
    suites: Vec<Element>,
    failed: Option<JunitError>,
}

impl JunitReporter {
    /// A reporter writing to `path`, whose directory must be writable now
    /// (a run should not go for minutes to lose its report at the end);
    /// `path` itself is left alone until then.
    pub fn new(path: &Path) -> Result<JunitReporter, JunitError> {
        let unwritable = |source| JunitError::Unwritable { path: path.to_path_buf(), source };
        if path.is_dir() {
            return Err(unwritable(std::io::Error::from(std::io::ErrorKind::IsADirectory)));
        }
        let probe = crate::files::tmp_path(path);
        std::fs::File::create(&probe).map_err(unwritable)?;
        let _ = std::fs::remove_file(&probe);
        Ok(JunitReporter {
            path: path.to_path_buf(),
            run_started: None,
            file_started: HashMap::new(),
            suites: Vec::new(),
            failed: None,
        })
    }

    /// The document for what was collected, the run having taken `duration`.
    pub fn document(&self, duration: Duration) -> String {
        let mut suites = self.suites.clone();
        suites.sort_by(|a, b| a.get("name").cmp(&b.get("name")));
        xml::to_document(&totals(suites, Some(duration.as_secs_f64()), self.run_started))
    }
}

impl Reporter for JunitReporter {
    fn event(&mut self, e: &Event) {
        match e {
            Event::RunStarted { .. } => self.run_started = Some(SystemTime::now()),
            Event::FileStarted { file } => {
                self.file_started.insert(file.clone(), SystemTime::now());
            }
            Event::FileFinished { report } => {
                let started = self
                    .file_started
                    .remove(&report.path)
                    .unwrap_or_else(|| SystemTime::now().checked_sub(report.duration).unwrap_or(SystemTime::now()));
                self.suites.push(testsuite(report, started));
            }
            Event::RunFinished { duration } => {
                let doc = self.document(*duration);
                if let Err(source) = crate::files::write_atomically(&self.path, doc.as_bytes()) {
                    self.failed = Some(JunitError::Write { path: self.path.clone(), source });
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self) -> Result<(), super::ReportError> {
        match self.failed.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(name: &str, outcome: Outcome, ms: u64) -> TestReport {
        TestReport {
            name: name.into(),
            outcome,
            log: vec![],
            duration: Duration::from_millis(ms),
            console: vec![],
            meta: Default::default(),
        }
    }

    fn mixed() -> FileReport {
        let mut f = FileReport::new("suite/a.test.lua");
        f.duration = Duration::from_millis(4200);
        f.tests.push(test("boots", Outcome::Passed, 1500));
        let mut failed = test(
            "reads \"x\"",
            Outcome::Failed("suite/a.test.lua:9: 1 ~= 2\nstack traceback:\n\t[C]: in ?".into()),
            250,
        );
        failed.console = vec![("v".into(), "\x1b[1mprovium-test: <warn> & more\x1b[0m".into())];
        failed.log = vec!["about to read".into(), "second".into()];
        f.tests.push(failed);
        f.tests.push(test("later", Outcome::Skipped("not on tcg".into()), 0));
        f
    }

    const AT: Duration = Duration::from_secs(1_767_323_045); // 2026-01-02T03:04:05

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |s| timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00");
        assert_eq!(at(AT.as_secs()), "2026-01-02T03:04:05");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59");
    }

    #[test]
    fn a_file_with_every_outcome() {
        let suite = testsuite(&mixed(), SystemTime::UNIX_EPOCH + AT);
        insta::assert_snapshot!(xml::to_document(&suite));
    }

    #[test]
    fn chunk_errors_and_timeouts_add_one_errored_case() {
        let mut bad = FileReport::new("bad.test.lua");
        bad.chunk_error = Some("bad.test.lua:3: unexpected symbol near 'end'".into());
        bad.duration = Duration::from_millis(20);
        let mut slow = FileReport::new("slow.test.lua");
        slow.timed_out = true;
        slow.duration = Duration::from_secs(10);
        slow.tests.push(test("first", Outcome::Passed, 4000));
        slow.tests.push(test("stuck", Outcome::Failed("not run: the file timeout (10s) was exceeded".into()), 0));
        let at = SystemTime::UNIX_EPOCH + AT;
        let root = totals(vec![testsuite(&bad, at), testsuite(&slow, at)], Some(12.5), Some(at));
        insta::assert_snapshot!(xml::to_document(&root));
    }

    #[test]
    fn the_report_is_written_once_at_the_end_sorted_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        let mut r = JunitReporter::new(&path).unwrap();
        let mut b = FileReport::new("b.test.lua");
        b.tests.push(test("x", Outcome::Passed, 5));
        r.event(&Event::RunStarted { files: 2, jobs: 2, accel: "tcg".into(), accel_reason: "".into(), seed: 1 });
        r.event(&Event::FileFinished { report: b });
        r.event(&Event::FileFinished { report: mixed() });
        assert!(!path.exists(), "nothing is written before the run ends");
        r.event(&Event::RunFinished { duration: Duration::from_secs(3) });
        r.finish().unwrap();
        let doc = xml::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let names: Vec<_> = doc.elements().map(|s| s.get("name").unwrap()).collect();
        assert_eq!(names, ["b.test.lua", "suite/a.test.lua"]);
        assert_eq!(
            ["tests", "failures", "errors", "skipped", "time"].map(|k| doc.get(k).unwrap()),
            ["4", "1", "0", "1", "3.000"]
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["junit.xml"], "no temporary file is left");
    }

    #[test]
    fn an_unwritable_path_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let e = JunitReporter::new(&dir.path().join("no/such/dir/junit.xml")).err().unwrap();
        assert!(e.to_string().ends_with("junit.xml`: cannot write there"), "{e}");
        assert!(JunitReporter::new(dir.path()).is_err(), "a directory is no report file");

        // Writable at the start, gone at the end: `finish` says so.
        let later = dir.path().join("later");
        std::fs::create_dir(&later).unwrap();
        let mut r = JunitReporter::new(&later.join("junit.xml")).unwrap();
        std::fs::remove_dir(&later).unwrap();
        r.event(&Event::RunFinished { duration: Duration::from_secs(1) });
        let e = r.finish().unwrap_err();
        assert!(e.to_string().ends_with("later/junit.xml`: cannot write the report"), "{e}");
        assert!(r.finish().is_ok(), "said once");
    }
}
