//! The server against QEMU's own NBD client: `qemu-io` and `qemu-img`
//! (qemu-utils), and `qemu-system-x86_64` with the documented `-blockdev`
//! and `-device` options. They fail, never skip, when QEMU is missing.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;

fn tool(name: &str) -> Command {
    let found =
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()));
    assert!(found, "`{name}` is not installed: run scripts/setup (it installs qemu-utils and QEMU)");
    Command::new(name)
}

fn url(socket: &Path) -> String {
    format!("nbd+unix:///disk0?socket={}", socket.display())
}

/// Runs `qemu-io` on the export with `-c` commands; its output.
fn qemu_io(socket: &Path, extra: &[&str], commands: &[&str]) -> Output {
    let mut c = tool("qemu-io");
    c.args(["-f", "raw"]).args(extra);
    for cmd in commands {
        c.args(["-c", cmd]);
    }
    let out = c.arg(url(socket)).output().expect("run qemu-io");
    eprintln!(
        "qemu-io {extra:?} {commands:?}: {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `qemu-io` that succeeded, and whose output has no error in it (qemu-io
/// exits 0 after a failed command).
fn qemu_io_ok(socket: &Path, extra: &[&str], commands: &[&str]) -> String {
    let out = qemu_io(socket, extra, commands);
    let t = text(&out);
    assert!(out.status.success() && !t.contains("error") && !t.contains("failed"), "qemu-io failed:\n{t}");
    t
}

/// Checks that every byte of `bytes` is `want`, naming the first that is not.
fn assert_all(bytes: &[u8], want: u8, what: &str) {
    if let Some(at) = bytes.iter().position(|&b| b != want) {
        panic!("{what}: byte {at} of {} is {:#x}, not {want:#x}", bytes.len(), bytes[at]);
    }
}

/// Runs `qemu-io` on the export with the write-back cache (its default,
/// write-through, makes every write `FUA`), waits until `done` says the
/// server saw the commands, and kills it. QEMU's NBD client always sends a
/// `FLUSH` when it closes (the driver flushes "to the OS", which even
/// `cache=unsafe` does), so a client that never flushes is one that dies,
/// like a guest at a power cut.
fn qemu_io_then_kill(socket: &Path, commands: &[&str], disk: &DiskHandle, done: impl Fn(&DiskStats) -> bool) {
    let mut c = tool("qemu-io");
    c.args(["-f", "raw", "-t", "writeback"]);
    for cmd in commands.iter().chain(&["sleep 60000"]) {
        c.args(["-c", cmd]);
    }
    let mut child = c.arg(url(socket)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run qemu-io");
    let seen = wait_until(Duration::from_secs(30), || done(&disk.stats()));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen, "qemu-io's commands did not reach the server: {:?}", disk.stats());
}

#[test]
fn qemu_io_writes_stay_in_the_cache_until_flushed() {
    let s = served(4 << 20, 0x11, false);
    let disk = s.server.disk();
    qemu_io_then_kill(s.socket(), &["write -P 0xab 0 64k"], &disk, |st| st.writes == 1);
    assert_eq!(disk.stats().flushes, 0);
    assert_all(&disk.read(0, 64 << 10).unwrap(), 0xab, "the device returns the write");
    assert_all(&s.file_bytes(0, 64 << 10), 0x11, "the file before a flush");
    qemu_io_ok(s.socket(), &[], &["read -P 0xab 0 64k"]);
    assert_eq!(disk.stats().flushes, 1, "qemu-io flushes when it exits");
    assert_all(&s.file_bytes(0, 64 << 10), 0xab, "the file after a flush");
    assert_eq!(disk.stats().connections, 2);
}

#[test]
fn qemu_io_sees_only_flushed_data_after_a_power_cut() {
    let s = served(4 << 20, 0x11, false);
    let disk = s.server.disk();
    qemu_io_then_kill(s.socket(), &["write -P 0xab 4k 8k"], &disk, |st| st.writes == 1);
    assert_eq!(disk.power_cut(), PowerCut { dropped_bytes: 8 << 10, spilled_bytes: 0 });
    qemu_io_ok(s.socket(), &[], &["read -P 0x11 4k 8k"]);
    qemu_io_ok(s.socket(), &[], &["write -P 0xcd 4k 8k", "flush"]);
    assert_eq!(disk.power_cut().dropped_bytes, 0);
    qemu_io_ok(s.socket(), &[], &["read -P 0xcd 4k 8k"]);
    // A FUA write (`-f`) is durable on its own; the other write is not.
    let before = disk.stats().writes;
    let commands = ["write -f -P 0xef 1M 4k", "write -P 0x77 2M 4k"];
    qemu_io_then_kill(s.socket(), &commands, &disk, |st| st.writes == before + 2);
    assert_eq!(disk.power_cut().dropped_bytes, 4 << 10);
    qemu_io_ok(s.socket(), &[], &["read -P 0xef 1M 4k", "read -P 0x11 2M 4k"]);
}

#[test]
fn qemu_io_zeroes_and_discards_go_through_the_cache() {
    let s = served(4 << 20, 0x11, false);
    let disk = s.server.disk();
    let commands = ["write -z 0 1M", "discard 1M 1M", "read -P 0 0 2M"];
    qemu_io_then_kill(s.socket(), &commands, &disk, |st| st.write_zeroes >= 1 && st.trims >= 1 && st.reads >= 1);
    assert_all(&disk.read(0, 2 << 20).unwrap(), 0, "zeroed and discarded");
    assert_all(&s.file_bytes(0, 2 << 20), 0x11, "the file before a flush");
    assert_eq!(disk.power_cut().dropped_bytes, 2 << 20);
}

#[test]
fn qemu_io_reads_fail_with_an_io_error_under_eio_read() {
    let s = served(4 << 20, 0x11, false);
    let disk = s.server.disk();
    disk.set_faults(Faults { eio_read: true, ..Faults::default() });
    let t = text(&qemu_io(s.socket(), &[], &["read 0 4k"]));
    assert!(t.contains("Input/output error"), "{t}");
    disk.set_faults(Faults { eio_write: true, ..Faults::default() });
    let t = text(&qemu_io(s.socket(), &[], &["write 0 4k"]));
    assert!(t.contains("Input/output error"), "{t}");
    disk.set_faults(Faults::default());
    qemu_io_ok(s.socket(), &[], &["read -P 0x11 0 4k"]);
}

#[test]
fn qemu_img_and_qemu_io_report_the_size() {
    let s = served(6 << 20, 0, false);
    let out = tool("qemu-img").args(["info", "--output=json", &url(s.socket())]).output().unwrap();
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains(&format!("\"virtual-size\": {}", 6 << 20)), "{}{info}", text(&out));
    let t = qemu_io_ok(s.socket(), &[], &["length"]);
    assert!(t.contains("6 MiB"), "{t}");
}

#[test]
fn qemu_io_read_only_export_refuses_writes() {
    let s = served(4 << 20, 0x22, true);
    qemu_io_ok(s.socket(), &["-r"], &["read -P 0x22 0 64k"]);
    // Without -r the client sees the read-only flag and refuses to write
    // (or, if it asks, the server answers EPERM).
    let t = text(&qemu_io(s.socket(), &[], &["write 0 4k"]));
    assert!(t.contains("read-only") || t.contains("Operation not permitted") || t.contains("Permission denied"), "{t}");
    assert_all(&s.file_bytes(0, 4096), 0x22, "the read-only file");
}

/// Polls `f` until it is true or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// QEMU itself with the documented options: the NBD client connects at
/// start-up, the virtio-blk device is on it, and I/O through the device's
/// block backend (HMP `qemu-io`) reaches the server and its cache.
#[test]
fn qemu_system_attaches_a_virtio_blk_device_to_the_export() {
    let s = served(8 << 20, 0x11, false);
    let disk = s.server.disk();
    // provium's own command line for disk `data` (device id `blk-data`).
    let scratch = s.socket().parent().unwrap();
    let args = crate::vmm::argv::disk_args("data", &crate::vmm::DiskSource::Served, false, scratch);
    let mut qemu = tool("qemu-system-x86_64")
        .args(["-machine", "microvm", "-accel", "tcg", "-nodefaults", "-display", "none", "-S"])
        .args(["-monitor", "stdio"])
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let mut stdin = qemu.stdin.take().unwrap();
    let stdout = qemu.stdout.take().unwrap();
    let log =
        std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    writeln!(stdin, "info block").unwrap();
    writeln!(stdin, "qemu-io -d blk-data \"write -P 0xcd 0 4k\"").unwrap();
    let written = wait_until(Duration::from_secs(30), || disk.read(0, 4).map(|b| b == [0xcd; 4]).unwrap_or(false));
    let unflushed = s.file_bytes(0, 4);
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let status = qemu.wait().unwrap();
    let monitor = log.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut qemu.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!("monitor:\n{monitor}\nstderr:\n{stderr}");
    assert!(status.success(), "qemu failed: {stderr}");
    assert!(monitor.contains("disk-data"), "info block shows the node");
    assert!(written, "the device's write reached the server");
    assert_eq!(unflushed, [0x11; 4], "still cached before QEMU exits");
    assert_eq!(s.file_bytes(0, 4), [0xcd; 4], "QEMU flushes when it quits");
    assert_eq!(disk.stats().connections, 1);
}

/// Sequential write then read, 256 MiB in 1 MiB requests at queue depth 8,
/// through the server and on the raw file directly (`qemu-img bench`; the
/// write includes the flush `qemu-img` sends when it closes, so the cache's
/// write-back to the file). By hand, in release:
/// `cargo test --release -p provium --lib vmm::nbd::tests::qemu::throughput -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark, run by hand"]
fn throughput() {
    const TOTAL: u64 = 256 << 20;
    let s = served(TOTAL, 0, false);
    let direct = s.dir.path().join("direct.img");
    std::fs::write(&direct, vec![0u8; TOTAL as usize]).unwrap();
    let bench = |target: &str, write: bool| {
        let mut c = tool("qemu-img");
        c.args(["bench", "-f", "raw", "-c", "256", "-s", "1M", "-d", "8", "-S", "1M"]);
        if write {
            c.arg("-w");
        }
        let t = Instant::now();
        let out = c.arg(target).output().unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", text(&out));
        (TOTAL as f64 / (1 << 20) as f64) / secs
    };
    let nbd = url(s.socket());
    let direct = direct.display().to_string();
    for (name, target) in [("nbd", nbd.as_str()), ("raw file", direct.as_str())] {
        let w = bench(target, true);
        let r = bench(target, false);
        println!("{name:>9}: sequential write {w:7.0} MiB/s, read {r:7.0} MiB/s (1 MiB requests, depth 8)");
    }
    println!("{:?}", s.server.disk().stats());
}
