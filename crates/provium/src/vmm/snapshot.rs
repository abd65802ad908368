//! The snapshot file: what provium needs to start a guest again, followed by
//! QEMU's migration stream.
//!
//! ```text
//! offset 0     "PROVSNP1" | u32 LE length | JSON (SnapshotMeta) | zero padding
//! offset 4096  QEMU migration stream (`migrate file:<path>,offset=4096`)
//! [RAM_ALIGN-aligned: the guest RAM image, sparse]
//! [RAM_ALIGN-aligned: each disk provium serves, its whole image, sparse]
//! ```
//!
//! One self-describing file, so `vm:restore("/path")` needs nothing else:
//! the header records the guest's whole machine (memory, CPUs, devices, how
//! its seeded RNG was fed) and which accelerator ran it, which the new QEMU
//! must reproduce for the stream to load.
//!
//! When the guest's RAM is a shared file (`/dev/shm`), the stream skips RAM
//! (`x-ignore-shared`) and the RAM file is copied, holes kept, behind it: a
//! save takes milliseconds, and a restore maps that image copy-on-write
//! instead of loading anything. Otherwise the RAM travels in the stream.
//!
//! The disks provium serves are copied in too, after the migration has
//! flushed them (QEMU flushes its block devices when a migration
//! completes, and provium commits its own write cache before copying): a
//! restore starts each from exactly what the guest had written. A disk QEMU
//! opens itself is read-only (a root image) and is only named, not copied.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::qmp::{Qmp, QmpError};
use super::spec::Machine;

/// Where QEMU's stream starts in the file.
pub const STREAM_OFFSET: u64 = 4096;

const MAGIC: &[u8; 8] = b"PROVSNP1";

/// The snapshot format this build writes and reads.
/// 3: the header records the guest's whole [`Machine`] (devices included).
pub const FORMAT: u32 = 3;

/// Alignment of the RAM image in the file (mappable; huge-page friendly).
pub const RAM_ALIGN: u64 = 2 << 20;

/// Where the RAM image sits in the file, when it is not in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RamImage {
    pub offset: u64,
    pub size: u64,
}

/// Where one served disk's image sits in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskImage {
    pub id: String,
    pub offset: u64,
    pub size: u64,
}

/// A served disk to save: its id, the file behind it, and the live handle
/// whose write cache is committed first.
pub struct DiskFile<'a> {
    pub id: &'a str,
    pub file: &'a Path,
    pub disk: super::nbd::DiskHandle,
}

/// What a restore must reproduce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub format: u32,
    /// The agent protocol version of the guest that was saved.
    pub protocol: u32,
    pub profile: String,
    pub accel: String,
    /// The saved guest's hardware, which the restoring QEMU must reproduce
    /// exactly for the stream to load.
    pub machine: Machine,
    /// Set when the VM booted with `initial_time`: the guest clock then
    /// continues from the saved moment instead of jumping to the host's.
    pub initial_time: Option<f64>,
    /// The RAM image behind the stream (`None`: RAM is in the stream).
    #[serde(default)]
    pub ram: Option<RamImage>,
    /// The served disks' images behind it.
    #[serde(default)]
    pub disks: Vec<DiskImage>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("cannot read snapshot `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a provium snapshot ({why})")]
    NotASnapshot { path: PathBuf, why: String },
    #[error(
        "snapshot `{path}` was written by an incompatible provium (snapshot format {format}, agent protocol \
         {protocol}; this build uses {FORMAT} and {}); take it again",
        provium_protocol::PROTOCOL_VERSION
    )]
    Incompatible { path: PathBuf, format: u32, protocol: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("cannot write `{path}`: {why}")]
    Destination { path: PathBuf, why: String },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("cannot replace `{path}`")]
    Replace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU could not save the guest to `{path}`: {why}")]
    Migration { path: PathBuf, why: String },
    /// Copying the guest's RAM file behind the stream failed (`step`).
    #[error("cannot save the guest's RAM into `{path}` ({step})")]
    Ram {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot save disk `{id}` into `{path}`")]
    Disk {
        path: PathBuf,
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the header of snapshot `{path}`")]
    Header {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The QMP `channels` argument naming the stream in a snapshot file
/// (structured, so paths with commas need no escaping).
pub fn file_channel(path: &Path) -> Value {
    json!({"channels": [{
        "channel-type": "main",
        "addr": {"transport": "file", "filename": path, "offset": STREAM_OFFSET},
    }]})
}

const QMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Saves the guest behind `qmp` into `path`. A running guest is stopped for
/// the save and continues afterwards; a paused one stays paused. `ram_file`
/// is the guest's shared RAM file, if it has one. Returns the bytes the file
/// takes on disk.
pub fn save(
    qmp: &Qmp,
    path: &Path,
    meta: &SnapshotMeta,
    ram_file: Option<&Path>,
    disks: &[DiskFile<'_>],
) -> Result<u64, SaveError> {
    let dest = |why: String| SaveError::Destination { path: path.to_path_buf(), why };
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() && !d.is_dir() => {
            return Err(dest(format!("directory `{}` does not exist", d.display())))
        }
        _ => {}
    }
    match std::fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            return Err(SaveError::Replace { path: path.to_path_buf(), source })
        }
        _ => {}
    }
    // The default bandwidth cap (128 MiB/s) would make a save take 10× longer.
    qmp.execute("migrate-set-parameters", Some(json!({"max-bandwidth": 1u64 << 40})), QMP_TIMEOUT)?;
    set_ignore_shared(qmp, ram_file.is_some())?;
    let running = qmp.execute("query-status", None, QMP_TIMEOUT)?["running"] == true;
    if running {
        qmp.execute("stop", None, QMP_TIMEOUT)?;
    }
    // The RAM file and the disks must be copied while the guest is stopped.
    let outcome = migrate(qmp, path).and_then(|()| {
        let ram = match ram_file {
            Some(ram) => Some(append_ram(path, ram)?),
            None => None,
        };
        let disks = disks.iter().map(|d| append_disk(path, d)).collect::<Result<Vec<_>, _>>()?;
        Ok((ram, disks))
    });
    let resumed = if running { qmp.execute("cont", None, QMP_TIMEOUT).map(drop) } else { Ok(()) };
    let (ram, disks) = match outcome {
        Ok(saved) => saved,
        Err(e) => {
            // No half-written snapshot at the user's path.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    };
    resumed?;
    let meta = SnapshotMeta { ram, disks, ..meta.clone() };
    write_header(path, &meta).map_err(|source| SaveError::Header { path: path.to_path_buf(), source })?;
    Ok(disk_bytes(path))
}

/// Bytes a file takes on disk (holes excluded).
pub fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// The `x-ignore-shared` migration capability: on, a stream leaves out RAM
/// held in shared files. Both ends of a migration must agree.
pub fn set_ignore_shared(qmp: &Qmp, on: bool) -> Result<(), QmpError> {
    let caps = json!({"capabilities": [{"capability": "x-ignore-shared", "state": on}]});
    qmp.execute("migrate-set-capabilities", Some(caps), QMP_TIMEOUT).map(drop)
}

/// Copies the RAM file behind the stream in `path`, at the next
/// [`RAM_ALIGN`] boundary, skipping holes.
fn append_ram(path: &Path, ram: &Path) -> Result<RamImage, SaveError> {
    let (offset, size) = append_aligned(path, ram, "reading the RAM file")
        .map_err(|(step, source)| SaveError::Ram { path: path.to_path_buf(), step, source })?;
    Ok(RamImage { offset, size })
}

/// Commits `d`'s write cache and copies its file behind what `path` holds
/// already, the same way.
fn append_disk(path: &Path, d: &DiskFile<'_>) -> Result<DiskImage, SaveError> {
    let failed = |source| SaveError::Disk { path: path.to_path_buf(), id: d.id.to_string(), source };
    d.disk.flush().map_err(failed)?;
    let (offset, size) = append_aligned(path, d.file, "reading the disk file").map_err(|(_, source)| failed(source))?;
    Ok(DiskImage { id: d.id.to_string(), offset, size })
}

/// Copies `src` (`what` is the failed step when it cannot be read) behind what `path` holds, at the
/// next [`RAM_ALIGN`] boundary, skipping holes: its (offset, size), or the
/// step that failed.
fn append_aligned(path: &Path, src: &Path, what: &'static str) -> Result<(u64, u64), (&'static str, std::io::Error)> {
    let step = |step: &'static str| move |e| (step, e);
    let dst = std::fs::OpenOptions::new().write(true).open(path).map_err(step("opening the snapshot"))?;
    let end = dst.metadata().map_err(step("measuring the snapshot"))?.len();
    let src = std::fs::File::open(src).map_err(|e| (what, e))?;
    let size = src.metadata().map_err(|e| (what, e))?.len();
    let offset = end.div_ceil(RAM_ALIGN) * RAM_ALIGN;
    super::sparse::copy_data(&src, &dst, offset, size).map_err(step("copying"))?;
    Ok((offset, size))
}

/// Writes served disk `image` of snapshot `path` to `dest` (created or
/// truncated), holes kept.
pub fn extract_disk(path: &Path, image: &DiskImage, dest: &Path) -> std::io::Result<()> {
    let src = std::fs::File::open(path)?;
    let dst = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(dest)?;
    dst.set_len(image.size)?;
    super::sparse::copy_range(&src, image.offset, &dst, 0, image.size)
}

fn migrate(qmp: &Qmp, path: &Path) -> Result<(), SaveError> {
    let failed = |why: String| SaveError::Migration { path: path.to_path_buf(), why };
    qmp.execute("migrate", Some(file_channel(path)), QMP_TIMEOUT)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let info = qmp.execute("query-migrate", None, QMP_TIMEOUT)?;
        match info["status"].as_str().unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(failed(info["error-desc"].as_str().unwrap_or("no reason given").to_string()))
            }
            _ if std::time::Instant::now() >= deadline => {
                let _ = qmp.execute("migrate_cancel", None, QMP_TIMEOUT);
                return Err(failed("not finished after 300s; cancelled".into()));
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
}

/// Writes the header into the first [`STREAM_OFFSET`] bytes of `path`
/// (after QEMU wrote its stream behind them).
pub fn write_header(path: &Path, meta: &SnapshotMeta) -> std::io::Result<()> {
    let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    let mut head = Vec::with_capacity(STREAM_OFFSET as usize);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(json.len() as u32).to_le_bytes());
    head.extend_from_slice(&json);
    if head.len() > STREAM_OFFSET as usize {
        return Err(std::io::Error::other("snapshot header larger than its slot"));
    }
    head.resize(STREAM_OFFSET as usize, 0);
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&head)?;
    f.sync_data()
}

/// Reads and checks the header of `path`.
pub fn read_header(path: &Path) -> Result<SnapshotMeta, SnapshotFileError> {
    let io = |source| SnapshotFileError::Io { path: path.to_path_buf(), source };
    let not = |why: &str| SnapshotFileError::NotASnapshot { path: path.to_path_buf(), why: why.to_string() };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut head = vec![0u8; STREAM_OFFSET as usize];
    f.read_exact(&mut head).map_err(|_| not("shorter than its header"))?;
    if &head[..8] != MAGIC {
        return Err(not("bad magic"));
    }
    let len = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as usize;
    let json = head.get(12..12 + len).ok_or_else(|| not("header length out of range"))?;
    let meta: SnapshotMeta = serde_json::from_slice(json).map_err(|e| not(&format!("bad header: {e}")))?;
    if meta.format != FORMAT || meta.protocol != provium_protocol::PROTOCOL_VERSION {
        return Err(SnapshotFileError::Incompatible {
            path: path.to_path_buf(),
            format: meta.format,
            protocol: meta.protocol,
        });
    }
    let size = f.metadata().map_err(io)?.len();
    if size <= STREAM_OFFSET {
        return Err(not("no migration stream after the header"));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            format: FORMAT,
            protocol: provium_protocol::PROTOCOL_VERSION,
            profile: "default".into(),
            accel: "tcg".into(),
            machine: Machine {
                memory_mib: 512,
                cpus: 1,
                devices: vec![
                    super::super::spec::Device::Console,
                    super::super::spec::Device::Agent,
                    super::super::spec::Device::SeededRng { seed: 7 },
                ],
            },
            initial_time: None,
            ram: Some(RamImage { offset: RAM_ALIGN, size: 1 << 20 }),
            disks: vec![DiskImage { id: "data".into(), offset: 2 * RAM_ALIGN, size: 1 << 20 }],
        }
    }

    #[test]
    fn header_round_trips_in_front_of_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.snap");
        let mut body = vec![0u8; STREAM_OFFSET as usize];
        body.extend_from_slice(b"QEVM stream");
        std::fs::write(&p, &body).unwrap();
        write_header(&p, &meta()).unwrap();
        assert_eq!(read_header(&p).unwrap(), meta());
        let all = std::fs::read(&p).unwrap();
        assert_eq!(&all[STREAM_OFFSET as usize..], b"QEVM stream");
    }

    #[test]
    fn rejects_other_files_and_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"hello").unwrap();
        assert!(matches!(read_header(&p), Err(SnapshotFileError::NotASnapshot { .. })));
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        assert!(read_header(&p).unwrap_err().to_string().contains("bad magic"));
        let mut m = meta();
        m.format = 99;
        write_header(&p, &m).unwrap();
        let e = read_header(&p).unwrap_err().to_string();
        assert!(e.contains("incompatible") && e.contains("take it again"), "{e}");
        assert!(matches!(read_header(&dir.path().join("missing")), Err(SnapshotFileError::Io { .. })));
    }
}
