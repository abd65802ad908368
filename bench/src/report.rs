//! The figures one bench run produced, and their two renderings: a table
//! for people (stdout) and JSON for machines (`--json`).
//!
//! This module only formats; it never measures. Every figure carries a
//! `what` sentence so that neither rendering leaves a number unexplained.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub host: Host,
    pub cold_boot: ColdBoot,
    pub round_trip: RoundTrip,
    pub file_io: FileIo,
    pub idle_memory: IdleMemory,
    pub leftover_qemu: Leftovers,
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub cpu: String,
    pub cpus: usize,
    pub accel: &'static str,
    pub accel_reason: String,
    pub kernel_release: String,
}

/// Median and minimum (or p90) of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub p90_ms: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = if n % 2 == 1 { ms[n / 2] } else { (ms[n / 2 - 1] + ms[n / 2]) / 2.0 };
        // Nearest-rank percentile.
        let p90 = ms[(n * 9).div_ceil(10).max(1) - 1];
        Some(Summary { n, median_ms: median, min_ms: ms[0], p90_ms: p90 })
    }
}

#[derive(Debug, Serialize)]
pub struct ColdBoot {
    pub what: &'static str,
    /// Spawn → first command result.
    pub cold: Summary,
    /// Guest uptime when the agent started (`Vm::last_boot.0`).
    pub kernel: Summary,
    /// Spawn → agent handshake (`Vm::last_boot.1`).
    pub handshake: Summary,
    /// Median cold boot over median kernel boot.
    pub cold_over_kernel: f64,
}

#[derive(Debug, Serialize)]
pub struct RoundTrip {
    pub what: &'static str,
    pub exec_true: Summary,
    pub ping: Summary,
    /// Median exec over median ping.
    pub exec_over_ping: f64,
}

#[derive(Debug, Serialize)]
pub struct FileIo {
    pub what: &'static str,
    pub bytes: usize,
    pub write_mib_s: f64,
    pub read_mib_s: f64,
    pub write_best_ms: f64,
    pub read_best_ms: f64,
    pub verified: bool,
}

#[derive(Debug, Serialize)]
pub struct IdleMemory {
    pub what: &'static str,
    pub vms: usize,
    pub idle_secs: f64,
    pub rss_mib: Vec<f64>,
    pub mean_rss_mib: f64,
    /// `RssAnon`: guest RAM touched, TCG code cache, QEMU's heap.
    pub anon_mib: Vec<f64>,
    pub mean_anon_mib: f64,
    pub configured_mib: u64,
}

#[derive(Debug, Serialize)]
pub struct Leftovers {
    pub what: &'static str,
    /// `qemu-system` processes this bench started that still run.
    pub ours: Vec<u32>,
    /// `qemu-system` processes started by someone else (not touched).
    pub others: Vec<u32>,
}

fn secs(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1e3)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// The human table: figure, value, what it measures.
    pub fn to_table(&self) -> String {
        let h = &self.host;
        let c = &self.cold_boot;
        let r = &self.round_trip;
        let f = &self.file_io;
        let m = &self.idle_memory;
        let mib = f.bytes as f64 / (1 << 20) as f64;
        let rows: Vec<(String, String, String)> = vec![
            (
                "cold boot".into(),
                format!("{} median, {} min", secs(c.cold.median_ms), secs(c.cold.min_ms)),
                format!("Vm::boot + first exec `true`, QEMU spawn → result, {} boots", c.cold.n),
            ),
            (
                "  kernel boot".into(),
                format!("{} median, {} min", secs(c.kernel.median_ms), secs(c.kernel.min_ms)),
                "guest uptime when the agent started (the kernel's own boot)".into(),
            ),
            (
                "  handshake".into(),
                format!("{} median, {} min", secs(c.handshake.median_ms), secs(c.handshake.min_ms)),
                "QEMU spawn → agent handshake done (host clock)".into(),
            ),
            (
                "  cold / kernel".into(),
                format!("{:.2}×", c.cold_over_kernel),
                "median cold boot over median kernel boot".into(),
            ),
            (
                "exec `true`".into(),
                format!("{} median, {} p90", secs(r.exec_true.median_ms), secs(r.exec_true.p90_ms)),
                format!("round trip of one exec of `true` on a booted VM, {} runs", r.exec_true.n),
            ),
            (
                "  agent ping".into(),
                format!("{} median, {} p90", secs(r.ping.median_ms), secs(r.ping.p90_ms)),
                format!("ping → reply, the transport floor, {} runs", r.ping.n),
            ),
            (
                "  exec / ping".into(),
                format!("{:.1}×", r.exec_over_ping),
                "median exec over median ping (cost of fork+exec+wait in the guest)".into(),
            ),
            (
                "write_file".into(),
                format!("{:.1} MiB/s", f.write_mib_s),
                format!("{mib:.0} MiB host → guest file, best of 3 ({})", secs(f.write_best_ms)),
            ),
            (
                "read_file".into(),
                format!("{:.1} MiB/s", f.read_mib_s),
                format!(
                    "{mib:.0} MiB guest file → host, best of 3 ({}); bytes verified: {}",
                    secs(f.read_best_ms),
                    if f.verified { "equal" } else { "MISMATCH" }
                ),
            ),
            (
                "idle QEMU RSS".into(),
                format!("{:.1} MiB mean ({:.1} anon)", m.mean_rss_mib, m.mean_anon_mib),
                format!(
                    "VmRSS (RssAnon) of each of {} idle QEMUs after {:.0} s ({}); guest memory configured: {} MiB",
                    m.vms,
                    m.idle_secs,
                    m.rss_mib
                        .iter()
                        .zip(&m.anon_mib)
                        .map(|(r, a)| format!("{r:.1} ({a:.1})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    m.configured_mib
                ),
            ),
            (
                "leftover QEMU".into(),
                format!("{} ours, {} others", self.leftover_qemu.ours.len(), self.leftover_qemu.others.len()),
                "`pgrep -f qemu-system` after every VM was shut down".into(),
            ),
        ];
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "provium-bench — accel {} ({}); guest kernel {}; host {} × {}",
            h.accel, h.accel_reason, h.kernel_release, h.cpus, h.cpu
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "{:w0$}  {:w1$}  what it measures", "figure", "value");
        let _ = writeln!(out, "{:-<w0$}  {:-<w1$}  {:-<16}", "", "", "");
        for (a, b, c) in rows {
            let pad0 = w0 - a.chars().count();
            let pad1 = w1 - b.chars().count();
            let _ = writeln!(out, "{a}{:pad0$}  {b}{:pad1$}  {c}", "", "");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median_min_and_nearest_rank_p90() {
        let d: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        let s = Summary::of(&d).unwrap();
        assert_eq!((s.n, s.median_ms, s.min_ms, s.p90_ms), (10, 5.5, 1.0, 9.0));
        let s = Summary::of(&[Duration::from_millis(3)]).unwrap();
        assert_eq!((s.median_ms, s.p90_ms), (3.0, 3.0));
        assert!(Summary::of(&[]).is_none());
    }
}
