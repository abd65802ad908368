//! The pool's size: `--mem` (default 80 % of the host's `MemTotal`, 8 GiB
//! if it cannot be read), `--cpus` (default the online CPUs, 8 if unknown)
//! times `--cpu-overcommit` (4.0, clamped to 0.5–8.0, rounded, at least 1).
//!
//! The reference's default overcommit is 1.0; provium's is 4.0. A vCPU is a
//! host thread that idles most of the time, so on a 2-core CI machine 1.0
//! would refuse a single 4-vCPU VM and deadlock any lab of three one-vCPU
//! VMs, while such a run goes fine, only slower. Memory is the budget that
//! runs out; `--cpu-overcommit 1` gives the strict behaviour.

use super::ResourceAmount;
use crate::units;

/// What memory the pool has when `/proc/meminfo` cannot be read.
pub const FALLBACK_MEMORY: u64 = 8 << 30;
/// What vCPUs the pool has when the online CPUs are unknown.
pub const FALLBACK_CPUS: u32 = 8;
/// `--cpu-overcommit` when none is given.
pub const DEFAULT_OVERCOMMIT: f64 = 4.0;
/// The sane range of `--cpu-overcommit`.
pub const OVERCOMMIT_RANGE: (f64, f64) = (0.5, 8.0);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BudgetError {
    #[error("--mem: {0}")]
    Mem(units::UnitError),
    #[error("--mem: the pool needs some memory (got `{0}`)")]
    MemZero(String),
    #[error("--cpus: the pool needs at least one CPU")]
    CpusZero,
    #[error("--cpu-overcommit: `{0}` is not a number")]
    Overcommit(f64),
}

/// The pool's total, and the lines to tell the user about it (a clamp).
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub total: ResourceAmount,
    pub notes: Vec<String>,
}

/// `--mem`: bytes, or a number with `K`/`M`/`G`/`T` (binary, any case).
pub fn parse_mem(text: &str) -> Result<u64, BudgetError> {
    match units::parse_size(text).map_err(BudgetError::Mem)? {
        0 => Err(BudgetError::MemZero(text.to_string())),
        n => Ok(n),
    }
}

/// 80 % of `MemTotal` in `meminfo` (the text of `/proc/meminfo`).
pub fn default_memory(meminfo: Option<&str>) -> u64 {
    let total_kib = meminfo.and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    match total_kib {
        Some(kib) if kib > 0 => kib * 1024 / 5 * 4,
        _ => FALLBACK_MEMORY,
    }
}

/// `--cpu-overcommit` within its sane range, and the note saying so when
/// it was not.
pub fn clamp_overcommit(f: f64) -> Result<(f64, Option<String>), BudgetError> {
    if !f.is_finite() {
        return Err(BudgetError::Overcommit(f));
    }
    let (lo, hi) = OVERCOMMIT_RANGE;
    let clamped = f.clamp(lo, hi);
    let note = (clamped != f)
        .then(|| format!("provium: --cpu-overcommit {f} clamped to {clamped} (sane range {lo:.1}–{hi:.1})"));
    Ok((clamped, note))
}

/// The pool's vCPUs: `cpus × overcommit`, rounded, at least 1.
pub fn pool_cpus(cpus: u32, overcommit: f64) -> u32 {
    ((f64::from(cpus) * overcommit).round() as u32).max(1)
}

/// The pool of a run, from its flags and the host.
pub fn budget(mem: Option<&str>, cpus: Option<u32>, overcommit: f64) -> Result<Budget, BudgetError> {
    let memory_bytes = match mem {
        Some(text) => parse_mem(text)?,
        None => default_memory(std::fs::read_to_string("/proc/meminfo").ok().as_deref()),
    };
    let cpus = match cpus {
        Some(0) => return Err(BudgetError::CpusZero),
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(FALLBACK_CPUS),
    };
    let (overcommit, note) = clamp_overcommit(overcommit)?;
    let total = ResourceAmount { memory_bytes, cpus: pool_cpus(cpus, overcommit) };
    Ok(Budget { total, notes: note.into_iter().collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_mem_flag_parses_suffixes_and_bare_bytes() {
        assert_eq!(parse_mem("512M"), Ok(512 << 20));
        assert_eq!(parse_mem("2g"), Ok(2 << 30));
        assert_eq!(parse_mem("1T"), Ok(1 << 40));
        assert_eq!(parse_mem("64k"), Ok(64 << 10));
        assert_eq!(parse_mem("1048576"), Ok(1 << 20));
        assert_eq!(parse_mem("0"), Err(BudgetError::MemZero("0".into())));
        let e = parse_mem("lots").unwrap_err();
        assert!(e.to_string().starts_with("--mem: cannot parse size `lots`"), "{e}");
        assert!(parse_mem("1.5G").is_err());
    }

    #[test]
    fn pool_default_memory_is_80_percent_of_memtotal() {
        let meminfo = "MemTotal:       10485760 kB\nMemFree:         1000 kB\nMemAvailable:    9000000 kB\n";
        assert_eq!(default_memory(Some(meminfo)), 8 << 30);
        assert_eq!(default_memory(None), FALLBACK_MEMORY);
        assert_eq!(default_memory(Some("MemFree: 5 kB\n")), FALLBACK_MEMORY);
    }

    #[test]
    fn pool_default_overcommit_lets_two_cores_hold_a_four_vcpu_vm_and_a_three_vm_lab() {
        let b = budget(Some("4G"), Some(2), DEFAULT_OVERCOMMIT).unwrap();
        assert_eq!(b.total.cpus, 8);
        assert!(b.notes.is_empty());
        assert_eq!(budget(Some("4G"), Some(2), 1.0).unwrap().total.cpus, 2, "--cpu-overcommit 1 is strict");
    }

    #[test]
    fn pool_overcommit_is_clamped_with_a_note_and_rounded() {
        assert_eq!(clamp_overcommit(1.0), Ok((1.0, None)));
        assert_eq!(clamp_overcommit(2.5), Ok((2.5, None)));
        let (f, note) = clamp_overcommit(20.0).unwrap();
        assert_eq!(f, 8.0);
        assert_eq!(note.as_deref(), Some("provium: --cpu-overcommit 20 clamped to 8 (sane range 0.5–8.0)"));
        let (f, note) = clamp_overcommit(0.1).unwrap();
        assert_eq!(f, 0.5);
        assert_eq!(note.as_deref(), Some("provium: --cpu-overcommit 0.1 clamped to 0.5 (sane range 0.5–8.0)"));
        assert!(clamp_overcommit(f64::NAN).is_err());
        assert_eq!(pool_cpus(2, 1.0), 2);
        assert_eq!(pool_cpus(3, 1.5), 5, "4.5 rounds up");
        assert_eq!(pool_cpus(1, 0.5), 1, "at least one");
        assert_eq!(pool_cpus(4, 8.0), 32);
    }

    #[test]
    fn pool_budget_from_flags() {
        let b = budget(Some("3G"), Some(2), 1.5).unwrap();
        assert_eq!(b, Budget { total: ResourceAmount { memory_bytes: 3 << 30, cpus: 3 }, notes: vec![] });
        let b = budget(Some("1G"), Some(4), 10.0).unwrap();
        assert_eq!(b.total.cpus, 32);
        assert_eq!(b.notes.len(), 1);
        assert_eq!(budget(Some("1G"), Some(0), 1.0), Err(BudgetError::CpusZero));
        let default = budget(None, None, 1.0).unwrap();
        assert!(default.total.memory_bytes > 0 && default.total.cpus >= 1);
    }
}
