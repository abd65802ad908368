//! `--json`: one JSON object per line on stdout, one per event, for
//! machines. Every object has `"v"` (this format's version, [`VERSION`]) and
//! `"type"`:
//!
//! - `run_started` `{files, jobs, accel, accel_reason}`;
//! - `test` `{file, name, status, message, duration_s}`;
//! - `file` `{path, timeout:"in_time"|"timed_out", passed, chunk_error|null,
//!   duration_s, tests:[{name, status:"passed"|"failed"|"skipped",
//!   message|null, log:[…], duration_s, console:[{vm, tail}]}]}`;
//! - `file_discovered` `{file, fixture_refs}`, `file_blocked` `{file,
//!   waiting_for:{memory_bytes, cpus}, reason}`, `file_dispatched` `{file,
//!   reservation}`, `test_started` `{file, name}`;
//! - `vm_spawned` `{file, vm, profile, memory_bytes}`, `vm_booted` `{file, vm,
//!   took_s}`, `vm_stopped` `{file, vm, ran_s}`;
//! - `pool_state` `{used, available}`, `claim_acquired`/`claim_released`
//!   `{file, amount}`, `fixture_cache_hit` `{file, name}`;
//! - `fixture_building` `{file, name, path}`, `fixture_waiting` `{file, name,
//!   holder}`, `fixture_built` `{file, name, took_s, cache_bytes}`,
//!   `fixture_evicted` `{file, key, reason, rebuilding}`;
//! - `warning` `{file, message}`;
//! - `run_finished` `{duration_s, files, passed, failed, skipped}`.

use std::io::Write;

use serde_json::{json, Value};

use super::{Event, FileReport, Outcome, Reporter, RunSummary, TestReport};

/// The version of this format; bumped when a field changes meaning or goes.
pub const VERSION: u32 = 1;

fn status(o: &Outcome) -> (&'static str, Option<String>) {
    match o {
        Outcome::Passed => ("passed", None),
        Outcome::Failed(m) => ("failed", Some(m.clone())),
        Outcome::Skipped(r) => ("skipped", Some(r.clone())),
    }
}

fn test_json(t: &TestReport) -> Value {
    let (status, message) = status(&t.outcome);
    json!({
        "name": t.name,
        "status": status,
        "message": message,
        "log": t.log,
        "duration_s": t.duration.as_secs_f64(),
        "console": t.console.iter().map(|(vm, tail)| json!({"vm": vm, "tail": tail})).collect::<Vec<_>>(),
    })
}

/// A finished file's object (without `v` and `type`).
/// The one line of a run that found no test files.
pub fn no_files_json() -> Value {
    json!({"v": VERSION, "type": "no_files", "message": "no *.test.lua files found"})
}

pub fn file_json(f: &FileReport) -> Value {
    json!({
        "path": f.path,
        "timeout": if f.timed_out { "timed_out" } else { "in_time" },
        "passed": f.passed(),
        "chunk_error": f.chunk_error,
        "duration_s": f.duration.as_secs_f64(),
        "tests": f.tests.iter().map(test_json).collect::<Vec<_>>(),
    })
}

fn amount(a: &crate::events::ResourceAmount) -> Value {
    json!({"memory_bytes": a.memory_bytes, "cpus": a.cpus})
}

/// The line for `e`, given the summary so far (for `run_finished`).
pub fn event_json(e: &Event, summary: &RunSummary) -> Value {
    let (kind, mut body) = match e {
        Event::RunStarted { files, jobs, accel, accel_reason, seed } => (
            "run_started",
            json!({"files": files, "jobs": jobs, "accel": accel, "accel_reason": accel_reason, "seed": seed}),
        ),
        Event::FileStarted { file } => ("file_started", json!({ "file": file })),
        Event::TestFinished { file, test } => {
            let (status, message) = status(&test.outcome);
            let t = json!({"file": file, "name": test.name, "status": status, "message": message,
                "duration_s": test.duration.as_secs_f64()});
            ("test", t)
        }
        Event::FileFinished { report } => ("file", file_json(report)),
        Event::RunFinished { duration } => (
            "run_finished",
            json!({"duration_s": duration.as_secs_f64(), "files": summary.files, "passed": summary.counts.passed,
                "failed": summary.counts.failed, "skipped": summary.counts.skipped}),
        ),
        Event::VmBooted { file, vm, took } => {
            ("vm_booted", json!({"file": file, "vm": vm, "took_s": took.as_secs_f64()}))
        }
        Event::VmStopped { file, vm, ran } => {
            ("vm_stopped", json!({"file": file, "vm": vm, "ran_s": ran.as_secs_f64()}))
        }
        Event::VmSpawned { file, vm, profile, memory_bytes } => {
            ("vm_spawned", json!({"file": file, "vm": vm, "profile": profile, "memory_bytes": memory_bytes}))
        }
        Event::FileDiscovered { file, fixture_refs } => {
            ("file_discovered", json!({"file": file, "fixture_refs": fixture_refs}))
        }
        Event::FileBlocked { file, waiting_for, reason } => {
            ("file_blocked", json!({"file": file, "waiting_for": amount(waiting_for), "reason": reason.as_str()}))
        }
        Event::FileDispatched { file, reservation } => {
            ("file_dispatched", json!({"file": file, "reservation": amount(reservation)}))
        }
        Event::TestStarted { file, name, .. } => ("test_started", json!({"file": file, "name": name})),
        Event::PoolState { used, available } => {
            ("pool_state", json!({"used": amount(used), "available": amount(available)}))
        }
        Event::ClaimAcquired { file, amount: a } => ("claim_acquired", json!({"file": file, "amount": amount(a)})),
        Event::ClaimReleased { file, amount: a } => ("claim_released", json!({"file": file, "amount": amount(a)})),
        Event::FixtureCacheHit { file, name } => ("fixture_cache_hit", json!({"file": file, "name": name})),
        Event::FixtureBuilding { file, name, path } => {
            ("fixture_building", json!({"file": file, "name": name, "path": path}))
        }
        Event::FixtureWaiting { file, name, holder } => {
            ("fixture_waiting", json!({"file": file, "name": name, "holder": holder}))
        }
        Event::FixtureBuilt { file, name, took, cache_bytes } => (
            "fixture_built",
            json!({"file": file, "name": name, "took_s": took.as_secs_f64(), "cache_bytes": cache_bytes}),
        ),
        Event::FixtureEvicted { file, key, reason, rebuilding } => {
            ("fixture_evicted", json!({"file": file, "key": key, "reason": reason, "rebuilding": rebuilding}))
        }
        Event::Warning { file, message } => ("warning", json!({"file": file, "message": message})),
    };
    body["v"] = json!(VERSION);
    body["type"] = json!(kind);
    body
}

/// Writes every event as a JSON line on `out`, and the human notes
/// (fixture builds, warnings) on `err`, where people look.
pub struct JsonReporter<O: Write, E: Write> {
    out: O,
    err: E,
    summary: RunSummary,
}

impl<O: Write, E: Write> JsonReporter<O, E> {
    pub fn new(out: O, err: E) -> Self {
        JsonReporter { out, err, summary: RunSummary::default() }
    }
}

impl<O: Write, E: Write> Reporter for JsonReporter<O, E> {
    fn event(&mut self, e: &Event) {
        self.summary.record(e);
        let _ = writeln!(self.out, "{}", event_json(e, &self.summary));
        let _ = self.out.flush();
        if !matches!(e, Event::RunStarted { .. }) {
            if let Some(line) = super::human::note(e) {
                let _ = writeln!(self.err, "{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let mut f = FileReport::new("a.test.lua");
        f.tests.push(TestReport {
            name: "t".into(),
            outcome: Outcome::Failed("boom".into()),
            log: vec!["l".into()],
            duration: Default::default(),
            console: vec![],
            meta: Default::default(),
        });
        let v = event_json(&Event::FileFinished { report: f }, &RunSummary::default());
        assert_eq!(v["v"], VERSION);
        assert_eq!(v["type"], "file");
        assert_eq!(v["passed"], false);
        assert_eq!(v["timeout"], "in_time");
        assert_eq!(v["tests"][0]["status"], "failed");
        assert_eq!(v["tests"][0]["message"], "boom");
        assert_eq!(v["chunk_error"], Value::Null);
    }

    #[test]
    fn every_line_is_versioned_and_notes_go_to_stderr() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut r = JsonReporter::new(&mut out, &mut err);
        r.event(&Event::Warning { file: Some("a.test.lua".into()), message: "restore failed".into() });
        r.event(&Event::RunFinished { duration: std::time::Duration::from_secs(2) });
        let lines: Vec<Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l["v"] == VERSION));
        assert_eq!(
            (lines[0]["type"].as_str(), lines[0]["message"].as_str()),
            (Some("warning"), Some("restore failed"))
        );
        assert_eq!(lines[1]["duration_s"], 2.0);
        assert_eq!(String::from_utf8(err).unwrap(), "provium: a.test.lua: restore failed\n");
    }
}
