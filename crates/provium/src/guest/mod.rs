//! The guest side of what the host prepares before booting: the embedded **default guest**
//! (profile `default`) and the agent overlay injected into users' initramfs images.
//!
//! ```text
//!  scripts/setup ──► $PROVIUM_GUEST_DIR (default ~/.cache/provium/guest)
//!                      kernel/VERSION                  6.1.0-56-cloud-amd64
//!                      kernel/boot/vmlinuz-<release>   Debian cloud bzImage (LZ4)
//!                      kernel/lib/modules/<release>/   modules, no modules.dep
//!
//!  GuestInputs::locate() ──► prepare(inputs, agent, cache_root)
//!      vmlinux.rs  bzImage ──► uncompressed ELF vmlinux (boots ~0.5 s faster)
//!      kmod.rs     wanted modules ──► + dependencies, in load order, + modules.dep
//!      cpio.rs     newc writer ──► uncompressed initramfs:
//!                    /bin/busybox + one symlink per applet, /etc/passwd, /etc/group,
//!                    /lib/modules/<release>/{modules.dep, kernel/…/*.ko},
//!                    /etc/provium/modules (module names, load order, one per line),
//!                    /sbin/provium-agent (booted with rdinit=/sbin/provium-agent; no /init)
//!  ──► cache_root/default-<key>/{vmlinux,initrd}   (atomic rename; reused while key matches)
//! ```
//!
//! For a user's own initrd, [`overlay_cpio`] gives a small archive holding only
//! `/sbin/provium-agent`, to be appended to the image. The image must first be padded with
//! zeros to a multiple of 4 bytes, or the kernel will not find the appended archive.
//!
//! This module only builds files; it does not start QEMU or choose kernel arguments.

mod cpio;
mod default_guest;
pub(crate) mod kmod;
mod kmod_index;
mod vmlinux;

pub use cpio::CpioWriter;
pub use default_guest::{
    overlay_cpio, prepare, prepare_flavor, Flavor, GuestError, GuestInputs, PreparedGuest, AGENT_PATH, DEFAULT_MODULES,
    DISK_ROOT_MODULES, MODULE_LIST_PATH, ON_DEMAND_MODULES, ROOT_DISK_SERIAL,
};
pub use kmod::KmodError;

/// Pads an initramfs with zeros to a multiple of 4 KiB. On `microvm` QEMU
/// loads the initrd at the very top of RAM while the firmware keeps the ACPI
/// tables in the last page; an initrd whose size is not page-aligned can
/// overlap them (no ACPI, so no virtio devices, and a corrupt initramfs).
/// The kernel skips trailing zeros between and after archives.
pub fn pad_to_page(bytes: &mut Vec<u8>) {
    let len = bytes.len().next_multiple_of(4096);
    bytes.resize(len, 0);
}
pub use vmlinux::VmlinuxError;
