//! QEMU's command line, built from a [`LaunchSpec`] by small pure functions
//! that each return the arguments for one concern. Every QEMU provium starts
//! (a boot, a restore, the KVM probe) gets its argv from [`launch_argv`].
//! Nothing here touches the file system or spawns anything, so the whole
//! command line is snapshot-tested.

use std::path::{Path, PathBuf};

use super::spec::{Accel, Boot, Device, DiskSource, LaunchSpec, Ram};

/// The sockets and logs of one VM inside its scratch directory.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub qmp: PathBuf,
    pub agent: PathBuf,
    pub console_sock: PathBuf,
    pub console_log: PathBuf,
}

impl VmPaths {
    pub fn in_dir(dir: &Path) -> VmPaths {
        VmPaths {
            qmp: dir.join("qmp.sock"),
            agent: dir.join("agent.sock"),
            console_sock: dir.join("console.sock"),
            console_log: dir.join("console.log"),
        }
    }
}

/// The name of the virtio-serial port the agent opens in the guest.
pub const AGENT_PORT_NAME: &str = "provium.agent";

fn s(v: &str) -> String {
    v.to_string()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A path inside a QEMU `key=value,…` option: commas doubled.
fn opt_path(p: &Path) -> String {
    path(p).replace(',', ",,")
}

/// `-machine`, `-accel`, `-cpu`: microvm is the fastest machine to boot.
pub fn machine_args(accel: Accel) -> Vec<String> {
    let mut v = vec![
        s("-machine"),
        s("microvm,acpi=on,pit=off,pic=off,rtc=on,memory-backend=mem"),
        s("-accel"),
        s(accel.as_str()),
    ];
    if accel == Accel::Kvm {
        v.extend([s("-cpu"), s("host")]);
    }
    v
}

pub fn resources_args(memory_mib: u64, cpus: u32) -> Vec<String> {
    vec![s("-m"), format!("{memory_mib}M"), s("-smp"), cpus.to_string()]
}

/// The RAM backend the machine's `memory-backend=mem` names.
pub fn ram_args(ram: &Ram, memory_mib: u64) -> Vec<String> {
    let backend = match ram {
        Ram::Anonymous => format!("memory-backend-ram,id=mem,size={memory_mib}M"),
        Ram::SharedFile(p) => {
            format!("memory-backend-file,id=mem,size={memory_mib}M,mem-path={},share=on", opt_path(p))
        }
        Ram::Image { path: p, offset } => {
            format!("memory-backend-file,id=mem,size={memory_mib}M,mem-path={},offset={offset},share=off", opt_path(p))
        }
    };
    vec![s("-object"), backend]
}

/// No default devices, no graphics, and a guest reboot ends QEMU.
pub fn base_args() -> Vec<String> {
    vec![s("-nodefaults"), s("-no-user-config"), s("-display"), s("none"), s("-no-reboot")]
}

pub fn kernel_args(kernel: &Path, initrd: &Path, cmdline: &str) -> Vec<String> {
    vec![s("-kernel"), path(kernel), s("-initrd"), path(initrd), s("-append"), s(cmdline)]
}

/// The serial console: a socket for live access, everything logged to a file.
pub fn console_args(p: &VmPaths) -> Vec<String> {
    vec![
        s("-chardev"),
        format!(
            "socket,id=console0,path={},server=on,wait=off,logfile={},logappend=on",
            path(&p.console_sock),
            path(&p.console_log)
        ),
        s("-serial"),
        s("chardev:console0"),
    ]
}

/// The agent's virtio-serial port, backed by a host Unix socket.
pub fn agent_args(p: &VmPaths) -> Vec<String> {
    vec![
        s("-device"),
        s("virtio-serial-device,max_ports=2"),
        s("-chardev"),
        format!("socket,id=agent0,path={},server=on,wait=off", path(&p.agent)),
        s("-device"),
        format!("virtserialport,chardev=agent0,name={AGENT_PORT_NAME}"),
    ]
}

pub fn qmp_args(p: &VmPaths) -> Vec<String> {
    vec![s("-qmp"), format!("unix:{},server=on,wait=off", path(&p.qmp))]
}

/// The socket (in the scratch directory) a seeded virtio-rng asks for
/// bytes on; provium answers (see [`super::rng`]).
pub const RNG_SOCKET: &str = "rng.sock";

/// A seeded virtio-rng: `/dev/hwrng` reads bytes from the seed, served by
/// provium over [`RNG_SOCKET`] (QEMU's EGD protocol), so the same seed gives
/// the same bytes whatever else QEMU does; `-seed` makes QEMU's own
/// guest-visible randomness repeat too.
pub fn rng_args(seed: u64, scratch: &Path) -> Vec<String> {
    vec![
        s("-seed"),
        seed.to_string(),
        s("-chardev"),
        format!("socket,id=rngsrc,path={}", path(&scratch.join(RNG_SOCKET))),
        s("-object"),
        s("rng-egd,id=rng0,chardev=rngsrc"),
        s("-device"),
        s("virtio-rng-device,rng=rng0"),
    ]
}

/// The seeded byte stream, taken a piece at a time.
pub struct SeededStream {
    x: u64,
    pending: Vec<u8>,
}

impl SeededStream {
    pub fn new(seed: u64) -> SeededStream {
        let x = seed ^ 0x9e37_79b9_7f4a_7c15;
        SeededStream { x: if x == 0 { 1 } else { x }, pending: Vec::new() }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            // xorshift64*: not cryptographic, and need not be.
            self.x ^= self.x >> 12;
            self.x ^= self.x << 25;
            self.x ^= self.x >> 27;
            self.pending.extend_from_slice(&self.x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        self.pending.drain(..n).collect()
    }
}

/// `len` pseudo-random bytes from `seed` (the start of its [`SeededStream`]).
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    SeededStream::new(seed).take(len)
}

/// The guest's clock starts at `secs` and runs with the VM (not the host).
pub fn rtc_args(secs: i64) -> Vec<String> {
    vec![s("-rtc"), format!("base={},clock=vm", crate::units::utc_timestamp(secs))]
}

/// The arguments for one device.
fn device_args(device: &Device, paths: &VmPaths, scratch: &Path) -> Vec<String> {
    match device {
        Device::Console => console_args(paths),
        Device::Agent => agent_args(paths),
        Device::SeededRng { seed } => rng_args(*seed, scratch),
        Device::Nic { index, mac } => nic_args(*index, *mac, scratch),
        Device::Disk { id, source, readonly } => disk_args(id, source, *readonly, scratch),
    }
}

/// The socket provium serves disk `id` on (NBD), in the scratch directory.
pub fn disk_socket(id: &str, scratch: &Path) -> PathBuf {
    scratch.join(format!("disk-{id}.sock"))
}

/// A virtio-blk disk whose serial is its id. A served disk is an NBD
/// client of provium; QEMU's write cache stays on (the guest sees a
/// volatile cache and flushes it), and what is flushed is provium's
/// business (see `nbd`).
pub fn disk_args(id: &str, source: &DiskSource, readonly: bool, scratch: &Path) -> Vec<String> {
    let ro = if readonly { ",read-only=on" } else { "" };
    let node = match source {
        DiskSource::Image { path: p } => {
            format!("node-name=disk-{id},driver=raw,file.driver=file,file.filename={}{ro}", opt_path(p))
        }
        DiskSource::Served => format!(
            "node-name=disk-{id},driver=nbd,server.type=unix,server.path={},export={id}{ro}",
            opt_path(&disk_socket(id, scratch))
        ),
    };
    vec![s("-blockdev"), node, s("-device"), format!("virtio-blk-device,id=blk-{id},drive=disk-{id},serial={id}")]
}

/// The two ends of NIC `index` in the scratch directory: the socket QEMU
/// binds (frames for the guest are sent to it) and the one provium binds
/// (QEMU sends the guest's frames to it).
pub fn nic_paths(index: u8, scratch: &Path) -> (PathBuf, PathBuf) {
    (scratch.join(format!("nic-{index}.sock")), scratch.join(format!("port-{index}.sock")))
}

/// A virtio-net NIC over a datagram socket pair (see [`nic_paths`]). The
/// guest sees it as `eth<index>` (NICs probe in command-line order).
pub fn nic_args(index: u8, mac: crate::vmm::Mac, scratch: &Path) -> Vec<String> {
    let (qemu_end, host_end) = nic_paths(index, scratch);
    vec![
        s("-netdev"),
        format!(
            "dgram,id=nic{index},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            opt_path(&qemu_end),
            opt_path(&host_end)
        ),
        s("-device"),
        format!("virtio-net-device,netdev=nic{index},mac={mac}"),
    ]
}

/// The whole command line (without the program name).
pub fn launch_argv(spec: &LaunchSpec) -> Vec<String> {
    let paths = VmPaths::in_dir(&spec.scratch);
    let m = &spec.machine;
    let mut v = Vec::new();
    v.extend(machine_args(spec.accel));
    v.extend(resources_args(m.memory_mib, m.cpus));
    v.extend(ram_args(&spec.ram, m.memory_mib));
    v.extend(base_args());
    match &spec.boot {
        Boot::Kernel { kernel, initrd, cmdline, .. } => v.extend(kernel_args(kernel, initrd, cmdline)),
        Boot::Incoming => v.extend([s("-incoming"), s("defer")]),
    }
    for d in &m.devices {
        v.extend(device_args(d, &paths, &spec.scratch));
    }
    v.extend(qmp_args(&paths));
    if let Boot::Kernel { rtc_base: Some(t), .. } = &spec.boot {
        v.extend(rtc_args(*t));
    }
    v
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo`. Passing it as
/// `tsc_early_khz` spares the guest a TSC calibration that sometimes hangs
/// under emulation.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

/// What every guest on provium's machine needs on its command line, added
/// unless the command line sets the same parameter:
/// - `panic=-1`: a panicking kernel ends QEMU at once (the boot error then
///   quotes the panic) instead of hanging until the agent timeout;
/// - `tsc=reliable`: under load on an emulated CPU the clocksource watchdog
///   otherwise declares the TSC unstable and the guest falls back to jiffies
///   (4 ms steps);
/// - `tsc_early_khz`: spares the TSC calibration that sometimes hangs a
///   microvm boot.
pub fn machine_cmdline() -> Vec<String> {
    let mut v = vec!["panic=-1".to_string(), "tsc=reliable".to_string()];
    if let Some(khz) = host_tsc_khz() {
        v.push(format!("tsc_early_khz={khz}"));
    }
    v
}

/// The kernel command line: the profile's, then `extra` parameters the
/// profile does not set itself, then what provium needs.
/// `console=ttyS0` is added unless present (the serial port is what we log);
/// `rdinit=` when the agent is injected.
/// Whether `cmdline` sets `rdinit=` to something other than the agent.
pub fn pins_other_rdinit(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|t| t.starts_with("rdinit=") && t != "rdinit=/sbin/provium-agent")
}

pub fn kernel_cmdline(base: &str, inject_agent: bool, extra: &[String]) -> String {
    let mut parts: Vec<String> = base.split_whitespace().map(str::to_string).collect();
    let key = |p: &str| p.split('=').next().unwrap_or(p).to_string();
    for e in extra {
        if !parts.iter().any(|p| key(p) == key(e)) {
            parts.push(e.clone());
        }
    }
    if !parts.iter().any(|p| p == "console=ttyS0" || p.starts_with("console=ttyS0,")) {
        parts.push(s("console=ttyS0"));
    }
    if inject_agent && !parts.iter().any(|p| p == "rdinit=/sbin/provium-agent") {
        parts.push(s("rdinit=/sbin/provium-agent"));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::vmm::spec::Machine;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            accel: Accel::Tcg,
            machine: Machine::standard(256, 1),
            ram: Ram::SharedFile(PathBuf::from("/dev/shm/provium-0/1-2-a/ram")),
            boot: Boot::Kernel {
                kernel: PathBuf::from("/cache/vmlinux"),
                initrd: PathBuf::from("/cache/initrd.cpio"),
                cmdline: s("console=ttyS0 quiet"),
                rtc_base: None,
            },
            scratch: PathBuf::from("/tmp/provium-0/1-1-a"),
            disk_files: Default::default(),
        }
    }

    #[test]
    fn tcg_launch_argv() {
        insta::assert_snapshot!(launch_argv(&spec()).join("\n"));
    }

    #[test]
    fn determinism_knobs() {
        assert_eq!(crate::units::utc_timestamp(0), "1970-01-01T00:00:00");
        assert_eq!(crate::units::utc_timestamp(1_700_000_000), "2023-11-14T22:13:20");
        assert_eq!(crate::units::utc_timestamp(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(seeded_bytes(42, 100), seeded_bytes(42, 100));
        assert_ne!(seeded_bytes(42, 100), seeded_bytes(43, 100));
        let mut sp = spec();
        sp.machine.devices.push(Device::SeededRng { seed: 42 });
        if let Boot::Kernel { rtc_base, .. } = &mut sp.boot {
            *rtc_base = Some(1_700_000_000);
        }
        let v = launch_argv(&sp);
        let rng = v.iter().position(|a| a == "-seed").unwrap();
        let tail: Vec<&String> = v[rng..rng + 8].iter().chain(&v[v.len() - 2..]).collect();
        assert_eq!(
            tail,
            [
                "-seed",
                "42",
                "-chardev",
                "socket,id=rngsrc,path=/tmp/provium-0/1-1-a/rng.sock",
                "-object",
                "rng-egd,id=rng0,chardev=rngsrc",
                "-device",
                "virtio-rng-device,rng=rng0",
                "-rtc",
                "base=2023-11-14T22:13:20,clock=vm"
            ]
        );
    }

    #[test]
    fn a_nic_is_a_datagram_pair_in_the_scratch_directory() {
        let mut sp = spec();
        let mac = crate::vmm::Mac::derived("a#0");
        sp.machine.devices.push(Device::Nic { index: 0, mac });
        let v = launch_argv(&sp);
        let i = v.iter().position(|a| a == "-netdev").unwrap();
        assert_eq!(
            v[i + 1],
            "dgram,id=nic0,local.type=unix,local.path=/tmp/provium-0/1-1-a/nic-0.sock,remote.type=unix,\
             remote.path=/tmp/provium-0/1-1-a/port-0.sock"
        );
        assert_eq!(v[i + 3], format!("virtio-net-device,netdev=nic0,mac={mac}"));
        assert!(mac.to_string().starts_with("52:54:00:"));
        assert_eq!(crate::vmm::Mac::try_from(mac.to_string()), Ok(mac));
        assert_ne!(crate::vmm::Mac::derived("a#1"), mac);
    }

    #[test]
    fn a_restore_waits_for_the_stream_instead_of_loading_a_kernel() {
        let mut sp = spec();
        sp.boot = Boot::Incoming;
        let v = launch_argv(&sp);
        assert!(!v.iter().any(|a| a == "-kernel" || a == "-initrd" || a == "-append"));
        let i = v.iter().position(|a| a == "-incoming").unwrap();
        assert_eq!(v[i + 1], "defer");
    }

    #[test]
    fn ram_backends() {
        assert_eq!(ram_args(&Ram::Anonymous, 512), ["-object", "memory-backend-ram,id=mem,size=512M"]);
        let image = Ram::Image { path: PathBuf::from("/s/x,1.snap"), offset: 2 << 20 };
        assert_eq!(
            ram_args(&image, 256)[1],
            "memory-backend-file,id=mem,size=256M,mem-path=/s/x,,1.snap,offset=2097152,share=off"
        );
    }

    #[test]
    fn kvm_adds_host_cpu() {
        let v = machine_args(Accel::Kvm);
        assert_eq!(v[3], "kvm");
        assert_eq!(&v[4..], ["-cpu", "host"]);
    }

    #[test]
    fn cmdline_adds_console_and_rdinit_once() {
        assert_eq!(kernel_cmdline("quiet", true, &[]), "quiet console=ttyS0 rdinit=/sbin/provium-agent");
        assert_eq!(
            kernel_cmdline("console=ttyS0,115200 rdinit=/sbin/provium-agent", true, &[s("x=1")]),
            "console=ttyS0,115200 rdinit=/sbin/provium-agent x=1"
        );
        assert_eq!(kernel_cmdline("", false, &[]), "console=ttyS0");
        assert_eq!(
            kernel_cmdline("panic=5", false, &[s("panic=-1"), s("tsc=reliable")]),
            "panic=5 tsc=reliable console=ttyS0"
        );
    }
}
