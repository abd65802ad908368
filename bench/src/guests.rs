//! `--guests`: what choosing a guest costs. A Debian profile (`python3`
//! and `curl`): its image built cold (fresh apt lists, downloads and image)
//! and found cached; its cold boot against the default guest's, booted in
//! turn in the same run; a restore of its snapshot; and the default guest
//! with a C library added to its initramfs (what running host-built
//! dynamic programs there would cost every boot). Then data-disk
//! throughput: sequential `dd` in the guest through provium's disk server
//! against the same `dd` on the host on a raw file.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use provium::cleanup::ScratchDir;
use provium::config::Config;
use provium::image::Images;
use provium::vm::{BootOpts, Vm};
use provium_protocol::ExecRequest;

use crate::measure::{ms, step, Bench, BenchError};
use crate::report::Summary;

/// The Debian profile measured, as a user writes it.
const PROFILE: &str = "[profiles.py]\nbase = \"debian\"\npackages = [\"python3\", \"curl\"]\n\n\
                       [profiles.glibc]\nkernel = \"{vmlinux}\"\ninitrd = \"{initrd}\"\ncmdline = \"{cmdline}\"\n";

#[derive(Debug, serde::Serialize)]
pub struct Guests {
    pub packages: usize,
    pub image_mib: f64,
    pub image_cold_s: f64,
    pub image_cached_ms: f64,
    pub default_boot: Summary,
    pub debian_boot: Summary,
    pub debian_over_default: f64,
    pub debian_restore: Summary,
    pub glibc_initrd_mib: f64,
    pub glibc_boot: Summary,
    pub glibc_over_default: f64,
    pub disk_mib: u64,
    pub guest_write_mibs: f64,
    pub guest_read_mibs: f64,
    pub host_write_mibs: f64,
    pub host_read_mibs: f64,
}

impl Guests {
    pub fn rows(&self) -> Vec<(String, String, String)> {
        let r = |a: &str, b: String, c: String| (a.to_string(), b, c);
        vec![
            r(
                "Debian image build, cold",
                format!("{:.1} s", self.image_cold_s),
                format!("python3 + curl: {} packages, {:.1} MiB squashfs; empty apt lists, .deb and image caches", self.packages, self.image_mib),
            ),
            r("Debian image, cached", format!("{:.1} ms", self.image_cached_ms), "second prepare: no apt, no network".into()),
            r("cold boot, default guest", format!("{:.0} ms", self.default_boot.median_ms), median(&self.default_boot)),
            r(
                "cold boot, Debian profile",
                format!("{:.0} ms", self.debian_boot.median_ms),
                format!("{}; {:.2}× the default guest (booted in turn)", median(&self.debian_boot), self.debian_over_default),
            ),
            r("restore, Debian profile", format!("{:.0} ms", self.debian_restore.median_ms), median(&self.debian_restore)),
            r(
                "cold boot, default + C library",
                format!("{:.0} ms", self.glibc_boot.median_ms),
                format!(
                    "{}; {:.2}× the default guest; libc6 adds {:.1} MiB to the initramfs",
                    median(&self.glibc_boot),
                    self.glibc_over_default,
                    self.glibc_initrd_mib
                ),
            ),
            r(
                "disk write, guest",
                format!("{:.0} MiB/s", self.guest_write_mibs),
                format!(
                    "dd {} MiB, 1 MiB blocks, O_DIRECT + fsync, through provium's disk server; host dd on a raw file: {:.0} MiB/s",
                    self.disk_mib, self.host_write_mibs
                ),
            ),
            r(
                "disk read, guest",
                format!("{:.0} MiB/s", self.guest_read_mibs),
                format!("dd {} MiB, O_DIRECT; host dd on the raw file: {:.0} MiB/s", self.disk_mib, self.host_read_mibs),
            ),
        ]
    }
}

fn median(s: &Summary) -> String {
    format!("median of {} (min {:.0}, p90 {:.0} ms)", s.n, s.min_ms, s.p90_ms)
}

fn guest_err(step: &str, message: impl std::fmt::Display) -> BenchError {
    BenchError::Guest { step: step.to_string(), message: message.to_string() }
}

/// Runs `cmd` with `sh -c` in the guest; fails unless it exits 0.
fn sh(vm: &mut Vm, what: &str, cmd: &str) -> Result<String, BenchError> {
    let req = ExecRequest { argv: vec!["sh".into(), "-c".into(), cmd.into()], ..Default::default() };
    let out = step(what, vm.exec(req, b""))?;
    if out.status != provium_protocol::ExitStatus::Exited(0) {
        return Err(guest_err(what, format!("{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Spawn → result of the first command, for a fresh VM of `profile`.
fn cold_boot(bench: &Bench, images: &Arc<Images>, profile: &str, i: usize) -> Result<Duration, BenchError> {
    let name = format!("{profile}-{i}");
    let start = Instant::now();
    let mut vm = Vm::new(&name, profile, BootOpts::default(), images.clone(), bench.accel);
    step(format!("boot of `{name}`"), vm.boot(&BootOpts::default()))?;
    Bench::run_true(&mut vm, "first exec")?;
    let took = start.elapsed();
    vm.shutdown();
    Ok(took)
}

/// The default guest's initramfs with libc6's libraries and loader added.
fn initrd_with_glibc(default_initrd: &Path, debs: &Path, into: &Path) -> Result<u64, BenchError> {
    let deb = std::fs::read_dir(debs)
        .map_err(|e| guest_err("finding libc6", e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libc6_")))
        .ok_or_else(|| guest_err("finding libc6", format!("no libc6_*.deb in {}", debs.display())))?;
    let tree = into.with_extension("tree");
    std::fs::create_dir_all(&tree).map_err(|e| guest_err("unpacking libc6", e))?;
    let out = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Err(guest_err("unpacking libc6", String::from_utf8_lossy(&o.stderr))),
        Err(e) => return Err(guest_err("unpacking libc6", e)),
    }
    let mut w = provium::guest::CpioWriter::new();
    // bookworm's libc6 ships its libraries in /lib (merged /usr comes from
    // the base system's symlinks); later suites in /usr/lib.
    let lib = tree.join("lib/x86_64-linux-gnu");
    let lib = if lib.join("libc.so.6").exists() { lib } else { tree.join("usr/lib/x86_64-linux-gnu") };
    w.dir("lib", 0o755);
    w.dir("lib/x86_64-linux-gnu", 0o755);
    w.dir("lib64", 0o755);
    let mut added = 0u64;
    for e in std::fs::read_dir(&lib).map_err(|e| guest_err("reading libc6", e))?.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(&p).map_err(|e| guest_err("reading libc6", e))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p).map_err(|e| guest_err("reading libc6", e))?;
            w.symlink(&format!("lib/x86_64-linux-gnu/{name}"), &target.to_string_lossy());
        } else if meta.is_file() {
            let bytes = std::fs::read(&p).map_err(|e| guest_err("reading libc6", e))?;
            added += bytes.len() as u64;
            w.file(&format!("lib/x86_64-linux-gnu/{name}"), 0o755, &bytes);
        }
    }
    w.symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
    let mut bytes = std::fs::read(default_initrd).map_err(|e| guest_err("reading the default initrd", e))?;
    provium::guest::pad_to_page(&mut bytes);
    bytes.extend(w.finish());
    provium::guest::pad_to_page(&mut bytes);
    std::fs::write(into, bytes).map_err(|e| guest_err("writing the initrd", e))?;
    let _ = std::fs::remove_dir_all(&tree);
    Ok(added)
}

/// `dd` on the host against a raw file: (write, read) MiB/s.
fn host_dd(file: &Path, mib: u64) -> Result<(f64, f64), BenchError> {
    let run = |args: &[String]| -> Result<Duration, BenchError> {
        let start = Instant::now();
        let out = Command::new("dd").args(args).output().map_err(|e| guest_err("host dd", e))?;
        if !out.status.success() {
            return Err(guest_err("host dd", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(start.elapsed())
    };
    let f = file.display();
    let w = run(&[
        "if=/dev/zero".into(),
        format!("of={f}"),
        "bs=1M".into(),
        format!("count={mib}"),
        "oflag=direct".into(),
        "conv=fsync".into(),
    ])?;
    let r = run(&[format!("if={f}"), "of=/dev/null".into(), "bs=1M".into(), "iflag=direct".into()])?;
    Ok((mib as f64 / w.as_secs_f64(), mib as f64 / r.as_secs_f64()))
}

pub fn measure(bench: &Bench, boots: usize, restores: usize, disk_mib: u64) -> Result<Guests, BenchError> {
    let scratch = ScratchDir::new("bench-guests").map_err(BenchError::SelfStatus)?;
    let default = bench.images.default_guest().map_err(BenchError::Prepare)?;
    let kernel = provium::guest::GuestInputs::locate().map_err(|e| guest_err("locating the kernel", e))?;

    // 1. The image, from nothing, then cached.
    let spec = provium::debian::DebianSpec::with_packages(&["python3", "curl"]);
    let cold_dirs = provium::debian::CacheDirs {
        apt: scratch.path().join("cold/apt"),
        debs: scratch.path().join("cold/debs"),
        images: scratch.path().join("cold/images"),
    };
    eprintln!("guests: building the Debian image from empty caches");
    let start = Instant::now();
    let img = provium::debian::prepare_in(&spec, &kernel, &cold_dirs, false, &mut |s| eprintln!("  {s}"))
        .map_err(|e| guest_err("Debian image (cold)", provium::errors::chain(&e)))?;
    let image_cold = start.elapsed();
    let start = Instant::now();
    let again = provium::debian::prepare_in(&spec, &kernel, &cold_dirs, false, &mut |_| {})
        .map_err(|e| guest_err("Debian image (cached)", provium::errors::chain(&e)))?;
    let image_cached = start.elapsed();
    if again.built {
        return Err(guest_err("Debian image (cached)", "the second prepare built the image again"));
    }
    let image_mib = std::fs::metadata(&img.rootfs).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;

    // 2. The profiles booted, in turn.
    let glibc_initrd = scratch.path().join("glibc-initrd");
    let added = initrd_with_glibc(&default.initrd, &cold_dirs.debs, &glibc_initrd)?;
    let text = PROFILE
        .replace("{vmlinux}", &default.vmlinux.display().to_string())
        .replace("{initrd}", &glibc_initrd.display().to_string())
        .replace("{cmdline}", &provium::image::default_cmdline());
    let config = Config::parse(&scratch.path().join("provium.toml"), &text)
        .map_err(|e| guest_err("bench config", provium::errors::chain(&e)))?;
    let images = Arc::new(Images::new(Arc::new(config)));
    images
        .prepare_profiles(&["py".into()], provium::image::Builds::Skip, false, &mut |l| eprintln!("  {l}"))
        .map_err(|e| guest_err("preparing profile py", provium::errors::chain(&e)))?;
    let (mut plain, mut debian, mut glibc) = (vec![], vec![], vec![]);
    for i in 1..=boots {
        plain.push(cold_boot(bench, &bench.images, "default", i)?);
        debian.push(cold_boot(bench, &images, "py", i)?);
        glibc.push(cold_boot(bench, &images, "glibc", i)?);
        eprintln!(
            "guests: boot {i}/{boots}: default {}, Debian {}, default + C library {}",
            ms(plain[i - 1]),
            ms(debian[i - 1]),
            ms(glibc[i - 1])
        );
    }
    // The C library really serves a host-built program there.
    let mut g = Vm::new("glibc-check", "glibc", BootOpts::default(), images.clone(), bench.accel);
    step("boot of `glibc-check`", g.boot(&BootOpts::default()))?;
    let host_true = std::fs::read("/bin/true").map_err(|e| guest_err("reading /bin/true", e))?;
    step("push /bin/true", g.write_file("/tmp/host-true", &host_true, 0o755))?;
    sh(&mut g, "host-built /bin/true in the default guest + C library", "/tmp/host-true")?;
    g.shutdown();

    // 3. A Debian snapshot, restored.
    let mut vm = Vm::new("py-snap", "py", BootOpts::default(), images.clone(), bench.accel);
    step("boot of `py-snap`", vm.boot(&BootOpts::default()))?;
    sh(&mut vm, "python3 before the snapshot", "python3 -c 'print(1+1)'")?;
    let snap = scratch.path().join("py.snap");
    step("snapshot", vm.snapshot(&snap))?;
    let mut restored = Vec::new();
    for _ in 0..restores {
        vm.shutdown();
        let start = Instant::now();
        step("restore", vm.restore(&snap))?;
        Bench::run_true(&mut vm, "first exec after restore")?;
        restored.push(start.elapsed());
    }
    vm.shutdown();

    // 4. Disk throughput.
    eprintln!("guests: disk throughput ({disk_mib} MiB)");
    let size = format!("{}M", disk_mib + 16);
    let disks = vec![provium::config::DiskDecl {
        id: Some("data".into()),
        image: None,
        format: None,
        size: provium::units::parse_size(&size).ok(),
        readonly: false,
    }];
    let opts = BootOpts { disks: Some(disks), ..Default::default() };
    let mut d = Vm::new("py-disk", "py", opts.clone(), images.clone(), bench.accel);
    step("boot of `py-disk`", d.boot(&opts))?;
    let dev = "/dev/disk/by-id/data";
    let timed = |d: &mut Vm, what: &str, cmd: String| -> Result<f64, BenchError> {
        let start = Instant::now();
        sh(d, what, &cmd)?;
        Ok(disk_mib as f64 / start.elapsed().as_secs_f64())
    };
    let gw = timed(
        &mut d,
        "guest dd write",
        format!("dd if=/dev/zero of={dev} bs=1M count={disk_mib} oflag=direct conv=fsync 2>/dev/null"),
    )?;
    let gr = timed(
        &mut d,
        "guest dd read",
        format!("dd if={dev} of=/dev/null bs=1M count={disk_mib} iflag=direct 2>/dev/null"),
    )?;
    d.shutdown();
    let (hw, hr) = host_dd(&scratch.path().join("raw.img"), disk_mib)?;

    let default_boot = Summary::of(&plain).expect("boots");
    let debian_boot = Summary::of(&debian).expect("boots");
    let glibc_boot = Summary::of(&glibc).expect("boots");
    Ok(Guests {
        packages: img.packages.len(),
        image_mib,
        image_cold_s: image_cold.as_secs_f64(),
        image_cached_ms: image_cached.as_secs_f64() * 1e3,
        debian_over_default: debian_boot.median_ms / default_boot.median_ms,
        glibc_over_default: glibc_boot.median_ms / default_boot.median_ms,
        default_boot,
        debian_boot,
        debian_restore: Summary::of(&restored).expect("restores"),
        glibc_initrd_mib: added as f64 / 1048576.0,
        glibc_boot,
        disk_mib,
        guest_write_mibs: gw,
        guest_read_mibs: gr,
        host_write_mibs: hw,
        host_read_mibs: hr,
    })
}
