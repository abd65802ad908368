//! `provium doctor`: is this machine ready? QEMU found and its version, the
//! accelerator chosen and why, the default guest ready or what is missing,
//! and each configured profile's files.

use std::process::Command;

use crate::config::Config;
use crate::image::Images;
use crate::vmm::{self, process};

fn line(ok: bool, what: &str, detail: &str) {
    println!("{} {what}: {detail}", if ok { "ok  " } else { "FAIL" });
}

/// Prints the report; returns the exit code (0 when everything is ready).
pub fn run(config: &Config) -> i32 {
    let mut healthy = true;
    println!("provium {} (protocol v{})", env!("CARGO_PKG_VERSION"), provium_protocol::PROTOCOL_VERSION);
    let qemu = process::qemu_binary();
    match process::which(&qemu) {
        Some(path) => {
            let version = Command::new(&path)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.lines().next().map(str::to_string))
                .unwrap_or_else(|| "version unknown".into());
            line(true, "qemu", &format!("{} ({version})", path.display()));
        }
        None => {
            healthy = false;
            line(false, "qemu", &format!("`{qemu}` not found on PATH; install it with `scripts/setup`"));
        }
    }
    let images = Images::new(std::sync::Arc::new(config.clone()));
    let guest = images.default_guest();
    match &guest {
        Ok(g) => line(
            true,
            "default guest",
            &format!("kernel {} ({}, {})", g.kernel_release, g.vmlinux.display(), g.initrd.display()),
        ),
        Err(e) => {
            healthy = false;
            line(false, "default guest", &crate::errors::chain(e));
        }
    }
    if let (Ok(g), Some(_)) = (&guest, process::which(&qemu)) {
        let c = vmm::accel::choose(&qemu, &g.vmlinux, &g.initrd);
        line(true, "accelerator", &format!("{} — {}", c.accel.as_str(), c.reason));
    }
    match &config.path {
        Some(p) => line(true, "config", &p.display().to_string()),
        None => line(true, "config", "no provium.toml here (profile `default` needs none)"),
    }
    images.set_builds(crate::image::Builds::Skip);
    for (name, p) in &config.profiles {
        if let crate::config::Guest::Debian(d) = &p.guest {
            // Building one can take a while: doctor only says what it is.
            let what = format!(
                "Debian {} with {} (built, or found cached, by `provium prepare {name}` or the first run)",
                d.suite,
                if d.packages.is_empty() { "no extra packages".to_string() } else { d.packages.join(", ") }
            );
            line(true, &format!("profile `{name}`"), &what);
            continue;
        }
        match images.resolve(name) {
            Ok(img) => line(true, &format!("profile `{name}`"), &img.kernel.display().to_string()),
            Err(e) => {
                healthy = false;
                line(false, &format!("profile `{name}`"), &crate::errors::chain(&e));
            }
        }
    }
    if healthy {
        0
    } else {
        1
    }
}
