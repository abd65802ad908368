//! `provium-bench`: what provium costs on this host, with the default guest.
//!
//! Boots real VMs through the `provium` library (the same path tests take)
//! and measures cold boot, snapshot and restore, exec and ping round trips, file transfer
//! throughput, port-open → `wait_port` latency, process stdout stream
//! throughput (and the host memory a slow reader of it holds) and idle host
//! memory per VM, and with `--net` the network rows (see [`network`]). Progress goes to stderr; the
//! table (or `--json`) goes to stdout.
//!
//! Exit codes: 0 success, 1 a measurement failed (the error chain is
//! printed), 2 the bench left a QEMU process running, 64 bad arguments.

mod guests;
mod measure;
mod network;
mod port;
mod report;
mod snapshot;
mod stream;
mod suite;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use provium::config::Config;
use provium::image::Images;
use provium::vmm::{accel, process::qemu_binary};

use measure::{Bench, BenchError};
use report::{Host, Report};

/// Measures provium's boot, round-trip, file-transfer and memory costs.
#[derive(Debug, Parser)]
#[command(name = "provium-bench", version)]
struct Args {
    /// Cold boots to time.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    boots: u64,
    /// Snapshots taken and restores timed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    restores: u64,
    /// Exec and ping round trips to time (each).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Size of the file written and read back, in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    file_mib: u64,
    /// Port-open → wait_port trials (each on a fresh port).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1000))]
    port_trials: u64,
    /// VMs booted for the idle-memory figure.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
    idle_vms: u64,
    /// Also measure the network rows (bridge switch vs a bare relay floor,
    /// impairments, switch CPU and memory); boots two more VMs.
    #[arg(long)]
    net: bool,
    /// Network throughput/ping trials (each: one TCP transfer and one
    /// 20-ping run through the switch and through the floor).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    net_trials: u64,
    /// Bytes sent per TCP transfer, in MiB.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    net_mib: u64,
    /// Skip every row but the network ones (with `--net`).
    #[arg(long)]
    net_only: bool,
    /// Only the suite-scaling rows: `examples/` with -j 1 and -j 2, and N
    /// one-VM files on N cores against one (runs the `provium` binary
    /// built beside this one).
    #[arg(long)]
    suite_only: bool,
    /// Only the guest-choice rows: a Debian profile's image build (cold and
    /// cached), its cold boot and restore against the default guest's, the
    /// default guest with a C library, and data-disk throughput.
    #[arg(long)]
    guests_only: bool,
    /// Size of the data-disk throughput transfer, in MiB (`--guests-only`).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    disk_mib: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS };
        }
    };
    if args.net_only {
        return net_only(&args);
    }
    if args.suite_only {
        return suite_only(&args);
    }
    if args.guests_only {
        let result = prepare()
            .and_then(|bench| guests::measure(&bench, args.boots as usize, args.restores as usize, args.disk_mib));
        return print_only(&args, "provium-bench --guests-only", result, guests::Guests::rows);
    }
    let result = run(&args);
    // Whatever happened, every VM has been dropped (and so shut down) by
    // now: check that none of ours survived.
    let leftovers = measure::leftover_qemu();
    match result {
        Ok(mut report) => {
            report.leftover_qemu = leftovers;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if !report.leftover_qemu.ours.is_empty() {
                print_chain(&BenchError::Leaked(report.leftover_qemu.ours.clone()));
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_chain(&e);
            if !leftovers.ours.is_empty() {
                print_chain(&BenchError::Leaked(leftovers.ours));
                return ExitCode::from(2);
            }
            ExitCode::from(1)
        }
    }
}

/// `--net-only`: the network rows alone.
fn net_only(args: &Args) -> ExitCode {
    let result = prepare().and_then(|bench| network::measure(&bench, args.net_trials as usize, args.net_mib));
    print_only(args, "provium-bench --net-only", result, network::Network::rows)
}

/// `--suite-only`: the suite-scaling rows alone.
fn suite_only(args: &Args) -> ExitCode {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    print_only(args, "provium-bench --suite-only", suite::measure(&examples), suite::Suite::rows)
}

/// Prints one group of rows (or its JSON), then checks for leaked QEMUs.
fn print_only<T: serde::Serialize>(
    args: &Args,
    title: &str,
    result: Result<T, BenchError>,
    rows: fn(&T) -> Vec<(String, String, String)>,
) -> ExitCode {
    let leftovers = measure::leftover_qemu();
    let code = match result {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r).expect("report serializes"));
            } else {
                print!("{}", report::render(title, rows(&r)));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_chain(&e);
            ExitCode::from(1)
        }
    };
    if !leftovers.ours.is_empty() {
        print_chain(&BenchError::Leaked(leftovers.ours));
        return ExitCode::from(2);
    }
    code
}

/// The default guest prepared and the accelerator chosen.
fn prepare() -> Result<Bench, BenchError> {
    let images = Arc::new(Images::new(Arc::new(Config::default())));
    eprintln!("preparing the default guest");
    let guest = images.default_guest().map_err(BenchError::Prepare)?;
    let choice = accel::choose(&qemu_binary(), &guest.vmlinux, &guest.initrd);
    eprintln!("accelerator: {} ({})", choice.accel.as_str(), choice.reason);
    Ok(Bench { images, accel: choice.accel })
}

fn print_chain(e: &dyn std::error::Error) {
    eprintln!("error: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
}

fn run(args: &Args) -> Result<Report, BenchError> {
    let images = Arc::new(Images::new(Arc::new(Config::default())));
    eprintln!("preparing the default guest");
    let guest = images.default_guest().map_err(BenchError::Prepare)?;
    let choice = accel::choose(&qemu_binary(), &guest.vmlinux, &guest.initrd);
    eprintln!("accelerator: {} ({})", choice.accel.as_str(), choice.reason);
    let bench = Bench { images, accel: choice.accel };
    let cold_boot = bench.cold_boot(args.boots as usize)?;
    let snapshot = bench.snapshot_restore(args.restores as usize, cold_boot.cold.median_ms)?;
    let warm = bench.warm(args.runs as usize, (args.file_mib << 20) as usize, args.port_trials as usize)?;
    let idle_memory = bench.idle_memory(args.idle_vms as usize, Duration::from_secs(2))?;
    let network = if args.net { Some(network::measure(&bench, args.net_trials as usize, args.net_mib)?) } else { None };
    Ok(Report {
        host: Host {
            cpu: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            accel: choice.accel.as_str(),
            accel_reason: choice.reason,
            kernel_release: guest.kernel_release,
        },
        cold_boot,
        snapshot,
        round_trip: warm.round_trip,
        file_io: warm.file_io,
        port_latency: warm.port,
        stdout_stream: warm.stream,
        idle_memory,
        network,
        leftover_qemu: measure::leftover_qemu(),
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
