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
    pub snapshot: SnapshotRestore,
    pub round_trip: RoundTrip,
    pub file_io: FileIo,
    pub port_latency: PortLatency,
    pub stdout_stream: StreamIo,
    pub idle_memory: IdleMemory,
    /// With `--net`.
    pub network: Option<crate::network::Network>,
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
        Summary::of_ms(&samples.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>())
    }

    /// Like [`Summary::of`], for samples already in milliseconds (which,
    /// unlike a `Duration`, may be negative).
    pub fn of_ms(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut ms = samples.to_vec();
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
pub struct SnapshotRestore {
    pub what: &'static str,
    pub save: Summary,
    /// Restore → first command result.
    pub restore: Summary,
    /// Median restore over median cold boot (same run).
    pub restore_over_cold: f64,
    pub snapshot_bytes: u64,
    pub snapshot_allocated: u64,
    /// zstd-compressed fixture cache entry.
    pub cache_entry_bytes: u64,
    pub compress_ms: f64,
    pub extract_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct RoundTrip {
    pub what: &'static str,
    pub exec_true: Summary,
    pub ping: Summary,
    /// Median exec over median ping.
    pub exec_over_ping: f64,
    /// `vm:batch` of [`BATCH_OPS`] stats against the same stats one by one.
    pub batch: BatchRow,
}

/// How many ops the batch row ships.
pub const BATCH_OPS: usize = 20;

#[derive(Debug, Serialize)]
pub struct BatchRow {
    pub what: &'static str,
    /// [`BATCH_OPS`] `stat`s, one request each.
    pub single: Summary,
    /// The same `stat`s in one `Batch` request.
    pub batched: Summary,
    /// Median single over median batched.
    pub speedup: f64,
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
pub struct PortLatency {
    pub what: &'static str,
    pub trials: usize,
    /// How the guest's moment of opening was stamped.
    pub timestamp: &'static str,
    /// Guest stamp → host `wait_port` return.
    pub latency: Summary,
    /// Every trial's latency, in trial order.
    pub latency_samples_ms: Vec<f64>,
    /// Stamp → stamp of the next exec'd busybox applet: how far the stamp
    /// precedes `listen()` (so `latency` overstates by about this much).
    pub exec_gap: Summary,
    /// Median latency − median exec gap.
    pub latency_minus_gap_ms: f64,
    /// `wait_port` on a port already listening: one check plus the round trip.
    pub already_open: Summary,
    /// Half the tightest `get_time` round trip, per trial.
    pub offset_uncertainty: Summary,
    /// Spread (max − min) of the per-trial guest − host clock offsets.
    pub offset_drift_ms: f64,
    /// The guest's clocksource before → after the trials.
    pub clocksource: String,
    /// False when the guest ran on a jiffies clocksource: stamps then have
    /// tick resolution and drift, and the latency is not trustworthy.
    pub clock_ok: bool,
    /// Host 1-minute load and other users' QEMUs, before → after the trials.
    pub host_load: String,
    /// The VM the trials ran on (`warm`, or `port-N` when an earlier VM's
    /// guest had fallen back to a jiffies clocksource).
    pub vm: String,
    pub vms_tried: usize,
    /// The agent checks `/proc/net/tcp{,6}` this often.
    pub agent_poll_ms: f64,
    /// The baseline: median agent ping of this run.
    pub ping_median_ms: f64,
    pub latency_over_ping: f64,
}

#[derive(Debug, Serialize)]
pub struct StreamIo {
    pub what: &'static str,
    pub bytes: usize,
    /// Credit window of the stream, bytes.
    pub window: u32,
    /// Chunks (`Data` frames) the last timed run delivered.
    pub chunks: usize,
    pub stream_mib_s: f64,
    /// The baseline: `read_file` of the same file, same VM, interleaved.
    pub read_file_mib_s: f64,
    pub stream_best_ms: f64,
    pub read_file_best_ms: f64,
    pub stream_over_read_file: f64,
    pub verified: bool,
    pub slow_reader: SlowReader,
}

/// This process's memory while it streams the file slowly.
#[derive(Debug, Serialize)]
pub struct SlowReader {
    /// Sleep after each chunk.
    pub sleep_ms: f64,
    pub chunks: usize,
    pub secs: f64,
    /// Bytes over `secs`: below the unthrottled stream's rate means the
    /// reader, not the guest, set the pace (the window stayed full).
    pub mib_s: f64,
    /// VmRSS just before the stream (VmHWM reset to it via clear_refs).
    pub rss_before_mib: f64,
    /// VmHWM after the stream − VmRSS before.
    pub peak_growth_mib: f64,
    /// Largest VmRSS sampled after each chunk − VmRSS before.
    pub sampled_growth_mib: f64,
    /// Byte count and FNV-1a of what arrived equal what was written.
    pub checksum_ok: bool,
    /// The contrast: VmHWM growth during one read_file of the same file.
    pub read_file_peak_growth_mib: f64,
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
    /// `RssShmem`: guest RAM touched, when it lives in a `/dev/shm` file.
    pub shmem_mib: Vec<f64>,
    pub mean_shmem_mib: f64,
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
        let sr = &self.snapshot;
        let r = &self.round_trip;
        let f = &self.file_io;
        let m = &self.idle_memory;
        let p = &self.port_latency;
        let s = &self.stdout_stream;
        let sw = &s.slow_reader;
        let smib = s.bytes as f64 / (1 << 20) as f64;
        let mib = f.bytes as f64 / (1 << 20) as f64;
        let mut rows: Vec<(String, String, String)> = vec![
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
                "restore".into(),
                format!("{} median, {} p90", secs(sr.restore.median_ms), secs(sr.restore.p90_ms)),
                format!("vm:restore() → first exec `true`, {} trials (RAM image mapped copy-on-write)", sr.restore.n),
            ),
            (
                "  restore / cold".into(),
                format!("{:.1} %", sr.restore_over_cold * 100.0),
                "median restore over median cold boot, same run (target ≤ 10 %)".into(),
            ),
            (
                "  snapshot".into(),
                format!("{} median", secs(sr.save.median_ms)),
                format!(
                    "vm:snapshot() of the booted guest: {:.1} MiB on disk ({:.0} MiB with holes); fixture cache \
                     entry {:.1} MiB (zstd, {}), extracted in {}",
                    sr.snapshot_allocated as f64 / (1 << 20) as f64,
                    sr.snapshot_bytes as f64 / (1 << 20) as f64,
                    sr.cache_entry_bytes as f64 / (1 << 20) as f64,
                    secs(sr.compress_ms),
                    secs(sr.extract_ms)
                ),
            ),
            (
                "exec `true`".into(),
                format!("{} median, {} p90", secs(r.exec_true.median_ms), secs(r.exec_true.p90_ms)),
                format!("round trip of one exec of `true` on a booted VM, {} runs", r.exec_true.n),
            ),
            (
                format!("{BATCH_OPS} stats, batched"),
                format!(
                    "{} median vs {} one by one ({:.1}× faster)",
                    secs(r.batch.batched.median_ms),
                    secs(r.batch.single.median_ms),
                    r.batch.speedup
                ),
                format!(
                    "vm:batch of {BATCH_OPS} stats against the same stats as single requests, {} trials",
                    r.batch.single.n
                ),
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
                "port → wait_port".into(),
                format!("{} median, {} p90", secs(p.latency.median_ms), secs(p.latency.p90_ms)),
                format!(
                    "guest `nc -l` on a fresh port (stamped by adjtimex just before its exec) → host wait_port \
                     returns, {} trials on `{}`; clock offset ±{} (median), drift {} over the trials; guest \
                     clocksource {}{}; host {}",
                    p.trials,
                    p.vm,
                    secs(p.offset_uncertainty.median_ms),
                    secs(p.offset_drift_ms),
                    p.clocksource,
                    if p.clock_ok { "" } else { " — UNRELIABLE (jiffies resolution)" },
                    p.host_load
                ),
            ),
            (
                "  exec gap".into(),
                format!("{} median", secs(p.exec_gap.median_ms)),
                format!(
                    "stamp → next exec'd applet (how far the stamp precedes listen); latency − gap ≈ {}",
                    secs(p.latency_minus_gap_ms)
                ),
            ),
            (
                "  already open".into(),
                format!("{} median, {} p90", secs(p.already_open.median_ms), secs(p.already_open.p90_ms)),
                format!(
                    "wait_port on a listening port: one check + round trip; agent polls every {:.0} ms",
                    p.agent_poll_ms
                ),
            ),
            (
                "  latency / ping".into(),
                format!("{:.1}×", p.latency_over_ping),
                format!(
                    "median latency over median ping ({}); {:.1}× after subtracting the exec gap",
                    secs(p.ping_median_ms),
                    p.latency_minus_gap_ms / p.ping_median_ms
                ),
            ),
            (
                "stdout stream".into(),
                format!("{:.1} MiB/s", s.stream_mib_s),
                format!(
                    "{smib:.0} MiB `cat` → open_stream(Stdout, {} KiB window) → Eof, best of 3 ({}, {} chunks); \
                     bytes verified: {}",
                    s.window >> 10,
                    secs(s.stream_best_ms),
                    s.chunks,
                    if s.verified { "equal" } else { "MISMATCH" }
                ),
            ),
            (
                "  read_file".into(),
                format!("{:.1} MiB/s", s.read_file_mib_s),
                format!(
                    "same file, same VM, interleaved with the stream runs, best of 3 ({})",
                    secs(s.read_file_best_ms)
                ),
            ),
            (
                "  stream / read".into(),
                format!("{:.2}×", s.stream_over_read_file),
                "stream throughput over read_file throughput".into(),
            ),
            (
                "  slow reader".into(),
                format!("+{:.1} MiB peak RSS", sw.peak_growth_mib),
                format!(
                    "VmHWM growth of this process streaming {smib:.0} MiB with a {:.0} ms sleep per chunk \
                     ({} chunks, {:.1} s, {:.0} MiB/s; sampled VmRSS +{:.1} MiB); one read_file of it: +{:.1} MiB",
                    sw.sleep_ms, sw.chunks, sw.secs, sw.mib_s, sw.sampled_growth_mib, sw.read_file_peak_growth_mib
                ),
            ),
            (
                "idle QEMU RSS".into(),
                format!("{:.1} MiB mean ({:.1} anon, {:.1} shmem)", m.mean_rss_mib, m.mean_anon_mib, m.mean_shmem_mib),
                format!(
                    "VmRSS (RssAnon) of each of {} idle QEMUs after {:.0} s ({}); guest RAM in /dev/shm counts as \
                     shmem; guest memory configured: {} MiB",
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
        if let Some(n) = &self.network {
            let at = rows.len() - 1;
            rows.splice(at..at, n.rows());
        }
        let header = format!(
            "provium-bench — accel {} ({}); guest kernel {}; host {} × {}",
            h.accel, h.accel_reason, h.kernel_release, h.cpus, h.cpu
        );
        render(&header, rows)
    }
}

/// A titled three-column table: figure, value, what it measures.
pub fn render(header: &str, rows: Vec<(String, String, String)>) -> String {
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
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
