//! Choosing the accelerator: KVM only after a probe proves it works.
//!
//! `/dev/kvm` can exist and still be useless (a nested PVM host where a stock
//! kernel aborts with `failed to set MSR 0x10a` or runs ~1000× slow). The
//! probe boots the real guest kernel under KVM into a busybox `poweroff`; it
//! must finish within a few seconds. The verdict is cached per host boot.
//! `PROVIUM_ACCEL=tcg|kvm` overrides everything.

use std::path::Path;
use std::time::{Duration, Instant};

use super::argv::{self, Accel};
use super::process::QemuProcess;

/// The accelerator and a sentence saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

fn kvm_openable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

fn cache_file(qemu: &str) -> std::path::PathBuf {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let tag: String =
        format!("{}-{qemu}", boot_id.trim()).chars().filter(|c| c.is_ascii_alphanumeric()).take(48).collect();
    crate::cleanup::scratch_root().join(format!("accel-{tag}"))
}

/// Picks the accelerator for guests booted from `kernel` + `initrd` (an
/// initramfs with busybox at `/sbin/poweroff`).
pub fn choose(qemu: &str, kernel: &Path, initrd: &Path) -> AccelChoice {
    match std::env::var("PROVIUM_ACCEL").as_deref() {
        Ok("tcg") => return AccelChoice { accel: Accel::Tcg, reason: "PROVIUM_ACCEL=tcg".into() },
        Ok("kvm") => return AccelChoice { accel: Accel::Kvm, reason: "PROVIUM_ACCEL=kvm".into() },
        _ => {}
    }
    if let Err(e) = kvm_openable() {
        return AccelChoice { accel: Accel::Tcg, reason: format!("KVM unavailable ({e}); using TCG emulation") };
    }
    let cache = cache_file(qemu);
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((accel, reason)) = text.split_once('\n') {
            let accel = if accel == "kvm" { Accel::Kvm } else { Accel::Tcg };
            return AccelChoice { accel, reason: format!("{reason} (cached probe)") };
        }
    }
    let choice = match probe(qemu, kernel, initrd) {
        Ok(took) => AccelChoice { accel: Accel::Kvm, reason: format!("KVM probe booted a guest in {took:.1?}") },
        Err(why) => AccelChoice {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm exists but the KVM probe failed ({why}); using TCG"),
        },
    };
    let _ = std::fs::create_dir_all(crate::cleanup::scratch_root());
    let _ = std::fs::write(&cache, format!("{}\n{}", choice.accel.as_str(), choice.reason));
    choice
}

fn probe(qemu: &str, kernel: &Path, initrd: &Path) -> Result<Duration, String> {
    let scratch = crate::cleanup::ScratchDir::new("kvm-probe").map_err(|e| e.to_string())?;
    let mut argv = argv::machine_args(Accel::Kvm);
    argv.extend(argv::resources_args(128, 1));
    argv.extend(argv::base_args());
    argv.extend(argv::kernel_args(kernel, initrd, "console=ttyS0 quiet panic=-1 rdinit=/sbin/poweroff -- -f"));
    let start = Instant::now();
    let mut qemu = QemuProcess::spawn(qemu, &argv, &scratch.path().join("stderr")).map_err(|e| e.to_string())?;
    if !qemu.wait_exit(PROBE_TIMEOUT) {
        qemu.stop(Duration::from_millis(100));
        return Err(format!("no power-off within {PROBE_TIMEOUT:?}"));
    }
    match qemu.exit_status() {
        Some(s) if s.success() => Ok(start.elapsed()),
        _ => {
            let err = qemu.stderr();
            Err(err.lines().last().unwrap_or("QEMU failed").to_string())
        }
    }
}
