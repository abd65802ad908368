//! `--json`: one JSON object per file per line, for machines.
//!
//! `{"path":…,"timeout":"in_time"|"timed_out","passed":bool,"chunk_error":…|null,
//!   "duration_s":…,"tests":[{"name":…,"status":"passed"|"failed"|"skipped",
//!   "message":…|null,"log":[…],"duration_s":…}]}`

use serde_json::{json, Value};

use super::{FileReport, Outcome};

pub fn file_json(f: &FileReport) -> Value {
    let tests: Vec<Value> = f
        .tests
        .iter()
        .map(|t| {
            let (status, message) = match &t.outcome {
                Outcome::Passed => ("passed", None),
                Outcome::Failed(m) => ("failed", Some(m.clone())),
                Outcome::Skipped(r) => ("skipped", Some(r.clone())),
            };
            json!({
                "name": t.name,
                "status": status,
                "message": message,
                "log": t.log,
                "duration_s": t.duration.as_secs_f64(),
                "console": t.console.iter().map(|(vm, tail)| json!({"vm": vm, "tail": tail})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "path": f.path,
        "timeout": if f.timed_out { "timed_out" } else { "in_time" },
        "passed": f.passed(),
        "chunk_error": f.chunk_error,
        "duration_s": f.duration.as_secs_f64(),
        "tests": tests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let mut f = FileReport::new("a.test.lua");
        f.tests.push(crate::report::TestReport {
            name: "t".into(),
            outcome: Outcome::Failed("boom".into()),
            log: vec!["l".into()],
            duration: Default::default(),
            console: vec![],
        });
        let v = file_json(&f);
        assert_eq!(v["passed"], false);
        assert_eq!(v["timeout"], "in_time");
        assert_eq!(v["tests"][0]["status"], "failed");
        assert_eq!(v["tests"][0]["message"], "boom");
        assert_eq!(v["chunk_error"], Value::Null);
    }
}
