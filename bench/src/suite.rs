//! `--suite`: how a whole run scales with files at once. Runs the real
//! `provium` binary (the one built beside this bench) and times it:
//!
//! - `examples/` with `-j 1` against `-j 2` (the repository's suite);
//! - N copies of a one-VM file with `-j N` (N = the host's CPUs) against
//!   one copy alone: on N cores the ratio would be 1.0 if files ran with no
//!   contention at all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::measure::BenchError;

#[derive(Debug, Serialize)]
pub struct Suite {
    pub examples_files: usize,
    pub examples_j1_s: f64,
    pub examples_j2_s: f64,
    pub cpus: usize,
    pub one_file_s: f64,
    pub n_files_s: f64,
}

fn provium_binary() -> Result<PathBuf, BenchError> {
    let exe =
        std::env::current_exe().map_err(|e| BenchError::Guest { step: "suite".into(), message: e.to_string() })?;
    let bin = exe.with_file_name("provium");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(BenchError::Guest {
            step: "suite".into(),
            message: format!("`{}` is missing: build it with `cargo build --release -p provium`", bin.display()),
        })
    }
}

/// One timed run of `provium -q -j jobs paths…`; it must pass.
fn timed(bin: &Path, jobs: usize, paths: &[&Path]) -> Result<Duration, BenchError> {
    let t0 = Instant::now();
    // The example suite's config (profile `web`), wherever the bench runs.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../provium.toml");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("-q")
        .arg("-j")
        .arg(jobs.to_string())
        .args(paths)
        .output()
        .map_err(|e| BenchError::Guest { step: "suite".into(), message: format!("running provium: {e}") })?;
    let took = t0.elapsed();
    if !out.status.success() {
        return Err(BenchError::Guest {
            step: format!("provium -j {jobs} {paths:?}"),
            message: format!("exited {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stdout)),
        });
    }
    Ok(took)
}

const ONE_VM_FILE: &str = r#"
local vm = provium:vm("one", "default"):boot()
test("runs", function(t)
  for i = 1, 20 do vm:run("true"):assert_ok() end
  vm:run("dd if=/dev/zero of=/tmp/z bs=1M count=32 2>/dev/null && sha256sum /tmp/z"):assert_ok()
end)
"#;

pub fn measure(examples: &Path) -> Result<Suite, BenchError> {
    let bin = provium_binary()?;
    let examples_files = std::fs::read_dir(examples)
        .map(|rd| rd.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".test.lua")).count())
        .unwrap_or(0);
    eprintln!("suite: examples/ with -j 1");
    let j1 = timed(&bin, 1, &[examples])?;
    eprintln!("suite: examples/ with -j 2");
    let j2 = timed(&bin, 2, &[examples])?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dir = std::env::temp_dir().join(format!("provium-bench-suite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::Guest { step: "suite".into(), message: e.to_string() })?;
    let files: Vec<PathBuf> = (0..cpus).map(|i| dir.join(format!("one{i}.test.lua"))).collect();
    for f in &files {
        std::fs::write(f, ONE_VM_FILE)
            .map_err(|e| BenchError::Guest { step: "suite".into(), message: e.to_string() })?;
    }
    eprintln!("suite: one one-VM file alone");
    let one = timed(&bin, 1, &[&files[0]]);
    eprintln!("suite: {cpus} one-VM files with -j {cpus}");
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let many = timed(&bin, cpus, &refs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Suite {
        examples_files,
        examples_j1_s: j1.as_secs_f64(),
        examples_j2_s: j2.as_secs_f64(),
        cpus,
        one_file_s: one?.as_secs_f64(),
        n_files_s: many?.as_secs_f64(),
    })
}

impl Suite {
    pub fn rows(&self) -> Vec<(String, String, String)> {
        vec![
            (
                "examples -j 1".into(),
                format!("{:.1} s", self.examples_j1_s),
                format!("`provium -q -j 1 examples/` ({} files), wall time", self.examples_files),
            ),
            ("examples -j 2".into(), format!("{:.1} s", self.examples_j2_s), "the same with 2 files at once".into()),
            (
                "-j 1 / -j 2".into(),
                format!("{:.2}×", self.examples_j1_s / self.examples_j2_s),
                "speed-up of the second file slot".into(),
            ),
            (
                "one one-VM file".into(),
                format!("{:.1} s", self.one_file_s),
                "boot, 20 execs, 32 MiB dd + sha256sum, alone".into(),
            ),
            (
                format!("{} such files", self.cpus),
                format!("{:.1} s", self.n_files_s),
                format!("with -j {} on {} cores", self.cpus, self.cpus),
            ),
            (
                "N files / one".into(),
                format!("{:.2}×", self.n_files_s / self.one_file_s),
                "1.0 would be perfect scaling".into(),
            ),
        ]
    }
}
