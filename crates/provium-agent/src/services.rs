//! The few services a standalone guest (one with no `/init` of its own,
//! like provium's default guest) gets from the agent as its init: a system
//! log. Busybox's `syslogd` writes `/var/log/messages`, and `klogd` feeds it
//! the kernel's messages, so `logger hello` and `tail_file("/var/log/messages")`
//! work as on a usual Linux system.
//!
//! Both run in the foreground (`-n`) in their own process groups, reaped by
//! [`crate::reaper`] if they ever exit. The agent waits (briefly) for
//! `/dev/log` before it serves, so the first command can already log.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::log;

/// How long the agent waits for syslogd's socket before serving anyway.
const SOCKET_WAIT: Duration = Duration::from_secs(2);

/// Starts syslogd and klogd when the guest has them (busybox applets).
pub fn start_syslog() {
    let Some(syslogd) = find("syslogd") else { return };
    if std::fs::create_dir_all("/var/log").is_err() {
        log::warn("cannot create /var/log; no system log");
        return;
    }
    if !start(&syslogd, &["-n", "-O", "/var/log/messages"]) {
        return;
    }
    if let Some(klogd) = find("klogd") {
        start(&klogd, &["-n"]);
    }
    let deadline = Instant::now() + SOCKET_WAIT;
    while !Path::new("/dev/log").exists() {
        if Instant::now() >= deadline {
            log::warn("syslogd did not create /dev/log within 2s");
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn find(name: &str) -> Option<String> {
    ["/sbin", "/bin", "/usr/sbin", "/usr/bin"].iter().map(|d| format!("{d}/{name}")).find(|p| Path::new(p).exists())
}

fn start(prog: &str, args: &[&str]) -> bool {
    let spawned = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        // Never waited for here: the reaper collects it if it exits.
        Ok(_child) => true,
        Err(e) => {
            log::warn(&format!("cannot start {prog}: {e}"));
            false
        }
    }
}
