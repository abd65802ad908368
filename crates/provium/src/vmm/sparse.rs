//! Copying a sparse file's data without reading its holes (guest RAM files
//! are mostly holes: pages the guest never touched).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

const CHUNK: usize = 1 << 20;

/// The next data region at or after `from`, as `(start, end)`, or `None`
/// past the last one.
fn next_data(f: &File, from: u64, len: u64) -> std::io::Result<Option<(u64, u64)>> {
    if from >= len {
        return Ok(None);
    }
    // SAFETY: lseek(2) takes only integers and touches no memory of ours;
    // `f` keeps the descriptor open for the call. Moving the file offset is
    // harmless: `copy_data` reads and writes only at explicit offsets.
    let start = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        // ENXIO: no data at or after `from`.
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    // SAFETY: lseek(2) again: integers only, on the descriptor `f` keeps
    // open; only the file offset changes.
    let end = unsafe { libc::lseek(f.as_raw_fd(), start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((start as u64, (end as u64).min(len))))
}

/// Copies the first `len` bytes of `src` into `dst` at `dst_offset`, leaving
/// holes where `src` has them; `dst` ends at `dst_offset + len`.
pub fn copy_data(src: &File, dst: &File, dst_offset: u64, len: u64) -> std::io::Result<()> {
    copy_range(src, 0, dst, dst_offset, len)?;
    dst.set_len(dst_offset + len)
}

/// Copies `len` bytes of `src` from `src_offset` into `dst` at `dst_offset`,
/// reading and writing only where `src` has data (`dst`'s size is the
/// caller's business).
pub fn copy_range(src: &File, src_offset: u64, dst: &File, dst_offset: u64, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let end_of_range = src_offset + len;
    let mut pos = src_offset;
    while let Some((start, end)) = next_data(src, pos, end_of_range)? {
        let mut at = start;
        while at < end {
            let n = (end - at).min(CHUNK as u64) as usize;
            src.read_exact_at(&mut buf[..n], at)?;
            dst.write_all_at(&buf[..n], dst_offset + (at - src_offset))?;
            at += n as u64;
        }
        pos = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copies_data_and_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("ram");
        let src = File::options().read(true).write(true).create(true).truncate(true).open(&src_path).unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(b"first page", 0).unwrap();
        src.write_all_at(&[7u8; 3 << 20], 20 << 20).unwrap();
        src.write_all_at(b"last", (64 << 20) - 4).unwrap();
        let dst_path = dir.path().join("snap");
        std::fs::write(&dst_path, b"header").unwrap();
        let dst = File::options().read(true).write(true).open(&dst_path).unwrap();
        copy_data(&src, &dst, 2 << 20, 64 << 20).unwrap();
        let out = std::fs::read(&dst_path).unwrap();
        assert_eq!(out.len(), (66 << 20) as usize);
        assert_eq!(&out[..6], b"header");
        let image = &out[2 << 20..];
        assert_eq!(&image[..10], b"first page");
        assert!(image[20 << 20..23 << 20].iter().all(|&b| b == 7));
        assert!(image[23 << 20..(64 << 20) - 4].iter().all(|&b| b == 0));
        assert_eq!(&image[(64 << 20) - 4..], b"last");
        let allocated = std::fs::metadata(&dst_path).unwrap().blocks() * 512;
        assert!(allocated < 8 << 20, "holes kept: {allocated} bytes allocated");

        // And back out of the middle of the file.
        let back_path = dir.path().join("back");
        let back = File::options().read(true).write(true).create(true).truncate(true).open(&back_path).unwrap();
        back.set_len(64 << 20).unwrap();
        copy_range(&dst, 2 << 20, &back, 0, 64 << 20).unwrap();
        assert_eq!(std::fs::read(&back_path).unwrap(), std::fs::read(&src_path).unwrap());
    }
}
