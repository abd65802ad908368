//! A VM's data disks: which disks a boot gives the guest, the per-VM file
//! behind each, and what a test does to them (host-side sector access,
//! faults the guest sees, a power cut, detaching).
//!
//! Every data disk is served by provium (`vmm::nbd`) from a file of its
//! own that lives as long as the [`Vm`]: after a shutdown the host still
//! reads and writes it, and two VMs never share one. A disk made from an image starts as a copy of it (the
//! image itself is never written); a blank one is a sparse file. A snapshot
//! carries each disk's contents and a restore writes them back here.
//!
//! Ids: a profile's disks are `disk<i>` unless named, a boot's `boot<i>`;
//! the guest reads the id as the disk's serial
//! (`/sys/block/vdX/serial`, and the agent's `/dev/disk/by-id/<id>`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Vm, VmError};
use crate::cleanup::ScratchDir;
use crate::config::{check_disk_id, DiskDecl, DiskFormat};
use crate::vmm::nbd::{DiskHandle, Faults, NbdError};
use crate::vmm::snapshot::SnapshotMeta;
use crate::vmm::{Device, DiskSource, Machine};

/// Sector size of `read_sectors` / `write_sectors`.
pub const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("vm `{vm}`: disk id `{id}` is already attached by the profile; give the boot's disk a different id")]
    TakenByProfile { vm: String, id: String },
    #[error("vm `{vm}`: disk id `{id}` is used twice in boot option `disks`; give each disk its own id")]
    UsedTwice { vm: String, id: String },
    #[error("vm `{vm}`: {0}", .message)]
    BadId { vm: String, message: String },
    #[error(
        "vm `{vm}`: disk `{id}`: no image at `{path}` (provium does not create one; give `size` for a blank disk)"
    )]
    NoImage { vm: String, id: String, path: PathBuf },
    #[error("vm `{vm}`: disk `{id}` needs `image` (a file to start from) or `size` (a blank disk)")]
    NoSize { vm: String, id: String },
    #[error("vm `{vm}`: disk `{id}`: cannot prepare its file from `{from}`: {why}")]
    Prepare { vm: String, id: String, from: String, why: String },
    #[error("vm:disk: no disk `{id}` attached to vm `{vm}` (its disks: {known})")]
    Unknown { vm: String, id: String, known: String },
    #[error("disk:{op}: disk `{id}` of vm `{vm}` is detached")]
    Detached { vm: String, id: String, op: &'static str },
    #[error("disk:{op}: {message}")]
    Io { op: &'static str, message: String },
    #[error("disk:fault_inject: unknown mode `{0}` (valid: eio_read, eio_write, slow)")]
    UnknownFault(String),
    #[error("disk:power_cut: vm `{vm}` is not running, so disk `{id}` has no unflushed writes to lose")]
    NotRunning { vm: String, id: String },
}

/// One data disk of a VM.
#[derive(Debug, Clone)]
pub struct DiskState {
    pub id: String,
    pub readonly: bool,
    /// The per-VM file the disk is served from.
    pub file: PathBuf,
    /// Faults set by the test (a restore starts without any).
    pub faults: Faults,
    pub detached: bool,
}

impl DiskState {
    /// The faults the guest's I/O sees: the test's, or every I/O failing
    /// once the disk is detached.
    fn guest_faults(&self) -> Faults {
        if self.detached {
            Faults { eio_read: true, eio_write: true, slow: false }
        } else {
            self.faults
        }
    }
}

/// The data disks of one VM, in the order the guest sees them.
#[derive(Default)]
pub struct Disks {
    dir: Option<ScratchDir>,
    disks: Vec<DiskState>,
}

impl Disks {
    pub fn ids(&self) -> Vec<String> {
        self.disks.iter().map(|d| d.id.clone()).collect()
    }

    fn find(&self, id: &str) -> Option<&DiskState> {
        self.disks.iter().find(|d| d.id == id)
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut DiskState> {
        self.disks.iter_mut().find(|d| d.id == id)
    }

    fn dir(&mut self, vm: &str) -> std::io::Result<PathBuf> {
        if self.dir.is_none() {
            self.dir = Some(ScratchDir::new(&format!("{vm}-disks"))?);
        }
        Ok(self.dir.as_ref().expect("just made").path().to_path_buf())
    }

    /// The disks of a boot: the profile's, then the boot's, each a fresh
    /// file (a VM boots only from `created`: its first boot, or after a lab
    /// restore forgot a run the lab's snapshot did not hold, whose disks
    /// must not survive either); the machine gets one served device per
    /// disk. Returns id → file.
    pub fn plan_boot(
        &mut self,
        vm: &str,
        profile: &[DiskDecl],
        boot: &[DiskDecl],
        machine: &mut Machine,
    ) -> Result<std::collections::BTreeMap<String, PathBuf>, DiskError> {
        let mut wanted: Vec<(String, DiskDecl)> = Vec::new();
        for (i, d) in profile.iter().enumerate() {
            wanted.push((d.id.clone().unwrap_or_else(|| format!("disk{i}")), d.clone()));
        }
        let from_profile = wanted.len();
        for (i, d) in boot.iter().enumerate() {
            let id = d.id.clone().unwrap_or_else(|| format!("boot{i}"));
            check_disk_id(&id).map_err(|message| DiskError::BadId { vm: vm.to_string(), message })?;
            if wanted[..from_profile].iter().any(|(w, _)| *w == id) {
                return Err(DiskError::TakenByProfile { vm: vm.to_string(), id });
            }
            if wanted[from_profile..].iter().any(|(w, _)| *w == id) {
                return Err(DiskError::UsedTwice { vm: vm.to_string(), id });
            }
            wanted.push((id, d.clone()));
        }
        let mut next = Vec::new();
        let mut files = std::collections::BTreeMap::new();
        for (id, decl) in wanted {
            let dir = self.dir(vm).map_err(|e| DiskError::Prepare {
                vm: vm.to_string(),
                id: id.clone(),
                from: "a scratch directory".into(),
                why: e.to_string(),
            })?;
            let file = dir.join(format!("{id}.raw"));
            make_file(vm, &id, &decl, &file)?;
            let state =
                DiskState { id: id.clone(), readonly: decl.readonly, file, faults: Faults::default(), detached: false };
            machine.devices.push(Device::Disk { id: id.clone(), source: DiskSource::Served, readonly: state.readonly });
            files.insert(id, state.file.clone());
            next.push(state);
        }
        self.disks = next;
        Ok(files)
    }

    /// Before a restore: the served disks of `meta`, each written back from
    /// the snapshot into this VM's file for it. Returns id → file.
    pub fn restore_from(
        &mut self,
        vm: &str,
        snapshot: &Path,
        meta: &SnapshotMeta,
    ) -> Result<std::collections::BTreeMap<String, PathBuf>, DiskError> {
        let mut files = std::collections::BTreeMap::new();
        let mut next = Vec::new();
        for (id, readonly) in meta.machine.served_disks() {
            let failed = |why: String| DiskError::Prepare {
                vm: vm.to_string(),
                id: id.clone(),
                from: snapshot.display().to_string(),
                why,
            };
            let image = meta
                .disks
                .iter()
                .find(|d| d.id == id)
                .ok_or_else(|| failed("the snapshot holds no image of it".into()))?;
            let dir = self.dir(vm).map_err(|e| failed(e.to_string()))?;
            let file = dir.join(format!("{id}.raw"));
            crate::vmm::snapshot::extract_disk(snapshot, image, &file).map_err(|e| failed(e.to_string()))?;
            files.insert(id.clone(), file.clone());
            next.push(DiskState { id, readonly, file, faults: Faults::default(), detached: false });
        }
        self.disks = next;
        Ok(files)
    }
}

/// Makes the per-VM file of a disk: a copy of its image (converted to raw
/// when it is qcow2), grown to `size` if that is larger, or a sparse file
/// of `size`.
fn make_file(vm: &str, id: &str, decl: &DiskDecl, file: &Path) -> Result<(), DiskError> {
    let failed = |from: &str, why: String| DiskError::Prepare {
        vm: vm.to_string(),
        id: id.to_string(),
        from: from.to_string(),
        why,
    };
    let _ = std::fs::remove_file(file);
    match &decl.image {
        Some(image) => {
            if !image.is_file() {
                return Err(DiskError::NoImage { vm: vm.to_string(), id: id.to_string(), path: image.clone() });
            }
            let shown = image.display().to_string();
            let format = decl.format.unwrap_or_else(|| sniff_format(image));
            match format {
                DiskFormat::Raw => {
                    let src = std::fs::File::open(image).map_err(|e| failed(&shown, e.to_string()))?;
                    let dst = std::fs::File::create(file).map_err(|e| failed(&shown, e.to_string()))?;
                    let len = src.metadata().map_err(|e| failed(&shown, e.to_string()))?.len();
                    crate::vmm::sparse::copy_data(&src, &dst, 0, len).map_err(|e| failed(&shown, e.to_string()))?;
                }
                DiskFormat::Qcow2 => {
                    let out = Command::new(crate::vmm::process::qemu_img_binary())
                        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
                        .arg(image)
                        .arg(file)
                        .output()
                        .map_err(|e| failed(&shown, format!("cannot run qemu-img: {e} (run scripts/setup)")))?;
                    if !out.status.success() {
                        return Err(failed(&shown, String::from_utf8_lossy(&out.stderr).trim().to_string()));
                    }
                }
            }
            let f = std::fs::OpenOptions::new().write(true).open(file).map_err(|e| failed(&shown, e.to_string()))?;
            let len = f.metadata().map_err(|e| failed(&shown, e.to_string()))?.len();
            let want = decl.size.unwrap_or(len).max(len).next_multiple_of(SECTOR);
            f.set_len(want).map_err(|e| failed(&shown, e.to_string()))?;
        }
        None => {
            let size = decl.size.ok_or_else(|| DiskError::NoSize { vm: vm.to_string(), id: id.to_string() })?;
            let f = std::fs::File::create(file).map_err(|e| failed("a blank disk", e.to_string()))?;
            f.set_len(size.next_multiple_of(SECTOR)).map_err(|e| failed("a blank disk", e.to_string()))?;
        }
    }
    Ok(())
}

/// qcow2 images start with `QFI\xfb`; anything else is taken as raw.
fn sniff_format(image: &Path) -> DiskFormat {
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(image).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
    if read.is_ok() && magic == *b"QFI\xfb" {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    }
}

/// Parses one `fault_inject` mode into `faults`.
pub fn add_fault(faults: &mut Faults, mode: &str) -> Result<(), DiskError> {
    match mode {
        "eio_read" => faults.eio_read = true,
        "eio_write" => faults.eio_write = true,
        "slow" => faults.slow = true,
        other => return Err(DiskError::UnknownFault(other.to_string())),
    }
    Ok(())
}

/// The modes set in `faults`, sorted.
pub fn fault_names(faults: &Faults) -> Vec<&'static str> {
    let mut v = Vec::new();
    if faults.eio_read {
        v.push("eio_read");
    }
    if faults.eio_write {
        v.push("eio_write");
    }
    if faults.slow {
        v.push("slow");
    }
    v
}

/// What `power_cut` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCutReport {
    pub dropped_bytes: u64,
    /// Unflushed bytes the disk had to write back early (its cache was
    /// full), which the cut could not take back.
    pub spilled_bytes: u64,
}

impl Vm {
    /// The ids of its data disks, in the order the guest sees them.
    pub fn disk_ids(&self) -> Vec<String> {
        self.disks.ids()
    }

    fn disk_state(&self, id: &str) -> Result<&DiskState, DiskError> {
        self.disks.find(id).ok_or_else(|| DiskError::Unknown {
            vm: self.name().to_string(),
            id: id.to_string(),
            known: match self.disks.ids() {
                ids if ids.is_empty() => "none; declare them with boot{disks = …} or the profile's `disks`".into(),
                ids => ids.join(", "),
            },
        })
    }

    /// Checks `id` names a disk of this VM (`vm:disk(id)`).
    pub fn check_disk(&self, id: &str) -> Result<(), VmError> {
        self.disk_state(id).map(drop).map_err(VmError::from)
    }

    /// The live handle of disk `id`, if its QEMU runs.
    fn live_disk(&self, id: &str) -> Option<DiskHandle> {
        self.instance_ref().and_then(|i| i.disk(id))
    }

    /// The handle the host reaches disk `id` through: the live one while
    /// its QEMU runs, else one opened on its file with the faults the test
    /// set, so both go through the same checks.
    fn disk_handle(&self, id: &str, op: &'static str) -> Result<DiskHandle, DiskError> {
        let d = self.disk_state(id)?;
        if d.detached {
            return Err(DiskError::Detached { vm: self.name().to_string(), id: id.to_string(), op });
        }
        if let Some(h) = self.live_disk(id) {
            return Ok(h);
        }
        let opened = std::fs::OpenOptions::new().read(true).write(!d.readonly).open(&d.file);
        let h = opened.map_err(NbdError::Image).and_then(|f| DiskHandle::open(f, d.readonly)).map_err(|e| {
            DiskError::Io { op, message: format!("{}: {}", d.file.display(), crate::errors::chain(&e)) }
        })?;
        h.set_faults(d.faults);
        Ok(h)
    }

    /// Gives the running guest's disk `id` the faults its state says.
    fn push_faults(&self, id: &str) {
        if let (Some(d), Some(h)) = (self.disks.find(id), self.live_disk(id)) {
            h.set_faults(d.guest_faults());
        }
    }

    /// The disk's size in bytes.
    pub fn disk_size(&self, id: &str) -> Result<u64, VmError> {
        let d = self.disk_state(id)?;
        if let Some(h) = self.live_disk(id) {
            return Ok(h.size());
        }
        std::fs::metadata(&d.file)
            .map(|m| m.len())
            .map_err(|e| DiskError::Io { op: "size", message: format!("{}: {e}", d.file.display()) }.into())
    }

    /// `count` sectors from sector `first`, as the guest would read them
    /// (its unflushed writes included).
    pub fn read_sectors(&self, id: &str, first: u64, count: u64) -> Result<Vec<u8>, VmError> {
        let h = self.disk_handle(id, "read_sectors")?;
        let read = h.read(first * SECTOR, (count * SECTOR) as usize);
        read.map_err(|e| DiskError::Io { op: "read_sectors", message: e.to_string() }.into())
    }

    /// Writes `data` at sector `first` (durably, as if flushed). `data`
    /// need not fill whole sectors.
    pub fn write_sectors(&self, id: &str, first: u64, data: &[u8]) -> Result<(), VmError> {
        let h = self.disk_handle(id, "write_sectors")?;
        let written = h.write(first * SECTOR, data);
        written.map_err(|e| DiskError::Io { op: "write_sectors", message: e.to_string() }.into())
    }

    /// Sets fault `mode` on disk `id`; the guest's own I/O sees it at once.
    pub fn fault_inject(&mut self, id: &str, mode: &str) -> Result<(), VmError> {
        self.disk_state(id)?;
        if let Some(d) = self.disks.find_mut(id) {
            add_fault(&mut d.faults, mode)?;
        }
        self.push_faults(id);
        Ok(())
    }

    pub fn clear_faults(&mut self, id: &str) -> Result<(), VmError> {
        self.disk_state(id)?;
        if let Some(d) = self.disks.find_mut(id) {
            d.faults = Faults::default();
        }
        self.push_faults(id);
        Ok(())
    }

    pub fn active_faults(&self, id: &str) -> Result<Vec<&'static str>, VmError> {
        Ok(fault_names(&self.disk_state(id)?.faults))
    }

    /// Loses every write the guest has not flushed to disk `id`, as a power
    /// failure would (follow it with `reset()`: the guest's page cache
    /// still believes the writes happened).
    pub fn power_cut(&self, id: &str) -> Result<PowerCutReport, VmError> {
        self.disk_handle(id, "power_cut")?;
        let h = self
            .live_disk(id)
            .ok_or_else(|| DiskError::NotRunning { vm: self.name().to_string(), id: id.to_string() })?;
        let cut = h.power_cut();
        Ok(PowerCutReport { dropped_bytes: cut.dropped_bytes, spilled_bytes: cut.spilled_bytes })
    }

    /// Detaches disk `id`: the host can no longer read or write it, and
    /// every guest I/O to it fails (microvm cannot unplug a device, so the
    /// guest still lists it). A restore attaches it again.
    pub fn detach_disk(&mut self, id: &str) -> Result<(), VmError> {
        self.disk_state(id)?;
        if let Some(d) = self.disks.find_mut(id) {
            d.detached = true;
        }
        self.push_faults(id);
        Ok(())
    }

    pub fn disk_is_detached(&self, id: &str) -> Result<bool, VmError> {
        Ok(self.disk_state(id)?.detached)
    }

    /// After a launch: gives each served disk the faults the test set.
    pub(super) fn apply_disk_faults(&self) {
        for id in self.disks.ids() {
            self.push_faults(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(id: Option<&str>, size: u64) -> DiskDecl {
        DiskDecl { id: id.map(str::to_string), image: None, format: None, size: Some(size), readonly: false }
    }

    #[test]
    fn boot_disks_get_ids_files_and_devices() {
        let mut disks = Disks::default();
        let mut m = Machine::standard(256, 1);
        let files = disks
            .plan_boot("v", &[decl(Some("data"), 1 << 20)], &[decl(None, 4096), decl(None, 4096)], &mut m)
            .unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["boot0", "boot1", "data"]);
        assert_eq!(m.served_disks(), [("data".to_string(), false), ("boot0".into(), false), ("boot1".into(), false)]);
        assert_eq!(std::fs::metadata(&files["data"]).unwrap().len(), 1 << 20);

        // A second boot (after a lab restore forgot the first run) starts
        // from fresh disks: nothing of the forgotten run survives.
        std::fs::write(&files["data"], vec![7u8; 1 << 20]).unwrap();
        let mut m = Machine::standard(256, 1);
        let again = disks.plan_boot("v", &[decl(Some("data"), 1 << 20)], &[], &mut m).unwrap();
        assert_eq!(std::fs::read(&again["data"]).unwrap(), vec![0u8; 1 << 20]);
        assert_eq!(m.served_disks(), [("data".to_string(), false)]);

        let err = |p: &[DiskDecl], b: &[DiskDecl]| {
            Disks::default().plan_boot("v", p, b, &mut Machine::standard(256, 1)).unwrap_err().to_string()
        };
        assert_eq!(
            err(&[decl(Some("x"), 4096)], &[decl(Some("x"), 4096)]),
            "vm `v`: disk id `x` is already attached by the profile; give the boot's disk a different id"
        );
        assert!(err(&[], &[decl(Some("y"), 1), decl(Some("y"), 1)]).contains("used twice"));
        let missing = DiskDecl { image: Some("/no/such.img".into()), ..decl(Some("m"), 1) };
        assert_eq!(
            err(&[], &[missing]),
            "vm `v`: disk `m`: no image at `/no/such.img` (provium does not create one; give `size` for a blank disk)"
        );
    }

    #[test]
    fn an_image_is_copied_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("base.raw");
        std::fs::write(&image, vec![1u8; 8192]).unwrap();
        let mut disks = Disks::default();
        let d = DiskDecl { image: Some(image.clone()), ..decl(Some("img"), 16384) };
        let files = disks.plan_boot("v", &[], &[d], &mut Machine::standard(256, 1)).unwrap();
        let copy = std::fs::read(&files["img"]).unwrap();
        assert_eq!(copy.len(), 16384, "grown to `size`");
        assert!(copy[..8192].iter().all(|&b| b == 1) && copy[8192..].iter().all(|&b| b == 0));
        assert_ne!(files["img"], image);
        let mut f = Faults::default();
        add_fault(&mut f, "slow").unwrap();
        add_fault(&mut f, "eio_read").unwrap();
        assert_eq!(fault_names(&f), ["eio_read", "slow"]);
        assert_eq!(
            add_fault(&mut f, "boom").unwrap_err().to_string(),
            "disk:fault_inject: unknown mode `boom` (valid: eio_read, eio_write, slow)"
        );
    }

    #[test]
    fn a_qcow2_image_becomes_a_raw_copy_of_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("seed.raw");
        let mut bytes = vec![0u8; 1 << 20];
        bytes[512..517].copy_from_slice(b"qcow2");
        std::fs::write(&raw, &bytes).unwrap();
        let qcow = dir.path().join("seed.qcow2");
        let out = Command::new(crate::vmm::process::qemu_img_binary())
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow)
            .output()
            .expect("qemu-img (qemu-utils; run scripts/setup)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(sniff_format(&qcow), DiskFormat::Qcow2);
        assert_eq!(sniff_format(&raw), DiskFormat::Raw);
        let d = DiskDecl { image: Some(qcow), ..decl(Some("q"), 1) };
        let mut disks = Disks::default();
        let files = disks.plan_boot("v", &[], &[d], &mut Machine::standard(256, 1)).unwrap();
        assert_eq!(std::fs::read(&files["q"]).unwrap(), bytes, "the guest gets the image's contents, raw");
    }
}
