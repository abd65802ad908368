//! Finding and opening the virtio-serial port the host listens on.
//!
//! Ports appear as `/sys/class/virtio-ports/vportNpM/name`; the device node
//! is `/dev/vportNpM` (created by devtmpfs shortly after the driver binds).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn find(name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Some(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    None
}

/// Waits (up to 30 s) for the port named `name` and opens it read-write.
pub fn open(name: &str) -> io::Result<File> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(dev) = find(name) {
            match OpenOptions::new().read(true).write(true).open(&dev) {
                Ok(f) => return Ok(f),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
        } else if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such virtio-serial port"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
