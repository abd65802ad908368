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

/// Console lines every default guest prints while booting on `microvm`
/// (which has no PCI bus): harmless, and alarming in a failure's excerpt.
const BENIGN_BOOT_LINES: &[&str] =
    &["PCI: Fatal: No config space access function found", "PCI: System does not support PCI"];

/// The last `lines` lines of a console log worth showing with a failure:
/// non-blank, without the known-harmless boot lines. `None` when nothing is
/// left, so that no empty excerpt is printed.
pub fn excerpt(log: &str, lines: usize) -> Option<String> {
    let kept: Vec<&str> = log
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty() && !BENIGN_BOOT_LINES.iter().any(|b| l.ends_with(b)))
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(kept[kept.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn an_excerpt_keeps_the_last_meaningful_lines_or_is_none() {
        let boot = "[    0.41] PCI: Fatal: No config space access function found\r\n\r\n[    0.58] PCI: System does not support PCI\n";
        assert_eq!(excerpt(boot, 20), None);
        let log = format!("{boot}[    3.1] a warning\n\n[    3.2] provium-agent: oops\n");
        assert_eq!(excerpt(&log, 20).unwrap(), "[    3.1] a warning\n[    3.2] provium-agent: oops");
        assert_eq!(excerpt(&log, 1).unwrap(), "[    3.2] provium-agent: oops");
    }
}
