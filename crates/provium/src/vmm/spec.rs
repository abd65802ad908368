//! What one QEMU invocation is: the accelerator, the guest hardware
//! ([`Machine`]: memory, CPUs, the device list), where RAM lives, and how the
//! guest starts ([`Boot`]: a kernel, or a migration stream to load).
//!
//! [`Machine`] is what a snapshot records whole (see `snapshot::SnapshotMeta`)
//! and what a restore replays, so a device added here (a NIC, a disk) reaches
//! the command line, the snapshot header and the restore through this one
//! type. Nothing here names a path inside the scratch directory: those are
//! derived when the command line is built (`argv`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which accelerator runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// One guest device and the host end it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Device {
    /// The serial console: a host socket for live access, logged to a file.
    Console,
    /// The agent's virtio-serial port, backed by a host socket.
    Agent,
    /// A virtio-rng fed from a seeded stream provium serves; `-seed` makes
    /// QEMU's own guest-visible randomness repeat too.
    SeededRng { seed: u64 },
    /// A virtio-net NIC whose frames travel as datagrams between QEMU and a
    /// host socket provium binds first (`argv::nic_paths`); which bridge
    /// the host end joins is not the machine's business, so a NIC exists
    /// from boot whether or not it is attached yet.
    Nic { index: u8, mac: Mac },
    /// A virtio-blk disk; the guest reads `serial` in
    /// `/sys/block/vdX/serial` (and the agent links `/dev/disk/by-id/<serial>`).
    Disk { id: String, source: DiskSource, readonly: bool },
}

/// Where a disk's blocks come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiskSource {
    /// An image file QEMU opens itself, never written: the shared root
    /// image of a disk-root guest.
    Image { path: PathBuf },
    /// Served by provium over NBD on a socket in the scratch directory
    /// (`argv::disk_socket`), so faults and power cuts reach the guest.
    Served,
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A locally administered address (`52:54:00:…`, QEMU's prefix) from
    /// FNV-1a over `key`: the same key always gives the same address.
    pub fn derived(key: &str) -> Mac {
        let [_, a, b, c] = fnv1a32(key.as_bytes()).to_be_bytes();
        Mac([0x52, 0x54, 0x00, a, b, c])
    }
}

/// 32-bit FNV-1a: a stable, cheap hash for deriving names and addresses
/// from text (MACs here, bridge subnets in `net`).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for Mac {
    type Error = String;
    fn try_from(s: String) -> Result<Mac, String> {
        let parts: Vec<u8> = s.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
        <[u8; 6]>::try_from(parts).map(Mac).map_err(|_| format!("`{s}` is not a MAC address"))
    }
}

/// The guest's hardware: what a snapshot records and a restore reproduces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub memory_mib: u64,
    pub cpus: u32,
    pub devices: Vec<Device>,
}

impl Machine {
    /// A guest with the devices every provium VM has (console, agent).
    pub fn standard(memory_mib: u64, cpus: u32) -> Machine {
        Machine { memory_mib, cpus, devices: vec![Device::Console, Device::Agent] }
    }

    /// The seed of its seeded RNG, if it has one.
    pub fn rng_seed(&self) -> Option<u64> {
        self.devices.iter().find_map(|d| match d {
            Device::SeededRng { seed } => Some(*seed),
            _ => None,
        })
    }

    /// Its disks served by provium: (id, read-only), in command-line order.
    pub fn served_disks(&self) -> Vec<(String, bool)> {
        self.devices
            .iter()
            .filter_map(|d| match d {
                Device::Disk { id, source: DiskSource::Served, readonly } => Some((id.clone(), *readonly)),
                _ => None,
            })
            .collect()
    }

    /// Its NICs: (index, address), in index order.
    pub fn nics(&self) -> Vec<(u8, Mac)> {
        let mut v: Vec<(u8, Mac)> = self
            .devices
            .iter()
            .filter_map(|d| match d {
                Device::Nic { index, mac } => Some((*index, *mac)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }
}

/// Where guest RAM lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ram {
    /// Anonymous memory: snapshots carry the RAM in QEMU's stream.
    Anonymous,
    /// A shared file (in `/dev/shm`): a snapshot copies the file next to a
    /// stream that skips RAM (`x-ignore-shared`), which is much faster.
    SharedFile(PathBuf),
    /// A private, copy-on-write mapping of the RAM image stored in a
    /// snapshot file at `offset`: a restore loads no RAM at all.
    Image { path: PathBuf, offset: u64 },
}

/// How the guest starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Boot a kernel with an initramfs.
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
        /// The guest's RTC (and so its wall clock) starts here (epoch
        /// seconds) and runs with the VM.
        rtc_base: Option<i64>,
    },
    /// Start with no kernel, waiting for a migration stream (a restore).
    /// The stream overwrites RAM and CPU state, so nothing is loaded first,
    /// and the saved guest's kernel file need not exist anymore.
    Incoming,
}

/// Everything that decides one QEMU invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub accel: Accel,
    pub machine: Machine,
    pub ram: Ram,
    pub boot: Boot,
    /// Directory holding the sockets and the console log.
    pub scratch: PathBuf,
    /// The file behind each disk provium serves, by id (host-side only:
    /// the guest sees the disk, not where it lives).
    pub disk_files: std::collections::BTreeMap<String, PathBuf>,
}

impl LaunchSpec {
    /// The seed of the guest's seeded RNG, if it has one.
    pub fn rng_seed(&self) -> Option<u64> {
        self.machine.rng_seed()
    }
}
