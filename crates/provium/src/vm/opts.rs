//! Boot options: what `provium:vm(name, profile, opts)` and `vm:boot(opts)`
//! set, merged per boot over the creation-time ones.

use std::time::Duration;

/// Options for one boot; per-boot options merge over creation-time ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootOpts {
    pub memory: Option<u64>,
    pub cpus: Option<u32>,
    pub kernel_cmdline: Option<String>,
    /// Tokens added after the command line (the profile's, or
    /// `kernel_cmdline`).
    pub kernel_cmdline_append: Option<String>,
    pub agent_timeout: Option<Duration>,
    pub rng_seed: Option<u64>,
    /// Epoch seconds the guest's wall clock starts at.
    pub initial_time: Option<f64>,
    /// Files put into the initramfs before init runs: (path, content, mode).
    pub files: Option<Vec<(String, Vec<u8>, u32)>>,
    /// NICs to create at boot (default `nics::DEFAULT_NICS`, or as many as
    /// the VM is attached to if that is more).
    pub nics: Option<u8>,
    /// Data disks for this boot, after the profile's.
    pub disks: Option<Vec<crate::config::DiskDecl>>,
}

impl BootOpts {
    /// `self` with every unset field taken from `base`.
    pub fn over(&self, base: &BootOpts) -> BootOpts {
        BootOpts {
            memory: self.memory.or(base.memory),
            cpus: self.cpus.or(base.cpus),
            kernel_cmdline: self.kernel_cmdline.clone().or_else(|| base.kernel_cmdline.clone()),
            kernel_cmdline_append: self.kernel_cmdline_append.clone().or_else(|| base.kernel_cmdline_append.clone()),
            agent_timeout: self.agent_timeout.or(base.agent_timeout),
            rng_seed: self.rng_seed.or(base.rng_seed),
            initial_time: self.initial_time.or(base.initial_time),
            files: self.files.clone().or_else(|| base.files.clone()),
            nics: self.nics.or(base.nics),
            disks: self.disks.clone().or_else(|| base.disks.clone()),
        }
    }
}

pub const DEFAULT_MEMORY: u64 = 512 << 20;

pub(super) fn spec_memory_mib(opts: &BootOpts) -> u64 {
    opts.memory.unwrap_or(DEFAULT_MEMORY).div_ceil(1 << 20)
}

/// What a guest of `memory_mib` and `cpus` holds of the pool while its
/// QEMU runs: its RAM plus QEMU's own overhead, and its vCPUs.
pub fn pool_need(memory_mib: u64, cpus: u32) -> crate::pool::ResourceAmount {
    crate::pool::ResourceAmount { memory_bytes: (memory_mib << 20) + crate::pool::VM_OVERHEAD_BYTES, cpus }
}

/// A newc archive of boot-option files (parents created 0755).
pub(super) fn files_cpio(files: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let mut w = crate::guest::CpioWriter::new();
    for (path, content, mode) in files {
        w.file(path, *mode, content);
    }
    w.finish()
}
