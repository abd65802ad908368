//! Loading the kernel modules the agent needs, in `modules.dep` order.
//!
//! The wanted names come from `/etc/provium/modules` (written by the host
//! when it builds the default guest), else a built-in list. Modules that are
//! built into the kernel, or absent from `modules.dep`, are skipped quietly:
//! a custom image may not need them.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsRawFd;

use crate::log;

const DEFAULT_WANTED: &[&str] = &["virtio_mmio", "virtio_pci", "virtio_console", "virtio_rng"];

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Module name of a path in modules.dep: basename without `.ko*`, `-` → `_`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Parses `modules.dep` into name → (path, dependency paths).
fn parse_dep(text: &str) -> HashMap<String, (String, Vec<String>)> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(str::to_string).collect();
        map.insert(module_name(path), (path.trim().to_string(), deps));
    }
    map
}

/// Loads the wanted modules; later calls do nothing (a disk root loads
/// them before the switch, from the initramfs that holds them).
pub fn load_wanted() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let release = kernel_release();
    let dir = format!("/lib/modules/{release}");
    let Ok(dep_text) = std::fs::read_to_string(format!("{dir}/modules.dep")) else {
        return;
    };
    let deps = parse_dep(&dep_text);
    let mut wanted: Vec<String> = match std::fs::read_to_string("/etc/provium/modules") {
        Ok(t) => t.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| l.replace('-', "_")).collect(),
        Err(_) => DEFAULT_WANTED.iter().map(|s| s.to_string()).collect(),
    };
    wanted.extend(asked_on_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default()));
    let mut loaded = HashSet::new();
    for name in wanted {
        load_with_deps(&dir, &deps, &name, &mut loaded);
    }
}

/// The modules `provium.modules=a,b` on the kernel command line asks for
/// (the host adds it for a boot that needs them, e.g. disks).
fn asked_on_cmdline(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("provium.modules="))
        .flat_map(|list| list.split(','))
        .filter(|m| !m.is_empty())
        .map(|m| m.replace('-', "_"))
        .collect()
}

/// Loads `name` after its dependencies (recursively, whatever order
/// modules.dep lists them in); each module at most once.
fn load_with_deps(dir: &str, deps: &HashMap<String, (String, Vec<String>)>, name: &str, loaded: &mut HashSet<String>) {
    let Some((rel, dep_paths)) = deps.get(name) else {
        return;
    };
    if !loaded.insert(name.to_string()) {
        return;
    }
    for dep in dep_paths {
        load_with_deps(dir, deps, &module_name(dep), loaded);
    }
    load_one(dir, rel);
}

fn load_one(dir: &str, rel: &str) {
    let full = format!("{dir}/{rel}");
    let file = match std::fs::File::open(&full) {
        Ok(f) => f,
        Err(e) => {
            log::warn(&format!("module {full}: {e}"));
            return;
        }
    };
    let params = CString::new("").unwrap();
    // SAFETY: finit_module(2) takes the descriptor, a pointer to the module
    // parameters that the kernel reads up to their NUL, and flags. `file`
    // stays open until the end of this function, `params` is a CString that
    // lives as long, and each argument is passed with the width the kernel
    // reads (int, pointer, int) through the variadic syscall.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            log::warn(&format!("finit_module {full}: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_deps_parse() {
        let m = parse_dep(
            "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio.ko:\n",
        );
        assert_eq!(m["virtio_rng"].1, vec!["kernel/drivers/virtio/virtio.ko".to_string()]);
        assert!(m["virtio"].1.is_empty());
        assert_eq!(module_name("a/b/x.ko.xz"), "x");
        assert_eq!(asked_on_cmdline("quiet provium.modules=virtio_blk,loop x=1"), ["virtio_blk", "loop"]);
        assert!(asked_on_cmdline("quiet").is_empty());
    }
}
