//! The console as a [`Stream`]: new bytes of the console log on the host
//! (QEMU appends to it), from where the stream was opened; it ends when the
//! VM stops.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use super::resources::{Class, Site};
use super::stream::{ChunkSource, Stream};
use super::{VmRef, VmState};
use crate::agent::Chunk;
use crate::sync::lock;

/// How often the console log is looked at for new bytes.
pub const POLL: Duration = Duration::from_millis(10);

/// New console bytes, read from the log file from where it was opened.
struct ConsoleSource {
    vm: VmRef,
    log: Option<std::fs::File>,
}

impl ConsoleSource {
    fn alive(&self) -> bool {
        lock(&self.vm).state() == VmState::Booted
    }
}

impl ChunkSource for ConsoleSource {
    fn next(&mut self, timeout: Duration) -> Chunk {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Some(log) = self.log.as_mut() else { return Chunk::Eof };
            match log.read(&mut buf) {
                Ok(n) if n > 0 => {
                    buf.truncate(n);
                    return Chunk::Data(buf);
                }
                Ok(_) => {}
                Err(e) => return Chunk::Failed(format!("console: {e}")),
            }
            if !self.alive() {
                return Chunk::Eof;
            }
            if Instant::now() >= deadline {
                return Chunk::Timeout;
            }
            std::thread::sleep(POLL);
        }
    }

    fn close(&mut self) {
        self.log = None;
    }
}

/// A stream of what the console prints from now on; `None` when the VM
/// does not run (it has no console then).
pub fn open(vm: &VmRef, site: Option<Site>) -> Option<std::io::Result<Stream>> {
    let (log_path, _) = lock(vm).console_paths()?;
    Some((|| {
        let mut log = std::fs::File::open(&log_path)?;
        log.seek(SeekFrom::End(0))?;
        let guard = lock(vm).resources().register(Class::Stream, "console_read", "console", site.clone());
        let source = ConsoleSource { vm: vm.clone(), log: Some(log) };
        Ok(Stream::new(Box::new(source), "console closed", site, Some(guard)))
    })())
}
