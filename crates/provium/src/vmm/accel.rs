//! Choosing the accelerator: KVM only after a probe proves it works.
//!
//! `/dev/kvm` can exist and still be useless (a nested PVM host where a stock
//! kernel aborts with `failed to set MSR 0x10a` or runs ~1000× slow). The
//! probe boots the real guest kernel under KVM into a busybox `poweroff`; it
//! must finish within a few seconds. The verdict is cached per host boot.
//! `PROVIUM_ACCEL=tcg|kvm` overrides everything.

use std::path::Path;
use std::time::{Duration, Instant};

use super::argv;
use super::process::QemuProcess;
use super::spec::{Accel, Boot, LaunchSpec, Machine, Ram};

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

/// Where the verdict for this host boot, this QEMU and this probe command
/// line is kept: a changed probe (a fixed argv) probes again.
fn cache_file(qemu: &str, kernel: &Path, initrd: &Path) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let argv = argv::launch_argv(&probe_spec(Accel::Kvm, kernel, initrd, Path::new("")));
    let probe = Sha256::digest(format!("{qemu}\0{}", argv.join("\0")));
    let tag: String = boot_id.trim().chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect();
    let probe: String = probe.iter().take(8).map(|b| format!("{b:02x}")).collect();
    crate::cleanup::scratch_root().join(format!("accel-{tag}-{probe}"))
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
    let cache = cache_file(qemu, kernel, initrd);
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((accel, reason)) = text.split_once('\n') {
            let accel = if accel == "kvm" { Accel::Kvm } else { Accel::Tcg };
            return AccelChoice { accel, reason: format!("{reason} (cached probe)") };
        }
    }
    let choice = match probe(qemu, Accel::Kvm, kernel, initrd, PROBE_TIMEOUT) {
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

/// The kernel command line of the probe guest: busybox powers it off as
/// soon as the kernel has booted. provium's machine parameters are added
/// as for every guest (without `tsc_early_khz` the guest can hang
/// calibrating its TSC).
const PROBE_CMDLINE: &str = "console=ttyS0 quiet rdinit=/sbin/poweroff";

/// What the probe starts: a small guest of the same machine type, memory
/// backend and console as every VM (the same argv builder), under `accel`.
/// Tests run it with [`Accel::Tcg`] to prove the command line is valid on
/// machines without KVM.
pub fn probe_spec(accel: Accel, kernel: &Path, initrd: &Path, scratch: &Path) -> LaunchSpec {
    LaunchSpec {
        accel,
        machine: Machine { memory_mib: 128, cpus: 1, devices: vec![super::spec::Device::Console] },
        ram: Ram::Anonymous,
        boot: Boot::Kernel {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            // `--` ends the kernel's parameters: `-f` goes to poweroff.
            cmdline: format!("{} -- -f", argv::kernel_cmdline(PROBE_CMDLINE, false, &argv::machine_cmdline())),
            rtc_base: None,
        },
        scratch: scratch.to_path_buf(),
        disk_files: Default::default(),
    }
}

/// Boots the probe guest under `accel`; how long it took to power off, or
/// why it did not.
pub fn probe(qemu: &str, accel: Accel, kernel: &Path, initrd: &Path, timeout: Duration) -> Result<Duration, String> {
    let scratch = crate::cleanup::ScratchDir::new("accel-probe").map_err(|e| e.to_string())?;
    let argv = argv::launch_argv(&probe_spec(accel, kernel, initrd, scratch.path()));
    let start = Instant::now();
    let mut qemu = QemuProcess::spawn(qemu, &argv, &scratch.path().join("stderr")).map_err(|e| e.to_string())?;
    if !qemu.wait_exit(timeout) {
        qemu.stop(Duration::from_millis(100));
        return Err(format!(
            "the probe guest did not power off within {timeout:?}: KVM runs it far slower than expected (a nested or \
             PVM host?)"
        ));
    }
    match qemu.exit_status() {
        Some(s) if s.success() => Ok(start.elapsed()),
        _ => {
            let err = qemu.stderr();
            Err(err.lines().last().unwrap_or("QEMU failed").to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_uses_the_launch_argv_with_its_memory_backend() {
        let spec = probe_spec(Accel::Kvm, Path::new("/k"), Path::new("/i"), Path::new("/s"));
        let argv = argv::launch_argv(&spec);
        let joined = argv.join(" ");
        // The machine names `memory-backend=mem`; the backend must be there.
        assert!(joined.contains("memory-backend=mem"), "{joined}");
        assert!(joined.contains("-object memory-backend-ram,id=mem,size=128M"), "{joined}");
        assert!(joined.contains("-accel kvm -cpu host"), "{joined}");
        assert!(joined.contains(PROBE_CMDLINE) && joined.contains("tsc=reliable"), "{joined}");
        assert!(joined.ends_with("-- -f -chardev") || joined.contains(" -- -f "), "{joined}");
    }
}
