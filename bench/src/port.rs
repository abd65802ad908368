//! Port-open → `wait_port` return latency: how long after a guest process
//! starts listening does the host's `AgentClient::wait_port` return.
//!
//! Each trial spawns `sh -c 'sleep 0.3; adjtimex > FILE; exec nc -l -p PORT'`
//! and calls `wait_port(PORT, open, 10 s)` at once; the host notes its
//! CLOCK_REALTIME when that returns. Busybox `date` has no `%N` in the
//! guest, so the guest's moment just before the listen is stamped with
//! busybox `adjtimex` (the kernel's CLOCK_REALTIME, 1 µs resolution). The
//! stamp is converted to host time with a guest − host clock offset taken
//! from the tightest of [`OFFSET_PROBES`] `get_time` round trips right after
//! the trial (uncertainty: half that round trip).
//!
//! The stamp precedes `listen()` by the exit of `adjtimex` plus the exec
//! and start-up of `nc` (the "exec gap"); it is measured separately in the
//! same way (`adjtimex > FILE; exec adjtimex`) so the latency can be
//! quoted with and without it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use provium::agent::AgentClient;
use provium_protocol::ExecRequest;

use crate::measure::{agent_step, BenchError};
use crate::report::{PortLatency, Summary};

/// The agent's poll period of `/proc/net/tcp{,6}` for `wait_port`
/// (`PORT_EVERY` in crates/provium-agent/src/waits.rs).
const AGENT_POLL_MS: f64 = 5.0;
/// `get_time` round trips per clock-offset estimate.
const OFFSET_PROBES: usize = 10;
/// Ports used: `FIRST_PORT`, `FIRST_PORT + 1`, ... (a fresh one per trial).
const FIRST_PORT: u16 = 40000;
const STAMP: &str = "/tmp/provium-bench-opened";
const WAIT: Duration = Duration::from_secs(10);

fn sh(script: String) -> ExecRequest {
    ExecRequest { argv: vec!["sh".into(), "-c".into(), script], ..Default::default() }
}

fn host_now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("host clock after 1970").as_nanos() as i64
}

/// Guest − host CLOCK_REALTIME offset and its uncertainty (half the
/// tightest round trip), both in ns.
fn clock_offset(a: &AgentClient) -> Result<(i64, i64), BenchError> {
    let mut best = (0, i64::MAX);
    for _ in 0..OFFSET_PROBES {
        let h0 = host_now_ns();
        let g = agent_step("get_time", a.get_time())?;
        let h1 = host_now_ns();
        let half = (h1 - h0) / 2;
        if half < best.1 {
            best = (g - (h0 + half), half);
        }
    }
    Ok(best)
}

/// CLOCK_REALTIME in ns from busybox `adjtimex` output: `time.tv_sec` and
/// `time.tv_usec`, the latter in ns when `status` has STA_NANO (0x2000).
fn parse_adjtimex(text: &str) -> Option<i64> {
    let field = |name: &str| -> Option<i64> {
        text.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.split_whitespace().last()? == name).then(|| value.split_whitespace().next()?.parse().ok())?
        })
    };
    let nano = field("status")? & 0x2000 != 0;
    let sub = field("time.tv_usec")?;
    Some(field("time.tv_sec")? * 1_000_000_000 + if nano { sub } else { sub * 1000 })
}

fn read_stamp(a: &AgentClient, what: &str) -> Result<i64, BenchError> {
    let text = agent_step(format!("read {STAMP}"), a.read_file(STAMP))?;
    let text = String::from_utf8_lossy(&text);
    parse_adjtimex(&text).ok_or_else(|| BenchError::Guest {
        step: what.to_string(),
        message: format!("cannot parse busybox adjtimex output {text:?}"),
    })
}

/// The guest kernel's clocksource. On `jiffies`/`refined-jiffies` (the
/// kernel gave up on the TSC) guest stamps have tick resolution and drift,
/// so the latency cannot be trusted.
pub fn clocksource(a: &AgentClient) -> Result<String, BenchError> {
    const CS: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
    let text = agent_step(format!("read {CS}"), a.read_file(CS))?;
    Ok(String::from_utf8_lossy(&text).trim().to_string())
}

/// The host's 1-minute load average and how many QEMUs other than ours
/// run: the port latency depends on how promptly QEMU's vCPU gets a core.
fn host_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").ok();
    let load = load.as_deref().and_then(|l| l.split_whitespace().next()).unwrap_or("?").to_string();
    format!("load {load}, {} other QEMUs", crate::measure::leftover_qemu().others.len())
}

/// Kernel messages about clocksources and the TSC, for the progress log.
fn clock_messages(a: &AgentClient) -> String {
    let req = sh("dmesg | grep -i -E 'clocksource|tsc|watchdog|skew' | tail -6".into());
    a.exec(req, b"").map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// `trials` port-open → `wait_port` return latencies on a booted VM, the
/// exec gap, and `wait_port` on a port already open; `ping_median_ms` is
/// the baseline measured in the same run.
pub fn measure(a: &AgentClient, trials: usize, ping_median_ms: f64) -> Result<PortLatency, BenchError> {
    let clocksource_before = clocksource(a)?;
    let load_before = host_load();
    // The exec gap: stamp, exit, exec of the next busybox applet, stamp.
    let mut gap = Vec::with_capacity(trials);
    for _ in 0..trials {
        let out = agent_step("exec gap", a.exec(sh(format!("adjtimex > {STAMP}; exec adjtimex")), b""))?;
        let first = read_stamp(a, "exec gap")?;
        let second = parse_adjtimex(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| BenchError::Guest {
            step: "exec gap".into(),
            message: format!("cannot parse busybox adjtimex output {:?}", String::from_utf8_lossy(&out.stdout)),
        })?;
        gap.push((second - first) as f64 / 1e6);
    }
    agent_step("unlink", a.unlink(STAMP))?;

    let (mut latency, mut immediate, mut uncertainty, mut offsets) = (vec![], vec![], vec![], vec![]);
    for i in 0..trials {
        let port = FIRST_PORT + i as u16;
        let script = format!("sleep 0.3; adjtimex > {STAMP}; exec nc -l -p {port}");
        let spawned = host_now_ns();
        let (handle, _pid) = agent_step("spawn nc", a.spawn(sh(script), false))?;
        agent_step(format!("wait_port {port}"), a.wait_port(port, true, WAIT))?;
        let returned = host_now_ns();
        // Already listening: one check of /proc/net/tcp plus the round trip.
        let t = Instant::now();
        agent_step(format!("wait_port {port} (already open)"), a.wait_port(port, true, WAIT))?;
        immediate.push(t.elapsed());
        let (offset, unc) = clock_offset(a)?;
        let opened = read_stamp(a, "port trial")? - offset;
        if opened < spawned - unc {
            return Err(BenchError::Guest {
                step: format!("port trial {}", i + 1),
                message: format!("guest stamp is {} ms before the spawn: stale file?", (spawned - opened) as f64 / 1e6),
            });
        }
        agent_step("release nc", a.release(handle))?;
        agent_step("unlink", a.unlink(STAMP))?;
        latency.push((returned - opened) as f64 / 1e6);
        uncertainty.push(unc as f64 / 1e6);
        offsets.push(offset as f64 / 1e6);
    }
    let clocksource_after = clocksource(a)?;
    let host = format!("{load_before} → {}", host_load());
    let clock_ok = [&clocksource_before, &clocksource_after].iter().all(|c| !c.contains("jiffies"));
    if !clock_ok || clocksource_before != clocksource_after {
        eprintln!(
            "port latency: WARNING: guest clocksource {clocksource_before} → {clocksource_after}; kernel says:\n{}",
            clock_messages(a)
        );
    }
    let samples = latency.clone();
    let latency = Summary::of_ms(&latency).expect("trials >= 1");
    let gap = Summary::of_ms(&gap).expect("trials >= 1");
    let uncertainty = Summary::of_ms(&uncertainty).expect("trials >= 1");
    let drift = offsets.iter().cloned().fold(f64::MIN, f64::max) - offsets.iter().cloned().fold(f64::MAX, f64::min);
    eprintln!(
        "port latency: median {:.2} ms, p90 {:.2} ms; exec gap median {:.2} ms; offset ±{:.3} ms (median), drift {:.3} ms",
        latency.median_ms, latency.p90_ms, gap.median_ms, uncertainty.median_ms, drift
    );
    Ok(PortLatency {
        what: "guest process starts listening on a fresh TCP port (stamped in the guest with busybox \
               adjtimex just before `exec nc -l -p PORT`) → the host's AgentClient::wait_port returns; \
               guest stamps mapped to host time by a per-trial clock offset from the tightest of 10 \
               get_time round trips",
        trials,
        timestamp: "busybox adjtimex (guest CLOCK_REALTIME, 1 µs resolution); busybox date has no %N",
        latency,
        latency_samples_ms: samples,
        exec_gap: gap,
        latency_minus_gap_ms: latency.median_ms - gap.median_ms,
        already_open: Summary::of(&immediate).expect("trials >= 1"),
        offset_uncertainty: uncertainty,
        offset_drift_ms: drift,
        clocksource: format!("{clocksource_before} → {clocksource_after}"),
        clock_ok,
        host_load: host,
        vm: String::new(),
        vms_tried: 1,
        agent_poll_ms: AGENT_POLL_MS,
        ping_median_ms,
        latency_over_ping: latency.median_ms / ping_median_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "    mode:         0
-o  offset:       0 us
    status:       64 (UNSYNC)
-t  tick:         10000 us
    time.tv_sec:  1795430691
    time.tv_usec: 679662
    return value: 5 (clock not synchronized)
";

    #[test]
    fn adjtimex_microseconds_and_nanoseconds() {
        assert_eq!(parse_adjtimex(OUT), Some(1_795_430_691_679_662_000));
        let nano = OUT.replace("64 (UNSYNC)", "8256 (UNSYNC NANO)");
        assert_eq!(parse_adjtimex(&nano), Some(1_795_430_691_000_679_662));
        assert_eq!(parse_adjtimex("garbage"), None);
    }
}
