//! The measurements: each boots what it needs, times it, and shuts every VM
//! down before returning (a [`Vm`] also shuts down on drop, so an early
//! error leaks nothing).
//!
//! Progress goes to stderr; results are returned as [`crate::report`] types
//! and never printed here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use provium::agent::AgentError;
use provium::image::Images;
use provium::vm::{BootOpts, Vm, VmError, DEFAULT_MEMORY};
use provium::vmm::Accel;
use provium_protocol::{BatchOp, ExecRequest};

use crate::report::{ColdBoot, FileIo, IdleMemory, Leftovers, PortLatency, RoundTrip, StreamIo, Summary};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot prepare the default guest")]
    Prepare(#[source] provium::image::ImageError),
    #[error("{step} failed")]
    Vm {
        step: String,
        /// Boxed: `VmError` is large and this error travels through every
        /// measurement's `Result`.
        #[source]
        source: Box<VmError>,
    },
    #[error("`true` exited with {status:?} during {step}")]
    CommandFailed { step: String, status: provium_protocol::ExitStatus },
    #[error("{what} returned {got} bytes that differ from the {want} written (first difference at byte {at:?})")]
    Mismatch { what: &'static str, got: usize, want: usize, at: Option<usize> },
    #[error("{step} failed")]
    Agent {
        step: String,
        #[source]
        source: Box<AgentError>,
    },
    #[error("{step}: {message}")]
    Guest { step: String, message: String },
    #[error("cannot read or reset this process's memory figures in /proc/self")]
    SelfStatus(#[source] std::io::Error),
    #[error("cannot read the RSS of QEMU pid {pid} from /proc")]
    Rss {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu pid unknown for a booted VM `{0}`")]
    NoPid(String),
    #[error("this bench left QEMU running: pids {0:?}")]
    Leaked(Vec<u32>),
}

/// VMs tried for the port latency before measuring on a jiffies clock anyway.
const PORT_VMS: usize = 3;

/// The figures measured on the warm VM (the port latency possibly on
/// another, see [`Bench::port_latency`]).
pub struct Warm {
    pub round_trip: RoundTrip,
    pub file_io: FileIo,
    pub port: PortLatency,
    pub stream: StreamIo,
}

/// What every measurement needs to boot a VM.
pub struct Bench {
    pub images: Arc<Images>,
    pub accel: Accel,
}

pub(crate) fn step<T>(step: impl Into<String>, r: Result<T, VmError>) -> Result<T, BenchError> {
    r.map_err(|source| BenchError::Vm { step: step.into(), source: Box::new(source) })
}

/// Like [`step`], for calls made on an [`AgentClient`] directly.
pub fn agent_step<T>(step: impl Into<String>, r: Result<T, AgentError>) -> Result<T, BenchError> {
    r.map_err(|source| BenchError::Agent { step: step.into(), source: Box::new(source) })
}

fn exec_true() -> ExecRequest {
    ExecRequest { argv: vec!["true".into()], ..Default::default() }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

impl Bench {
    pub(crate) fn vm(&self, name: &str) -> Vm {
        Vm::new(name, "default", BootOpts::default(), self.images.clone(), self.accel)
    }

    pub(crate) fn boot(&self, name: &str) -> Result<Vm, BenchError> {
        let mut vm = self.vm(name);
        step(format!("boot of `{name}`"), vm.boot(&BootOpts::default()))?;
        Ok(vm)
    }

    pub(crate) fn run_true(vm: &mut Vm, what: &str) -> Result<(), BenchError> {
        let out = step(what, vm.exec(exec_true(), b""))?;
        match out.status {
            provium_protocol::ExitStatus::Exited(0) => Ok(()),
            status => Err(BenchError::CommandFailed { step: what.to_string(), status }),
        }
    }

    /// Spawn → first command result, `boots` times.
    pub fn cold_boot(&self, boots: usize) -> Result<ColdBoot, BenchError> {
        let (mut cold, mut kernel, mut handshake) = (vec![], vec![], vec![]);
        for i in 1..=boots {
            let name = format!("cold-{i}");
            let start = Instant::now();
            let mut vm = self.vm(&name);
            step(format!("boot of `{name}`"), vm.boot(&BootOpts::default()))?;
            Self::run_true(&mut vm, "first exec")?;
            let took = start.elapsed();
            let (k, h) = vm.last_boot.expect("a booted VM records its boot times");
            vm.shutdown();
            eprintln!("cold boot {i}/{boots}: {} (kernel {}, handshake {})", ms(took), ms(k), ms(h));
            cold.push(took);
            kernel.push(k);
            handshake.push(h);
        }
        let cold = Summary::of(&cold).expect("at least one boot");
        let kernel = Summary::of(&kernel).expect("at least one boot");
        Ok(ColdBoot {
            what: "QEMU spawn → result of the first exec of `true` (Vm::boot + exec), \
                   beside the guest kernel's own boot time (uptime when the agent started)",
            cold_over_kernel: cold.median_ms / kernel.median_ms,
            cold,
            kernel,
            handshake: Summary::of(&handshake).expect("at least one boot"),
        })
    }

    /// Exec and ping round trips on one booted VM, then on the same VM:
    /// 64 MiB file I/O, port-open → `wait_port` latency (ping as its
    /// baseline) and stdout stream throughput (read_file as its baseline).
    pub fn warm(&self, runs: usize, file_bytes: usize, port_trials: usize) -> Result<Warm, BenchError> {
        eprintln!("round trips: booting `warm`");
        let mut vm = self.boot("warm")?;
        for _ in 0..5 {
            Self::run_true(&mut vm, "warm-up exec")?;
            step("warm-up ping", vm.ping())?;
        }
        let mut exec = Vec::with_capacity(runs);
        let mut ping = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            Self::run_true(&mut vm, "exec round trip")?;
            exec.push(t.elapsed());
        }
        for _ in 0..runs {
            let t = Instant::now();
            step("ping round trip", vm.ping())?;
            ping.push(t.elapsed());
        }
        let exec = Summary::of(&exec).expect("runs >= 1");
        let ping = Summary::of(&ping).expect("runs >= 1");
        eprintln!(
            "round trips: exec median {:.2} ms, ping median {:.2} ms over {runs} runs",
            exec.median_ms, ping.median_ms
        );
        let batch = batch_row(&mut vm, runs.min(50))?;
        let rt = RoundTrip {
            what: "host-side wall time of one exec of `true` on a booted VM, and of one \
                   agent ping (request → reply, no guest process)",
            exec_over_ping: exec.median_ms / ping.median_ms,
            exec_true: exec,
            ping,
            batch,
        };
        let io = file_io(&mut vm, file_bytes)?;
        let agent = vm.agent_client().expect("a booted VM has an agent connection");
        eprintln!("stdout stream: {} MiB", file_bytes >> 20);
        let stream = crate::stream::measure(&agent, file_bytes)?;
        let port = self.port_latency(vm, port_trials, rt.ping.median_ms)?;
        Ok(Warm { round_trip: rt, file_io: io, port, stream })
    }

    /// Port latency on `warm` if its guest still runs on its TSC, else on
    /// a fresh VM that does (guest stamps need a fine clock; under TCG on
    /// a busy host the guest's clocksource watchdog may switch to jiffies).
    fn port_latency(&self, warm: Vm, trials: usize, ping_median_ms: f64) -> Result<PortLatency, BenchError> {
        let mut vm = warm;
        for attempt in 1..=PORT_VMS {
            let agent = vm.agent_client().expect("a booted VM has an agent connection");
            let cs = crate::port::clocksource(&agent)?;
            if !cs.contains("jiffies") || attempt == PORT_VMS {
                eprintln!("port latency: {trials} trials on `{}` (guest clocksource {cs})", vm.name());
                let mut port = crate::port::measure(&agent, trials, ping_median_ms)?;
                port.vm = vm.name().to_string();
                port.vms_tried = attempt;
                drop(agent);
                vm.shutdown();
                return Ok(port);
            }
            eprintln!("port latency: `{}` runs on clocksource {cs}; booting another VM", vm.name());
            drop(agent);
            vm.shutdown();
            vm = self.boot(&format!("port-{}", attempt + 1))?;
            Self::run_true(&mut vm, "port VM exec")?;
        }
        unreachable!("the last attempt always measures")
    }

    /// Boots `n` VMs one after another, lets them idle, reads each QEMU's
    /// VmRSS.
    pub fn idle_memory(&self, n: usize, idle: Duration) -> Result<IdleMemory, BenchError> {
        let mut vms = Vec::with_capacity(n);
        for i in 1..=n {
            eprintln!("idle memory: booting `idle-{i}` ({i}/{n})");
            let mut vm = self.boot(&format!("idle-{i}"))?;
            Self::run_true(&mut vm, "idle VM exec")?;
            vms.push(vm);
        }
        eprintln!("idle memory: {n} VMs up; idling {idle:?}");
        // A deliberate idle period, not a wait for a condition.
        std::thread::sleep(idle);
        let (mut rss, mut anon, mut shmem) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for vm in &vms {
            let pid = vm.qemu_pid().ok_or_else(|| BenchError::NoPid(vm.name().to_string()))?;
            rss.push(status_kib(pid, "VmRSS")? as f64 / 1024.0);
            anon.push(status_kib(pid, "RssAnon")? as f64 / 1024.0);
            shmem.push(status_kib(pid, "RssShmem")? as f64 / 1024.0);
        }
        for mut vm in vms {
            vm.shutdown();
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        eprintln!("idle memory: VmRSS {rss:.1?} MiB, RssAnon {anon:.1?} MiB, RssShmem {shmem:.1?} MiB");
        Ok(IdleMemory {
            what: "VmRSS of each QEMU process with an idle booted guest (host memory per VM), \
                   its anonymous part RssAnon (QEMU's heap, the TCG code cache) and RssShmem (the guest \
                   RAM the guest touched, in its /dev/shm file; VmRSS also counts the mapped vmlinux, page \
                   cache shared by all VMs), beside the guest memory configured",
            vms: n,
            idle_secs: idle.as_secs_f64(),
            mean_rss_mib: mean(&rss),
            mean_anon_mib: mean(&anon),
            mean_shmem_mib: mean(&shmem),
            rss_mib: rss,
            anon_mib: anon,
            shmem_mib: shmem,
            configured_mib: DEFAULT_MEMORY >> 20,
        })
    }
}

/// Writes then reads back `bytes` of pseudo-random data three times each;
/// keeps the best time and checks every read against what was written.
fn file_io(vm: &mut Vm, bytes: usize) -> Result<FileIo, BenchError> {
    const PATH: &str = "/tmp/provium-bench.bin";
    step("mkdir /tmp", vm.mkdir("/tmp", true, 0o1777))?;
    let data = pseudo_random(bytes);
    let mib = bytes as f64 / (1 << 20) as f64;
    let (mut best_w, mut best_r) = (Duration::MAX, Duration::MAX);
    for i in 1..=3 {
        let t = Instant::now();
        step("write_file", vm.write_file(PATH, &data, 0o644))?;
        let w = t.elapsed();
        let t = Instant::now();
        let back = step("read_file", vm.read_file(PATH))?;
        let r = t.elapsed();
        if back != data {
            return Err(BenchError::Mismatch {
                what: "read_file",
                got: back.len(),
                want: data.len(),
                at: back.iter().zip(&data).position(|(a, b)| a != b),
            });
        }
        eprintln!(
            "file i/o {i}/3: write {:.1} MiB/s, read {:.1} MiB/s (verified)",
            mib / w.as_secs_f64(),
            mib / r.as_secs_f64()
        );
        best_w = best_w.min(w);
        best_r = best_r.min(r);
    }
    step("unlink", vm.unlink(PATH))?;
    Ok(FileIo {
        what: "write_file / read_file of one file of pseudo-random bytes in the guest's /tmp \
               (initramfs, RAM-backed), host wall time, best of 3; every read compared to the data written",
        bytes,
        write_mib_s: mib / best_w.as_secs_f64(),
        read_mib_s: mib / best_r.as_secs_f64(),
        write_best_ms: best_w.as_secs_f64() * 1e3,
        read_best_ms: best_r.as_secs_f64() * 1e3,
        verified: true,
    })
}

/// Incompressible, reproducible bytes: provium's seeded generator, seed 0.
pub fn pseudo_random(n: usize) -> Vec<u8> {
    provium::vmm::argv::seeded_bytes(0, n)
}

/// A `kB` field (`VmRSS`, `RssAnon`) of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Rss { pid, source })?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BenchError::Rss { pid, source: std::io::Error::other(format!("no {field} line in {path}")) })
}

/// `qemu-system` processes still running, split into ours (children of
/// this process) and anyone else's. Uses `pgrep -f qemu-system`.
pub fn leftover_qemu() -> Leftovers {
    let me = std::process::id();
    let out = std::process::Command::new("pgrep").args(["-f", "qemu-system"]).output();
    let pids: Vec<u32> = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect(),
        Err(e) => {
            eprintln!("warning: cannot run pgrep: {e}");
            vec![]
        }
    };
    let (mut ours, mut others) = (vec![], vec![]);
    for pid in pids {
        match parent_of(pid) {
            Some(ppid) if ppid == me => ours.push(pid),
            // Gone since pgrep listed it.
            None => {}
            Some(_) => others.push(pid),
        }
    }
    Leftovers {
        what: "`pgrep -f qemu-system` after the run: pids this bench started (must be none) \
               and pids of other users, left alone",
        ours,
        others,
    }
}

/// The parent pid from `/proc/<pid>/stat` (field 4, after the `(comm)`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// [`BATCH_OPS`] `stat`s one by one, then as one batch, `trials` times each.
fn batch_row(vm: &mut Vm, trials: usize) -> Result<crate::report::BatchRow, BenchError> {
    use crate::report::BATCH_OPS;
    let ops = || (0..BATCH_OPS).map(|_| BatchOp::Stat { path: "/".into(), follow_symlinks: true }).collect::<Vec<_>>();
    let (mut single, mut batched) = (Vec::with_capacity(trials), Vec::with_capacity(trials));
    for _ in 0..trials {
        let t = Instant::now();
        for _ in 0..BATCH_OPS {
            step("single stat", vm.stat("/"))?;
        }
        single.push(t.elapsed());
        let t = Instant::now();
        let outcomes = step("batched stats", vm.batch(ops()))?;
        batched.push(t.elapsed());
        assert_eq!(outcomes.len(), BATCH_OPS, "one outcome per op");
    }
    let single = Summary::of(&single).expect("trials >= 1");
    let batched = Summary::of(&batched).expect("trials >= 1");
    eprintln!("batch: {BATCH_OPS} stats {:.2} ms batched, {:.2} ms one by one", batched.median_ms, single.median_ms);
    Ok(crate::report::BatchRow {
        what: "wall time of 20 stat() calls on a booted VM: as single requests, and as one vm:batch",
        speedup: single.median_ms / batched.median_ms,
        single,
        batched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_exact_length_and_not_constant() {
        let d = pseudo_random(1001);
        assert_eq!(d.len(), 1001);
        assert!(d.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn parent_of_self_is_our_parent() {
        let ppid = std::os::unix::process::parent_id();
        assert_eq!(parent_of(std::process::id()), Some(ppid));
    }
}
