//! Typing into the guest's serial console: [`Vm::send_chars`] and
//! [`Vm::send_key`]. The bytes go into QEMU's console chardev socket
//! (`console.sock`), which feeds the serial port the kernel calls `ttyS0`;
//! whatever reads that terminal (a shell, a getty) gets them. Keys are the
//! bytes a terminal sends for them. There is no keyboard and no display.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::NixosError;
use crate::vm::state::Needs;
use crate::vm::{Vm, VmError, VmState};

/// The keys [`Vm::send_key`] knows, and the bytes a terminal sends for each.
const KEYS: &[(&str, &[u8])] = &[
    ("ret", b"\r"),
    ("enter", b"\r"),
    ("tab", b"\t"),
    ("esc", b"\x1b"),
    ("spc", b" "),
    ("backspace", b"\x7f"),
    ("ctrl-c", b"\x03"),
    ("ctrl-d", b"\x04"),
    ("ctrl-z", b"\x1a"),
    ("up", b"\x1b[A"),
    ("down", b"\x1b[B"),
    ("right", b"\x1b[C"),
    ("left", b"\x1b[D"),
];

/// Their names, in the order errors list them.
pub const NAMES: &[&str] =
    &["ret", "enter", "tab", "esc", "spc", "backspace", "ctrl-c", "ctrl-d", "ctrl-z", "up", "down", "right", "left"];

/// How long a send waits for QEMU to take its bytes (the guest reading
/// them off the serial port) before returning anyway.
const DELIVERY: Duration = Duration::from_secs(2);

/// The bytes of key `name` (case-insensitive), if it is one of [`KEYS`].
pub fn key_bytes(name: &str) -> Option<&'static [u8]> {
    let name = name.to_ascii_lowercase();
    KEYS.iter().find(|(k, _)| *k == name).map(|(_, b)| *b)
}

/// Writes `bytes` into the console socket and waits (up to [`DELIVERY`])
/// until QEMU has read them all: it closes its end after reading our end's
/// EOF, so the next send is read after this one. What QEMU sends us
/// meanwhile is console output, which its log has anyway.
fn deliver(sock: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut s = UnixStream::connect(sock)?;
    s.write_all(bytes)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let deadline = Instant::now() + DELIVERY;
    let mut sink = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

impl Vm {
    fn type_into_console(&mut self, op: &'static str, bytes: &[u8]) -> Result<(), VmError> {
        if self.state() != VmState::Booted {
            return Err(self.wrong_state(op, Needs::Booted));
        }
        let (_, sock) = self.console_paths().expect("a booted VM has a console");
        deliver(&sock, bytes)
            .map_err(|source| self.nixos_error(|vm| NixosError::Console { vm, op, path: sock, source }))
    }

    /// Types `text` into the serial console, as is (`"\r"` is Enter).
    pub fn send_chars(&mut self, text: &[u8]) -> Result<(), VmError> {
        self.type_into_console("send_chars", text)
    }

    /// Presses key `name` on the serial console (see [`NAMES`]).
    pub fn send_key(&mut self, name: &str) -> Result<(), VmError> {
        let bytes =
            key_bytes(name).ok_or_else(|| self.nixos_error(|vm| NixosError::UnknownKey { vm, key: name.into() }))?;
        self.type_into_console("send_key", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_listed_and_names_ignore_case() {
        assert_eq!(KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>(), NAMES);
        assert_eq!(key_bytes("RET"), Some(&b"\r"[..]));
        assert_eq!(key_bytes("ctrl-c"), Some(&b"\x03"[..]));
        assert_eq!(key_bytes("up"), Some(&b"\x1b[A"[..]));
        assert_eq!(key_bytes("f1"), None);
    }

    #[test]
    fn a_send_waits_until_the_other_end_has_read_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"console output").unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        deliver(&path, b"echo hi\r").unwrap();
        assert_eq!(reader.join().unwrap(), b"echo hi\r");
    }

    #[test]
    fn keys_are_refused_before_the_vm_is_asked() {
        let images = std::sync::Arc::new(crate::image::Images::new(Default::default()));
        let mut vm = Vm::new("k", "default", Default::default(), images, crate::vmm::Accel::Tcg);
        let e = vm.send_key("f1").unwrap_err().to_string();
        assert!(e.starts_with("vm `k`: send_key: unknown key `f1` (known: ret, enter,"), "{e}");
        let e = vm.send_chars(b"x").unwrap_err().to_string();
        assert_eq!(e, "vm `k` is created; send_chars needs a booted VM: call vm:boot() first");
    }
}
