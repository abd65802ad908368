//! Why an executable that is there cannot run: a dynamically linked ELF
//! whose interpreter (`PT_INTERP`, the dynamic loader) this guest lacks.
//!
//! The kernel answers `execve` of such a file with `ENOENT`, which shells
//! print as `not found` although the file exists. The agent checks before
//! it runs a program itself, and after a shell reported `X: not found`
//! (exit status 127), and then says what is really missing.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use provium_protocol::ExitStatus;

/// The interpreter `path` names in its program headers when that file does
/// not exist here; `None` for anything else (not ELF, static, loader
/// present, unreadable).
pub fn missing_interpreter(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let interp = interpreter(&file)?;
    (!Path::new(&interp).exists()).then_some(interp)
}

/// What to tell the user about `path` whose loader `interp` is missing.
pub fn explain(path: &str, interp: &str) -> String {
    format!(
        "{path} needs {interp}, which this guest does not have: link it statically, or boot a profile with a C \
         library (`base = \"debian\"` in provium.toml: a Debian userland provium builds)"
    )
}

/// The `PT_INTERP` string of a 64-bit little-endian ELF file.
fn interpreter(file: &File) -> Option<String> {
    let mut header = [0u8; 64];
    (&*file).read_exact(&mut header).ok()?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let phoff = u64_at(&header, 0x20);
    let phentsize = u16_at(&header, 0x36) as u64;
    let phnum = u16_at(&header, 0x38) as u64;
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let mut ph = vec![0u8; phentsize as usize];
    for i in 0..phnum {
        file.read_exact_at(&mut ph, phoff.checked_add(i * phentsize)?).ok()?;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(ph[..4].try_into().unwrap()) != PT_INTERP {
            continue;
        }
        let (offset, size) = (u64_at(&ph, 8), u64_at(&ph, 32));
        if size == 0 || size > 4096 {
            return None;
        }
        let mut name = vec![0u8; size as usize];
        file.read_exact_at(&mut name, offset).ok()?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        return String::from_utf8(name[..end].to_vec()).ok();
    }
    None
}

/// How much of the end of stderr is enough to find the shell's complaint.
pub const STDERR_TAIL: usize = 4096;

/// The line to add to stderr after a command ended with `status`, when it
/// is the shell's 127 for a program whose loader is missing; `stderr` is
/// what the command wrote (only its last [`STDERR_TAIL`] bytes are read).
pub fn after_exit(status: ExitStatus, stderr: &[u8], path: &str) -> Option<Vec<u8>> {
    if status != ExitStatus::Exited(127) {
        return None;
    }
    let why = explain_not_found(&stderr[stderr.len().saturating_sub(STDERR_TAIL)..], path)?;
    Some(format!("provium-agent: {why}\n").into_bytes())
}

/// Finds the program a shell reported as not found in its stderr (`sh:
/// /tmp/hi: not found`, `sh: hi: not found`) when its loader is what is
/// missing; the explanation to add, if any. Names without a slash are
/// looked up in `path` (a `PATH` value).
pub fn explain_not_found(stderr_tail: &[u8], path: &str) -> Option<String> {
    let text = String::from_utf8_lossy(stderr_tail);
    for line in text.lines().rev() {
        let Some(rest) = line.strip_suffix(": not found") else { continue };
        let prog = rest.rsplit_once(": ").map_or(rest, |(_, p)| p).trim();
        let candidates: Vec<String> = if prog.contains('/') {
            vec![prog.to_string()]
        } else {
            path.split(':').filter(|d| !d.is_empty()).map(|d| format!("{d}/{prog}")).collect()
        };
        for cand in candidates {
            if let Some(interp) = missing_interpreter(Path::new(&cand)) {
                return Some(explain(&cand, &interp));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one PT_INTERP program header.
    fn elf_with_interp(interp: &str) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut b[64..];
        ph[..4].copy_from_slice(&3u32.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(interp.len() as u64 + 1).to_le_bytes());
        b.extend_from_slice(interp.as_bytes());
        b.push(0);
        b
    }

    #[test]
    fn a_missing_loader_is_found_and_a_present_one_is_not() {
        let dir = std::env::temp_dir().join(format!("provium-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("needs-missing");
        std::fs::write(&missing, elf_with_interp("/no/such/ld.so")).unwrap();
        assert_eq!(missing_interpreter(&missing).as_deref(), Some("/no/such/ld.so"));
        let present = dir.join("needs-present");
        std::fs::write(&present, elf_with_interp("/bin/sh")).unwrap();
        assert_eq!(missing_interpreter(&present), None);
        let script = dir.join("script");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(missing_interpreter(&script), None);

        let tail = format!("noise\nsh: {}: not found\n", missing.display());
        let said = explain_not_found(tail.as_bytes(), "").unwrap();
        assert!(said.contains("needs /no/such/ld.so, which this guest does not have"), "{said}");
        let by_path = explain_not_found(b"sh: needs-missing: not found\n", dir.to_str().unwrap()).unwrap();
        assert!(by_path.starts_with(&format!("{}", missing.display())), "{by_path}");
        assert_eq!(explain_not_found(b"sh: nothing-here: not found\n", dir.to_str().unwrap()), None);
        let line = after_exit(ExitStatus::Exited(127), tail.as_bytes(), "").unwrap();
        assert!(String::from_utf8(line).unwrap().starts_with("provium-agent: "));
        assert_eq!(after_exit(ExitStatus::Exited(1), tail.as_bytes(), ""), None, "only the shell's 127");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
