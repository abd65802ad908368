//! Snapshot and restore: what a snapshot of a booted default guest costs
//! (time, file size, cache entry size), and restore → first command result
//! against a cold boot → first command result measured in the same run.

use std::time::{Duration, Instant};

use provium::cleanup::ScratchDir;
use provium::fixture::Store;

use crate::measure::{ms, step, Bench, BenchError};
use crate::report::{SnapshotRestore, Summary};

impl Bench {
    /// Boots one VM, snapshots it `trials` times, and restores it `trials`
    /// times, each restore timed to the result of its first `true`.
    pub fn snapshot_restore(&self, trials: usize, cold_median_ms: f64) -> Result<SnapshotRestore, BenchError> {
        let scratch = ScratchDir::new("bench-snapshots").map_err(BenchError::SelfStatus)?;
        let path = scratch.path().join("guest.snap");
        eprintln!("snapshot/restore: booting `snap`");
        let mut vm = self.boot("snap")?;
        Self::run_true(&mut vm, "exec before the snapshot")?;
        let mut saves = Vec::new();
        for _ in 0..trials {
            let start = Instant::now();
            step("snapshot", vm.snapshot(&path))?;
            saves.push(start.elapsed());
        }
        let md = std::fs::metadata(&path).map_err(BenchError::SelfStatus)?;
        let (bytes, allocated) = (md.len(), std::os::unix::fs::MetadataExt::blocks(&md) * 512);
        let mut restores = Vec::new();
        for i in 1..=trials {
            vm.shutdown();
            let start = Instant::now();
            step("restore", vm.restore(&path))?;
            Self::run_true(&mut vm, "first exec after restore")?;
            let took = start.elapsed();
            eprintln!("restore {i}/{trials}: {}", ms(took));
            restores.push(took);
        }
        vm.shutdown();

        // The fixture cache's view of the same snapshot: compressed entry
        // size, and the once-per-run extraction a restore from it needs.
        let store = Store::open(scratch.path().join("cache"))
            .map_err(|e| BenchError::Guest { step: "fixture store".into(), message: e.to_string() })?;
        let cache_err = |e: provium::fixture::StoreError| BenchError::Guest {
            step: "fixture store".into(),
            message: e.to_string(),
        };
        let start = Instant::now();
        let compressed = store.install_vm("bench", &path).map_err(cache_err)?;
        let compress = start.elapsed();
        let entry = store.lookup("bench").expect("just installed");
        let start = Instant::now();
        store.extract_vm(&entry.path, &scratch.path().join("extracted.snap")).map_err(cache_err)?;
        let extract = start.elapsed();

        let restore = Summary::of(&restores).expect("at least one trial");
        Ok(SnapshotRestore {
            what: "vm:snapshot() of a booted default guest (512 MiB); vm:restore() → result of the first exec of \
                   `true`, against cold boot → first exec in the same run",
            restore_over_cold: restore.median_ms / cold_median_ms,
            save: Summary::of(&saves).expect("at least one trial"),
            restore,
            snapshot_bytes: bytes,
            snapshot_allocated: allocated,
            cache_entry_bytes: compressed,
            compress_ms: dur_ms(compress),
            extract_ms: dur_ms(extract),
        })
    }
}

fn dur_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
