//! `provium merge-junit OUT IN...`: the JUnit reports of N shards (each
//! `--partition K/N --junit` run) as one. Each input's suites are taken in
//! order (a `<testsuites>` root's `<testsuite>` children, or a lone
//! `<testsuite>` root); every suite's counts are recounted from its
//! testcases and the new root's totals summed from the suites. The root's
//! time is the sum of the inputs' (each shard's wall-clock time).
//!
//! Inputs are read with the XML reader of [`super::xml`]; an input that
//! cannot be read, is not XML, or is not a JUnit report is an error naming
//! it, and nothing is written.

use std::path::{Path, PathBuf};

use super::junit::{self, Totals};
use super::xml::{self, Element};

/// Why the reports could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("merge-junit: cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("merge-junit: `{path}` is not an XML document")]
    Parse {
        path: PathBuf,
        #[source]
        source: xml::XmlError,
    },
    #[error("merge-junit: `{path}` is not a JUnit report: its root element is `<{root}>`, not `<testsuites>` or `<testsuite>`")]
    NotJunit { path: PathBuf, root: String },
    #[error("merge-junit: cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a merge produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Merged {
    pub inputs: usize,
    pub suites: usize,
    pub totals: Totals,
}

/// One input's suites and its own time (if its root is `<testsuites>`
/// and says).
fn suites_of(path: &Path, doc: Element) -> Result<(Vec<Element>, Option<f64>), MergeError> {
    match doc.name.as_str() {
        "testsuites" => {
            let time = doc.get("time").and_then(|t| t.trim().parse::<f64>().ok());
            let suites = doc
                .children
                .into_iter()
                .filter_map(|n| match n {
                    xml::Node::Element(e) if e.name == "testsuite" => Some(e),
                    _ => None,
                })
                .collect();
            Ok((suites, time))
        }
        "testsuite" => Ok((vec![doc], None)),
        _ => Err(MergeError::NotJunit { path: path.to_path_buf(), root: doc.name }),
    }
}

/// Merges parsed reports, in order: the root element of the result.
pub fn merge(docs: Vec<(PathBuf, Element)>) -> Result<Element, MergeError> {
    let mut all = Vec::new();
    let mut time = 0.0;
    for (path, doc) in docs {
        let (suites, own_time) = suites_of(&path, doc)?;
        let mut suite_time = 0.0;
        for mut s in suites {
            suite_time += junit::recount(&mut s).time;
            all.push(s);
        }
        time += own_time.unwrap_or(suite_time);
    }
    Ok(junit::totals(all, Some(time), None))
}

/// Reads every input, merges them, and writes `out` atomically.
pub fn merge_files(out: &Path, inputs: &[PathBuf]) -> Result<Merged, MergeError> {
    let mut docs = Vec::new();
    for path in inputs {
        let text = std::fs::read_to_string(path).map_err(|source| MergeError::Read { path: path.clone(), source })?;
        let doc = xml::parse(&text).map_err(|source| MergeError::Parse { path: path.clone(), source })?;
        docs.push((path.clone(), doc));
    }
    let root = merge(docs)?;
    let count = |k: &str| root.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    let totals = Totals {
        tests: count("tests"),
        failures: count("failures"),
        errors: count("errors"),
        skipped: count("skipped"),
        time: root.get("time").and_then(|v| v.parse().ok()).unwrap_or(0.0),
    };
    let suites = root.elements().count();
    crate::files::write_atomically(out, xml::to_document(&root).as_bytes())
        .map_err(|source| MergeError::Write { path: out.to_path_buf(), source })?;
    Ok(Merged { inputs: inputs.len(), suites, totals })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::report::{FileReport, Outcome, TestReport};

    fn file(path: &str, outcomes: &[Outcome], chunk_error: bool) -> FileReport {
        let mut f = FileReport::new(path);
        f.duration = Duration::from_millis(1500);
        for (i, o) in outcomes.iter().enumerate() {
            f.tests.push(TestReport {
                name: format!("t{i}"),
                outcome: o.clone(),
                log: vec![],
                duration: Duration::from_millis(100),
                console: vec![],
                meta: Default::default(),
            });
        }
        f.chunk_error = chunk_error.then(|| "boom".into());
        f
    }

    fn shard(files: &[FileReport], time: f64) -> String {
        let suites = files.iter().map(|f| junit::testsuite(f, SystemTime::UNIX_EPOCH)).collect();
        xml::to_document(&junit::totals(suites, Some(time), Some(SystemTime::UNIX_EPOCH)))
    }

    fn counts(e: &Element) -> [&str; 5] {
        ["tests", "failures", "errors", "skipped", "time"].map(|k| e.get(k).unwrap())
    }

    #[test]
    fn merging_two_shards_sums_their_counts() {
        let (pass, fail, skip) = (Outcome::Passed, Outcome::Failed("no".into()), Outcome::Skipped("later".into()));
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.xml");
        let b = dir.path().join("b.xml");
        std::fs::write(&a, shard(&[file("x.test.lua", &[pass.clone(), fail.clone(), skip.clone()], false)], 2.0))
            .unwrap();
        std::fs::write(
            &b,
            shard(&[file("y.test.lua", std::slice::from_ref(&pass), false), file("z.test.lua", &[], true)], 3.5),
        )
        .unwrap();
        let out = dir.path().join("all.xml");
        let merged = merge_files(&out, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            merged,
            Merged { inputs: 2, suites: 3, totals: Totals { tests: 5, failures: 1, errors: 1, skipped: 1, time: 5.5 } }
        );
        let root = xml::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(counts(&root), ["5", "1", "1", "1", "5.500"]);
        let names: Vec<_> = root.elements().map(|s| s.get("name").unwrap()).collect();
        assert_eq!(names, ["x.test.lua", "y.test.lua", "z.test.lua"], "suites in input order");
        assert_eq!(counts(root.elements().next().unwrap()), ["3", "1", "0", "1", "1.500"]);

        // Merging the merged report with nothing else changes nothing.
        let again = dir.path().join("again.xml");
        merge_files(&again, std::slice::from_ref(&out)).unwrap();
        assert_eq!(std::fs::read_to_string(&again).unwrap(), std::fs::read_to_string(&out).unwrap());
    }

    #[test]
    fn counts_come_from_the_testcases_and_a_lone_testsuite_is_accepted() {
        let lone = xml::parse(
            "<testsuite name=\"s\" tests=\"99\"><testcase name=\"a\" time=\"0.25\"/>\
             <testcase name=\"b\" time=\"0.5\"><failure message=\"x\"/></testcase></testsuite>",
        )
        .unwrap();
        let root = merge(vec![(PathBuf::from("lone.xml"), lone)]).unwrap();
        assert_eq!(counts(&root), ["2", "1", "0", "0", "0.750"]);
        let suite = root.elements().next().unwrap();
        assert_eq!(counts(suite), ["2", "1", "0", "0", "0.750"], "the suite's wrong count is corrected");
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.xml");
        std::fs::write(&good, shard(&[], 1.0)).unwrap();
        let broken = dir.path().join("broken.xml");
        std::fs::write(&broken, "<testsuites><testsuite></testsuites>").unwrap();
        let html = dir.path().join("page.xml");
        std::fs::write(&html, "<html/>").unwrap();
        let missing = dir.path().join("missing.xml");
        let out = dir.path().join("out.xml");
        let err = |input: &Path| {
            let e = merge_files(&out, &[good.clone(), input.to_path_buf()]).unwrap_err();
            let mut text = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                text = format!("{text}: {c}");
                cur = c.source();
            }
            text.replace(&dir.path().display().to_string(), "D")
        };
        assert_eq!(
            err(&broken),
            "merge-junit: `D/broken.xml` is not an XML document: not well-formed XML at byte 23: \
             ill-formed document: expected `</testsuite>`, but `</testsuites>` was found"
        );
        assert_eq!(
            err(&html),
            "merge-junit: `D/page.xml` is not a JUnit report: its root element is `<html>`, not `<testsuites>` or \
             `<testsuite>`"
        );
        assert!(
            err(&missing).starts_with("merge-junit: cannot read `D/missing.xml`: No such file"),
            "{}",
            err(&missing)
        );
        assert!(!out.exists(), "nothing is written when an input is bad");
    }
}
