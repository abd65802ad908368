//! Network rows (`--net`): what a provium bridge's userspace switch costs
//! between two booted guests.
//!
//! Two VMs, `net-a` and `net-b`, are attached to two bridges: `lan` (NIC 0,
//! through the switch with its learning and rules) and `floor` (NIC 1),
//! whose switch ports are removed right after attaching so that a bare relay
//! thread in this process forwards datagrams port-a → nic-b and
//! port-b → nic-a with no learning, rules or queue: the floor is "the same
//! guests, the same QEMU dgram NICs, no switch logic". Throughput and ping
//! are measured on both, interleaved; latency and loss impairments on `lan`;
//! the switch thread's CPU time per GB forwarded; and the memory of a
//! bridge with 8 fake members (Unix datagram sockets, no VMs).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use provium::net::{Bridge, BridgeOpts, NetContext};
use provium::vm::{Vm, VmRef};
use provium_protocol::{ExecRequest, ExitStatus};
use serde::Serialize;

use crate::measure::{step, Bench, BenchError};

/// The network figures of one run.
#[derive(Debug, Serialize)]
pub struct Network {
    pub what: &'static str,
    pub trials: usize,
    pub tcp_bytes: u64,
    /// Best-of-trials throughput through the `lan` switch, MB/s (10^6).
    pub switch_mb_s: f64,
    /// The floor: same guests, NIC 1, bare relay thread, MB/s.
    pub floor_mb_s: f64,
    pub switch_over_floor: f64,
    /// Median of the per-trial `ping` averages, ms.
    pub switch_rtt_ms: f64,
    pub floor_rtt_ms: f64,
    pub rtt_added_ms: f64,
    pub latency_configured_ms: f64,
    pub latency_rtt_ms: f64,
    /// (RTT with latency − RTT without) / (2 × configured).
    pub latency_ratio: f64,
    pub loss_configured_pct: f64,
    pub loss_pings: u64,
    pub loss_ping_pct: f64,
    /// Switch `dropped_loss` over frames a→b the switch received.
    pub loss_switch_frames: u64,
    pub loss_switch_dropped: u64,
    pub loss_switch_pct: f64,
    pub switch_cpu_s: f64,
    pub switch_gb: f64,
    pub cpu_s_per_gb: f64,
    pub members_fake: usize,
    pub bridge_rss_kib: i64,
    pub bridge_hwm_kib: i64,
}

fn sh(cmd: &str, timeout: Duration) -> ExecRequest {
    ExecRequest {
        argv: vec!["sh".into(), "-c".into(), cmd.into()],
        timeout_ms: Some(timeout.as_millis() as u64),
        ..Default::default()
    }
}

/// Runs `cmd` in `vm`'s guest; its stdout, or an error with its stderr.
fn run(vm: &VmRef, what: &str, cmd: &str, timeout: Duration) -> Result<String, BenchError> {
    let out = step(what, vm.lock().expect("vm lock").exec(sh(cmd, timeout), b""))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status {
        ExitStatus::Exited(0) => Ok(stdout),
        status => Err(BenchError::Guest {
            step: what.to_string(),
            message: format!(
                "`{cmd}` ended with {status:?}: {}{}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
    }
}

fn guest_err(step: &str, message: String) -> BenchError {
    BenchError::Guest { step: step.to_string(), message }
}

/// The bare floor: two threads relaying datagrams between two NICs'
/// host ends, nothing else.
struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(a: &Vm, b: &Vm, nic: u8) -> Result<Relay, BenchError> {
        let end = |vm: &Vm| {
            let e = vm
                .nic_end(nic)
                .ok_or_else(|| guest_err("floor relay", format!("`{}` has no NIC {nic}", vm.name())))?
                .map_err(|e| guest_err("floor relay", e.to_string()))?;
            e.socket.set_nonblocking(false).map_err(|e| guest_err("floor relay", e.to_string()))?;
            e.socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| guest_err("floor relay", e.to_string()))?;
            Ok::<_, BenchError>(e)
        };
        let (ea, eb) = (end(a)?, end(b)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let pairs = [(clone(&ea.socket)?, clone(&eb.socket)?, eb.peer.clone()), (eb.socket, ea.socket, ea.peer)];
        for (from, to, peer) in pairs {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("bench-relay".into())
                    .spawn(move || relay(&from, &to, &peer, &stop))
                    .map_err(|e| guest_err("floor relay", e.to_string()))?,
            );
        }
        Ok(Relay { stop, threads })
    }
}

fn clone(s: &UnixDatagram) -> Result<UnixDatagram, BenchError> {
    s.try_clone().map_err(|e| guest_err("floor relay", e.to_string()))
}

fn relay(from: &UnixDatagram, to: &UnixDatagram, peer: &PathBuf, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match from.recv(&mut buf) {
            Ok(n) => {
                let _ = to.send_to(&buf[..n], peer);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Nanoseconds on CPU of thread `tid` of this process: schedstat, else
/// utime + stime of its stat (clock ticks, assumed 100 Hz).
fn thread_cpu_ns(tid: u32) -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")) {
        if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok()) {
            return Some(ns);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000)
}

/// Tids of this process whose comm starts with `provium-switch-`.
fn switch_tids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return vec![] };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        comm.starts_with("provium-switch-").then_some(tid)
    })
    .collect()
}

/// `ping` average RTT in ms and (transmitted, received).
fn ping(vm: &VmRef, ip: &str, args: &str, timeout: Duration) -> Result<(f64, u64, u64), BenchError> {
    let cmd = format!("ping {args} {ip}");
    let out = step("ping", vm.lock().expect("vm lock").exec(sh(&cmd, timeout), b""))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let num = |line: &str, word: &str| -> Option<u64> {
        let i = line.find(word)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    let stats = text.lines().find(|l| l.contains("packets transmitted"));
    let (tx, rx) = stats
        .and_then(|l| Some((num(l, "packets transmitted")?, num(l, "packets received")?)))
        .ok_or_else(|| guest_err("ping", format!("no statistics in `{cmd}` output: {text}")))?;
    let avg = text
        .lines()
        .find_map(|l| l.split_once("min/avg/max = "))
        .and_then(|(_, v)| v.split('/').nth(1)?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    Ok((avg, tx, rx))
}

/// One TCP transfer of `bytes` from `a` to `ip` (on `b`), host wall time
/// of the sender's exec; returns MB/s.
fn tcp(a: &VmRef, b: &VmRef, ip: &str, port: u16, bytes: u64) -> Result<f64, BenchError> {
    let agent_b = b.lock().expect("vm lock").agent_client().expect("booted");
    run(
        b,
        "start nc -l",
        &format!("rm -f /tmp/nc-{port}; (sleep 6{port} | nc -l -p {port} | wc -c >/tmp/nc-{port}) </dev/null >/dev/null 2>&1 &"),
        Duration::from_secs(10),
    )?;
    crate::measure::agent_step("wait_port", agent_b.wait_port(port, true, Duration::from_secs(10)))?;
    let count = bytes / 65536;
    let t = Instant::now();
    run(
        a,
        "nc send",
        &format!("dd if=/dev/zero bs=64k count={count} 2>/dev/null | nc {ip} {port}"),
        Duration::from_secs(120),
    )?;
    let took = t.elapsed();
    // The receiver exits when the sender closes (its stdin is a `sleep`
    // that never ends on its own: busybox nc quits on stdin EOF).
    let _ = crate::measure::agent_step("wait_port closed", agent_b.wait_port(port, false, Duration::from_secs(10)));
    let got = run(
        b,
        "nc count",
        &format!("pkill -f 'sleep 6{port}'; sleep 0.2; cat /tmp/nc-{port}"),
        Duration::from_secs(10),
    )?;
    if got.trim().parse::<u64>().ok() != Some(count * 65536) {
        return Err(guest_err("nc transfer", format!("receiver got {} bytes, sent {}", got.trim(), count * 65536)));
    }
    Ok((count * 65536) as f64 / 1e6 / took.as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn net_err(step: &str, e: impl std::fmt::Display) -> BenchError {
    guest_err(step, e.to_string())
}

/// Every network row; boots two VMs and shuts them down.
pub fn measure(bench: &Bench, trials: usize, tcp_mib: u64) -> Result<Network, BenchError> {
    let ctx = NetContext::new(1);
    let before: Vec<u32> = switch_tids();
    let lan = Bridge::new(&ctx, "lan", BridgeOpts::default()).map_err(|e| net_err("bridge lan", e))?;
    // The thread names itself once it runs: look a few times.
    let mut lan_tid = None;
    for _ in 0..50 {
        lan_tid = switch_tids().into_iter().find(|t| !before.contains(t));
        if lan_tid.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let floor = Bridge::new(&ctx, "floor", BridgeOpts::default()).map_err(|e| net_err("bridge floor", e))?;
    eprintln!("network: booting `net-a`, `net-b`");
    let a: VmRef = Arc::new(Mutex::new(bench.boot("net-a")?));
    let b: VmRef = Arc::new(Mutex::new(bench.boot("net-b")?));
    let members = [("net-a".to_string(), a.clone()), ("net-b".to_string(), b.clone())];
    lan.attach(&members).map_err(|e| net_err("attach lan", e))?;
    floor.attach(&members).map_err(|e| net_err("attach floor", e))?;
    // The floor: take both NIC-1 ports out of the floor switch and relay
    // between them directly.
    floor.switch().remove_port("net-a");
    floor.switch().remove_port("net-b");
    let relay = Relay::start(&a.lock().expect("vm lock"), &b.lock().expect("vm lock"), 1)?;
    let ip = |br: &Bridge| br.address_of("net-b").map(|a| a.to_string()).expect("addressed bridge");
    let (lan_b, floor_b) = (ip(&lan), ip(&floor));
    eprintln!("network: lan net-b = {lan_b}, floor net-b = {floor_b}");
    // Warm-up (ARP, code caches).
    for target in [&lan_b, &floor_b] {
        ping(&a, target, "-c 3 -i 0.2", Duration::from_secs(10))?;
    }

    let bytes = tcp_mib << 20;
    let (mut sw_best, mut fl_best) = (0f64, 0f64);
    let (mut cpu_ns, mut fwd_bytes) = (0u64, 0u64);
    let (mut sw_rtt, mut fl_rtt) = (vec![], vec![]);
    for i in 1..=trials {
        let c0 = lan_tid.and_then(thread_cpu_ns);
        let s0 = lan.switch_stats().received_bytes;
        let sw = tcp(&a, &b, &lan_b, 5001, bytes)?;
        let s1 = lan.switch_stats().received_bytes;
        let c1 = lan_tid.and_then(thread_cpu_ns);
        if c1.is_none() {
            eprintln!("network: warning: cannot read the CPU time of switch thread {lan_tid:?}");
        }
        if let (Some(c0), Some(c1)) = (c0, c1) {
            cpu_ns += c1 - c0;
            fwd_bytes += s1 - s0;
        }
        let fl = tcp(&a, &b, &floor_b, 5002, bytes)?;
        let (sr, _, _) = ping(&a, &lan_b, "-c 20 -i 0.05", Duration::from_secs(20))?;
        let (fr, _, _) = ping(&a, &floor_b, "-c 20 -i 0.05", Duration::from_secs(20))?;
        eprintln!("network {i}/{trials}: tcp switch {sw:.1} MB/s, floor {fl:.1} MB/s; ping switch {sr:.3} ms, floor {fr:.3} ms");
        sw_best = sw_best.max(sw);
        fl_best = fl_best.max(fl);
        sw_rtt.push(sr);
        fl_rtt.push(fr);
    }
    drop(relay);
    let (switch_rtt_ms, floor_rtt_ms) = (median(&mut sw_rtt), median(&mut fl_rtt));

    // Latency: whole-bridge 50 ms, each way.
    let lat = Duration::from_millis(50);
    lan.impair("bench", None, |i| i.latency = lat).map_err(|e| net_err("impair latency", e))?;
    let (lat_rtt, _, _) = ping(&a, &lan_b, "-c 10 -i 0.2", Duration::from_secs(30))?;
    lan.reset().map_err(|e| net_err("reset", e))?;
    let (base_rtt, _, _) = ping(&a, &lan_b, "-c 10 -i 0.2", Duration::from_secs(30))?;
    let latency_ratio = (lat_rtt - base_rtt) / (2.0 * lat.as_secs_f64() * 1e3);
    eprintln!("network: latency 50 ms: rtt {lat_rtt:.2} ms vs {base_rtt:.3} ms → {latency_ratio:.3}");

    // Loss: 10 % a → b only, so only requests are lost.
    lan.impair("bench", Some(("net-a", "net-b")), |i| i.loss_pct = 10.0).map_err(|e| net_err("impair loss", e))?;
    let st0 = lan.switch_stats();
    let ca0 = lan.counters("net-a");
    let pings = 1000;
    let (_, tx, rx) = ping(&a, &lan_b, &format!("-c {pings} -i 0.01 -W 1"), Duration::from_secs(300))?;
    let st1 = lan.switch_stats();
    let ca1 = lan.counters("net-a");
    lan.reset().map_err(|e| net_err("reset", e))?;
    let dropped = st1.dropped_loss - st0.dropped_loss;
    // Frames net-a sent into the switch (its guest's tx), all towards net-b.
    let frames = ca1.tx_packets - ca0.tx_packets;
    let loss_ping_pct = 100.0 * (tx - rx) as f64 / tx as f64;
    let loss_switch_pct = 100.0 * dropped as f64 / frames.max(1) as f64;
    eprintln!("network: loss 10 %: ping {tx} sent {rx} back ({loss_ping_pct:.2} %); switch dropped {dropped} of {frames} frames a→b ({loss_switch_pct:.2} %)");

    lan.close();
    floor.close();
    for vm in [&a, &b] {
        vm.lock().expect("vm lock").shutdown();
    }
    drop(members);

    let (members_fake, rss, hwm) = bridge_memory(&ctx)?;
    let gb = fwd_bytes as f64 / 1e9;
    Ok(Network {
        what: "two guests net-a → net-b; switch = bridge `lan` (userspace switch); floor = same guests over \
               NIC 1 whose host ends a bare relay thread joins (no learning, rules or queue)",
        trials,
        tcp_bytes: bytes,
        switch_mb_s: sw_best,
        floor_mb_s: fl_best,
        switch_over_floor: sw_best / fl_best,
        switch_rtt_ms,
        floor_rtt_ms,
        rtt_added_ms: switch_rtt_ms - floor_rtt_ms,
        latency_configured_ms: 50.0,
        latency_rtt_ms: lat_rtt,
        latency_ratio,
        loss_configured_pct: 10.0,
        loss_pings: tx,
        loss_ping_pct,
        loss_switch_frames: frames,
        loss_switch_dropped: dropped,
        loss_switch_pct,
        switch_cpu_s: cpu_ns as f64 / 1e9,
        switch_gb: gb,
        cpu_s_per_gb: if gb > 0.0 { cpu_ns as f64 / 1e9 / gb } else { f64::NAN },
        members_fake,
        bridge_rss_kib: rss,
        bridge_hwm_kib: hwm,
    })
}

/// RSS and VmHWM growth of this process while a bridge with 8 fake
/// members (bound Unix datagram sockets, no VMs) exists and floods a few
/// broadcast frames from each.
fn bridge_memory(ctx: &NetContext) -> Result<(usize, i64, i64), BenchError> {
    const N: usize = 8;
    let dir = std::env::temp_dir().join(format!("provium-bench-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| net_err("temp dir", e))?;
    let kib = |f: &str| crate::stream::self_status(f).map(|b| (b / 1024) as i64);
    crate::stream::reset_peak()?;
    let rss0 = kib("VmRSS")?;
    let br = Bridge::new(ctx, "mem8", BridgeOpts::default()).map_err(|e| net_err("bridge mem8", e))?;
    let mut peers = Vec::new();
    for i in 0..N {
        let (port, nic) = (dir.join(format!("port-{i}.sock")), dir.join(format!("nic-{i}.sock")));
        let _ = std::fs::remove_file(&port);
        let _ = std::fs::remove_file(&nic);
        let sw_end = UnixDatagram::bind(&port).map_err(|e| net_err("bind", e))?;
        let peer = UnixDatagram::bind(&nic).map_err(|e| net_err("bind", e))?;
        peer.set_nonblocking(true).map_err(|e| net_err("bind", e))?;
        br.switch().add_port(&format!("fake-{i}"), sw_end, nic.clone()).map_err(|e| net_err("add_port", e))?;
        peers.push((peer, port));
    }
    for round in 0..16u8 {
        for (i, (peer, port)) in peers.iter().enumerate() {
            let mut frame = vec![0u8; 1514];
            frame[..6].copy_from_slice(&[0xff; 6]);
            frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, i as u8, round]);
            frame[12..14].copy_from_slice(&[0x08, 0x00]);
            let _ = peer.send_to(&frame, port);
        }
    }
    // Let the switch flood them, then drain the peers.
    std::thread::sleep(Duration::from_millis(300));
    let rss1 = kib("VmRSS")?;
    let hwm1 = kib("VmHWM")?;
    let mut buf = vec![0u8; 2048];
    for (peer, _) in &peers {
        while peer.recv(&mut buf).is_ok() {}
    }
    br.close();
    drop(peers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((N, rss1 - rss0, hwm1 - rss0))
}

impl Network {
    /// The table rows (figure, value, what it measures).
    pub fn rows(&self) -> Vec<(String, String, String)> {
        let mib = self.tcp_bytes >> 20;
        vec![
            (
                "net tcp a→b".into(),
                format!("{:.1} MB/s", self.switch_mb_s),
                format!(
                    "busybox `dd bs=64k | nc` of {mib} MiB through the bridge switch, host wall time of the \
                     sender's exec, best of {}",
                    self.trials
                ),
            ),
            (
                "  floor".into(),
                format!("{:.1} MB/s", self.floor_mb_s),
                "same guests, same transfer over NIC 1: QEMU dgram host ends joined by a bare relay thread \
                 (port-a → nic-b, port-b → nic-a; no learning, rules or queue)"
                    .into(),
            ),
            (
                "  switch / floor".into(),
                format!("{:.2}×", self.switch_over_floor),
                "throughput through the switch over the floor's (target ≥ 0.9)".into(),
            ),
            (
                "net ping rtt".into(),
                format!("{:.3} ms", self.switch_rtt_ms),
                format!(
                    "guest `ping -c 20 -i 0.05` avg through the switch, median of {} runs; floor (relay) {:.3} ms",
                    self.trials, self.floor_rtt_ms
                ),
            ),
            (
                "  added".into(),
                format!("{:+.3} ms", self.rtt_added_ms),
                "switch RTT − floor RTT (target ≤ 0.1 ms)".into(),
            ),
            (
                "net latency 50 ms".into(),
                format!("{:.3}×", self.latency_ratio),
                format!(
                    "(RTT with 50 ms whole-bridge latency, {:.2} ms − RTT without) / (2 × 50 ms), ping -c 10 \
                     (target 1 ± 0.05)",
                    self.latency_rtt_ms
                ),
            ),
            (
                "net loss 10 %".into(),
                format!("{:.2} %", self.loss_ping_pct),
                format!(
                    "10 % loss a→b only, {} pings (-i 0.01): replies missing; switch dropped {} of {} frames a→b \
                     ({:.2} %) (target 10 ± 2)",
                    self.loss_pings, self.loss_switch_dropped, self.loss_switch_frames, self.loss_switch_pct
                ),
            ),
            (
                "net switch cpu".into(),
                format!("{:.2} s/GB", self.cpu_s_per_gb),
                format!(
                    "switch thread CPU (/proc/self/task/<tid>/stat utime+stime, 10 ms ticks) during the tcp runs, {:.3} s for {:.3} GB received by the switch",
                    self.switch_cpu_s, self.switch_gb
                ),
            ),
            (
                "net bridge memory".into(),
                format!("{:+} KiB RSS, {:+} KiB peak", self.bridge_rss_kib, self.bridge_hwm_kib),
                format!(
                    "VmRSS / VmHWM growth of this process for a bridge with {} FAKE members (bound Unix datagram \
                     sockets, no VMs), 16 broadcast frames flooded from each",
                    self.members_fake
                ),
            ),
        ]
    }
}
