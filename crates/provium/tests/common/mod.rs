//! Helpers shared by the end-to-end test binaries: a suite directory that is
//! also the run's `TMPDIR`, running the real `provium` binary in it, and
//! finding what a run left behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Suite {
    dir: tempfile::TempDir,
}

impl Suite {
    pub fn new() -> Suite {
        Suite { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn tmpdir(&self) -> PathBuf {
        let t = self.path().join("tmp");
        std::fs::create_dir_all(&t).unwrap();
        t
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_provium"));
        c.args(args).current_dir(self.path()).env("TMPDIR", self.tmpdir()).env("PROVIUM_ACCEL", "tcg");
        // Failures recorded for --rerun-failed stay in the suite.
        c.env("PROVIUM_RERUN_STATE", self.path().join("rerun.json"));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run provium");
        eprintln!(
            "--- provium {args:?} exit={:?}\n{}\n--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs provium on a pseudo-terminal (util-linux `script`), with `CI`
    /// unset unless `env` sets it: its exit code and all the terminal showed.
    pub fn run_in_terminal(&self, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
        let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
        let mut line = vec![quote(env!("CARGO_BIN_EXE_provium"))];
        line.extend(args.iter().map(|a| quote(a)));
        let mut c = Command::new("script");
        c.args(["-qfec", &line.join(" "), "/dev/null"]).current_dir(self.path()).env_remove("CI").stdin(Stdio::null());
        // The environment of every other run.
        for (k, v) in self.command(&[]).get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("script (util-linux; run scripts/setup)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("--- provium {args:?} {env:?} on a terminal, exit={:?}\n{text:?}", out.status.code());
        (out.status.code(), text)
    }

    /// The scratch directories and QEMU processes left by provium `pid`.
    pub fn leftovers(&self, pid: u32) -> Vec<String> {
        let mut found = Vec::new();
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let root = self.tmpdir().join(format!("provium-{uid}"));
        // Scratch directories, and the guest RAM files in /dev/shm.
        let shm = PathBuf::from(format!("/dev/shm/provium-{uid}"));
        for (dir, what) in [(&root, "scratch dir"), (&shm, "RAM dir")] {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&format!("{pid}-")) {
                        found.push(format!("{what} {name}"));
                    }
                }
            }
        }
        let marker = root.display().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains("qemu-system") && cmd.contains(&marker) {
                    found.push(format!("process {}: {cmd}", e.file_name().to_string_lossy()));
                }
            }
        }
        found
    }
}

/// The file reports of a `--json` run (its `"type": "file"` lines).
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert!(lines.iter().all(|l| l["v"] == 1), "every --json line carries the format version");
    lines.into_iter().filter(|l| l["type"] == "file").collect()
}

pub fn file<'a>(reports: &'a [serde_json::Value], suffix: &str) -> &'a serde_json::Value {
    reports
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("no report for {suffix}"))
}

pub fn vmlinux() -> PathBuf {
    provium::image::Images::new(Default::default()).default_guest().unwrap().vmlinux
}

/// What junitparser reads in `path`, as JSON.
pub fn junitparser(path: &Path) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, sys
from junitparser import JUnitXml
xml = JUnitXml.fromfile(sys.argv[1])
def counts(x):
    return {"tests": x.tests, "failures": x.failures, "errors": x.errors, "skipped": x.skipped, "time": x.time}
out = {"totals": counts(xml), "suites": []}
for s in xml:
    cases = []
    for c in s:
        cases.append({"classname": c.classname, "name": c.name, "time": c.time, "system_out": c.system_out,
                      "results": [{"kind": type(r).__name__, "message": r.message, "text": r.text} for r in c.result]})
    out["suites"].append(dict(counts(s), name=s.name, timestamp=s.timestamp, cases=cases))
print(json.dumps(out))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .expect("python3 (run scripts/setup)");
    assert!(
        out.status.success(),
        "junitparser could not read {} (is it installed? run scripts/setup):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `[tests, failures, errors, skipped]` of a [`junitparser`] reading.
pub fn totals(report: &serde_json::Value) -> [u64; 4] {
    ["tests", "failures", "errors", "skipped"].map(|k| report["totals"][k].as_u64().unwrap())
}
