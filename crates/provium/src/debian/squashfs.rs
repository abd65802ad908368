//! The tar stream → a squashfs image, by `tar2sqfs` (squashfs-tools-ng) reading the stream
//! on stdin. Owns the tool's arguments and turning its failures into errors; the stream's
//! contents are the caller's.

use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::unpack::Stats;
use super::{tool, DebianError};

/// Squashfs block compression. The guest kernel has all of these built in; the image is read
/// by a TCG guest, so cheap decompression counts as much as size.
///
/// Measured on the 184 MB tar of `python3 curl` + the kernel's module tree, 2 busy cores,
/// `tar2sqfs -j 2`: lz4 0.36 s → 83.8 MB; zstd level 3 0.58 s → 58.7 MB (level 15, the
/// tool's default, 13.6 s → 50.6 MB); gzip level 1 1.2 s → 63.4 MB (level 9 23 s → 57.2 MB);
/// xz 40 s → 45.2 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Lz4,
    #[default]
    Zstd,
    Gzip,
    Xz,
}

impl Compression {
    /// The name `tar2sqfs -c` takes.
    pub fn name(self) -> &'static str {
        self.args()[1]
    }

    /// The `tar2sqfs` arguments selecting it (with a level chosen for build time).
    pub(super) fn args(self) -> &'static [&'static str] {
        match self {
            Compression::Lz4 => &["-c", "lz4"],
            Compression::Zstd => &["-c", "zstd", "-X", "level=3"],
            Compression::Gzip => &["-c", "gzip", "-X", "level=6"],
            Compression::Xz => &["-c", "xz"],
        }
    }

    /// Parses `lz4`, `zstd`, `gzip` or `xz`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Compression::Lz4, Compression::Zstd, Compression::Gzip, Compression::Xz].into_iter().find(|c| c.name() == name)
    }
}

/// Runs `tar2sqfs` into `image` and calls `feed` with its stdin. An image is only left behind
/// when both succeed (`image` is the caller's temporary name).
pub(super) fn write(
    image: &Path,
    compression: Compression,
    feed: impl FnOnce(&mut dyn Write) -> Result<Stats, DebianError>,
) -> Result<Stats, DebianError> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd = Command::new("tar2sqfs");
    cmd.args(["-q", "-f", "-s", "-j", &jobs.to_string()])
        .args(compression.args())
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    tracing::debug!(command = ?cmd, "running");
    let mut child = cmd.spawn().map_err(|e| tool::spawn_error("tar2sqfs", e))?;
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let stdin = child.stdin.take().expect("piped stdin");
    let mut input = BufWriter::with_capacity(1 << 20, stdin);
    let fed = feed(&mut input).and_then(|stats| {
        input.flush().map_err(DebianError::stream)?;
        Ok(stats)
    });
    drop(input);
    let status = child.wait().map_err(|e| tool::spawn_error("tar2sqfs", e))?;
    let stderr = stderr_reader.join().unwrap_or_default();
    let failed = |status: std::process::ExitStatus| DebianError::Tool {
        tool: "tar2sqfs",
        path: image.to_owned(),
        status: status.to_string(),
        stderr: tool::tail(&stderr),
    };
    match fed {
        // tar2sqfs gave up first: its complaint says why.
        Err(e) if !status.success() && broken_pipe(&e) => Err(failed(status)),
        Err(e) => {
            let _ = std::fs::remove_file(image);
            Err(e)
        }
        Ok(_) if !status.success() => Err(failed(status)),
        Ok(stats) => Ok(stats),
    }
}

fn broken_pipe(e: &DebianError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            return true;
        }
        cur = err.source();
    }
    false
}
