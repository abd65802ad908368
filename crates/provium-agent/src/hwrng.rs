//! Quieting the kernel's own reader of a seeded hardware RNG, so that what
//! a test reads from `/dev/hwrng` is the same on every boot.
//!
//! When a hwrng appears, the kernel's hwrng thread reads it (64 bytes) and
//! then again every second or so during early boot (the reseed interval is
//! half the uptime then). A test that reads the device a little later on a
//! loaded host would see the stream further along. With `provium.hwrng=quiet`
//! on the command line (a seeded RNG), the agent waits for that thread's
//! first read to be done (the thread sleeps) and then sets the hwrng's
//! quality to 0, which stops the thread: nothing but the test reads the
//! device after that first read. This runs on a thread of its own, beside
//! the handshake.

use std::time::{Duration, Instant};

const QUALITY: &str = "/sys/class/misc/hw_random/rng_quality";

/// How long to wait for the kernel's first read before stopping the
/// thread anyway.
const FIRST_READ_WAIT: Duration = Duration::from_secs(2);

/// Stops the kernel's hwrng thread after its first read, if asked to.
pub fn quiet_kernel_reader_if_asked() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !cmdline.split_whitespace().any(|w| w == "provium.hwrng=quiet") {
        return;
    }
    std::thread::spawn(|| {
        wait_for_first_read();
        if let Err(e) = std::fs::write(QUALITY, "0\n") {
            crate::log::warn(&format!("cannot stop the kernel's hwrng thread ({QUALITY}): {e}"));
        }
    });
}

/// Waits until the `hwrng` kernel thread sleeps (state `S`: its first read
/// is done and it waits for the next reseed) or has not appeared in time.
fn wait_for_first_read() {
    let deadline = Instant::now() + FIRST_READ_WAIT;
    while Instant::now() < deadline {
        if kthread_state("hwrng") == Some('S') {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The state letter of the kernel thread named `name`, if it runs.
fn kthread_state(name: &str) -> Option<char> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let stat = match std::fs::read_to_string(entry.path().join("stat")) {
            Ok(s) => s,
            Err(_) => continue,
        };
        // "pid (comm) S ..."
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if &stat[open + 1..close] == name {
            return stat[close + 1..].trim_start().chars().next();
        }
    }
    None
}
