//! The disk's volatile write cache, over its backing file: what a real
//! disk's DRAM cache does to writes the host has not flushed yet.
//!
//! The cache holds whole 4 KiB blocks (the last block of the image may be
//! shorter), each either bytes or "all zeroes" (what `TRIM` and
//! `WRITE_ZEROES` of whole blocks leave, at no memory cost). A block enters
//! the cache whole: a write covering part of it first reads the rest from
//! the file. The file is only changed by [`WriteCache::flush`], by a spill
//! past the cap and by [`WriteCache::write_through`]; a write-through also
//! patches any cached copy of its blocks, so the cache stays "the file plus
//! the unflushed writes" and dropping it ([`WriteCache::drop_all`], the power
//! cut) leaves exactly what was made durable.
//!
//! "Durable" means written to the file with `pwrite`: the simulation needs
//! the host page cache to survive, not the host's disk, so nothing here
//! calls `fdatasync`.
//!
//! This file knows nothing of NBD, faults or threads; the caller locks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

pub const BLOCK: u64 = 4096;
/// What an all-zero block counts against the cap (its map entry).
const ZERO_BLOCK_COST: u64 = 64;
/// Largest single `pwrite` a flush builds from adjacent blocks.
const FLUSH_RUN: usize = 4 << 20;

enum Block {
    Data(Box<[u8]>),
    Zero,
}

struct Entry {
    block: Block,
    /// When the block was first dirtied since it was last written back:
    /// the key in `WriteCache::age`.
    born: u64,
}

/// Cached blocks over the backing file.
pub struct WriteCache {
    file: File,
    size: u64,
    cap: u64,
    blocks: BTreeMap<u64, Entry>,
    /// `born` → block index, oldest first: the spill order.
    age: BTreeMap<u64, u64>,
    next_born: u64,
    /// Memory the cached blocks cost, checked against `cap`.
    cost: u64,
    /// Unflushed bytes written back because the cache was full, since the
    /// last flush or power cut: they will survive a power cut.
    spilled: u64,
}

impl WriteCache {
    pub fn new(file: File, size: u64, cap: u64) -> WriteCache {
        WriteCache { file, size, cap, blocks: BTreeMap::new(), age: BTreeMap::new(), next_born: 0, cost: 0, spilled: 0 }
    }

    /// Bytes of the image the cache holds unflushed.
    pub fn dirty_bytes(&self) -> u64 {
        self.blocks.keys().map(|&i| self.block_len(i)).sum()
    }

    /// What the device returns for `offset..offset+len` (checked by the
    /// caller to be inside the image): the file, with cached blocks over it.
    pub fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        let end = offset + len as u64;
        for (&index, entry) in self.blocks.range(offset / BLOCK..end.div_ceil(BLOCK)) {
            let start = index * BLOCK;
            let (from, to) = (start.max(offset), (start + self.block_len(index)).min(end));
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match &entry.block {
                Block::Data(d) => dst.copy_from_slice(&d[(from - start) as usize..(to - start) as usize]),
                Block::Zero => dst.fill(0),
            }
        }
        Ok(buf)
    }

    /// A write the device keeps in its cache.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.for_each_block(offset, data.len() as u64, |cache, index, within, range| {
            let src = &data[range];
            if within == 0 && src.len() as u64 == cache.block_len(index) {
                cache.put(index, Block::Data(src.into()));
            } else {
                cache.patch(index, within, src)?;
            }
            Ok(())
        })?;
        self.spill_past_cap()
    }

    /// Zeroes `offset..offset+len` in the cache (`TRIM`, `WRITE_ZEROES`).
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.for_each_block(offset, len, |cache, index, within, range| {
            if within == 0 && range.len() as u64 == cache.block_len(index) {
                cache.put(index, Block::Zero);
            } else {
                cache.patch(index, within, &vec![0u8; range.len()])?;
            }
            Ok(())
        })?;
        self.spill_past_cap()
    }

    /// A write made durable at once (`FUA`, the host's writes): to the file,
    /// and into any cached copy of its blocks so reads still see it.
    pub fn write_through(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.for_each_block(offset, data.len() as u64, |cache, index, within, range| {
            if cache.blocks.contains_key(&index) {
                cache.patch(index, within, &data[range])?;
            }
            Ok(())
        })
    }

    /// Writes every cached block back to the file, in offset order, adjacent
    /// blocks in one `pwrite`. On an error the blocks not yet written stay.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some((&first, _)) = self.blocks.first_key_value() {
            // A run of adjacent blocks of one kind.
            let zero = matches!(self.blocks[&first].block, Block::Zero);
            let mut end = first;
            let mut run: Vec<u8> = Vec::new();
            while let Some(entry) = self.blocks.get(&end) {
                match (&entry.block, zero) {
                    (Block::Zero, true) => {}
                    (Block::Data(d), false) if run.len() < FLUSH_RUN => run.extend_from_slice(d),
                    _ => break,
                }
                end += 1;
            }
            let start = first * BLOCK;
            if zero {
                self.zero_file(start, (end * BLOCK).min(self.size) - start)?;
            } else {
                self.file.write_all_at(&run, start)?;
            }
            for index in first..end {
                self.remove(index);
            }
        }
        self.spilled = 0;
        Ok(())
    }

    /// Drops every unflushed block (the power cut). Returns the bytes
    /// dropped and the unflushed bytes that had already spilled to the file.
    pub fn drop_all(&mut self) -> (u64, u64) {
        let dropped = self.dirty_bytes();
        let spilled = std::mem::take(&mut self.spilled);
        self.blocks.clear();
        self.age.clear();
        self.cost = 0;
        (dropped, spilled)
    }

    fn block_len(&self, index: u64) -> u64 {
        BLOCK.min(self.size - index * BLOCK)
    }

    /// Calls `f(cache, block index, offset within the block, range of the
    /// request's bytes)` for each block `offset..offset+len` touches.
    fn for_each_block(
        &mut self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut Self, u64, usize, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let next = ((index + 1) * BLOCK).min(end);
            f(self, index, (at - index * BLOCK) as usize, (at - offset) as usize..(next - offset) as usize)?;
            at = next;
        }
        Ok(())
    }

    /// Writes `src` at `within` into block `index`, reading the block from
    /// the file first if it is not cached.
    fn patch(&mut self, index: u64, within: usize, src: &[u8]) -> io::Result<()> {
        let len = self.block_len(index) as usize;
        let mut data = match self.blocks.get_mut(&index).map(|e| &mut e.block) {
            Some(Block::Data(d)) => {
                d[within..within + src.len()].copy_from_slice(src);
                return Ok(());
            }
            Some(Block::Zero) => vec![0u8; len].into_boxed_slice(),
            None => {
                let mut d = vec![0u8; len].into_boxed_slice();
                self.file.read_exact_at(&mut d, index * BLOCK)?;
                d
            }
        };
        data[within..within + src.len()].copy_from_slice(src);
        self.put(index, Block::Data(data));
        Ok(())
    }

    /// Caches `block` as block `index`, keeping its age if it was cached.
    fn put(&mut self, index: u64, block: Block) {
        let cost = self.cost_of(index, &block);
        let born = match self.blocks.get(&index) {
            Some(old) => {
                self.cost -= self.cost_of(index, &old.block);
                old.born
            }
            None => {
                self.next_born += 1;
                self.age.insert(self.next_born, index);
                self.next_born
            }
        };
        self.cost += cost;
        self.blocks.insert(index, Entry { block, born });
    }

    fn remove(&mut self, index: u64) -> Option<Block> {
        let entry = self.blocks.remove(&index)?;
        self.age.remove(&entry.born);
        self.cost -= self.cost_of(index, &entry.block);
        Some(entry.block)
    }

    fn cost_of(&self, index: u64, block: &Block) -> u64 {
        match block {
            Block::Data(_) => self.block_len(index),
            Block::Zero => ZERO_BLOCK_COST,
        }
    }

    /// Past the cap, writes the oldest blocks back until under it, counting
    /// their bytes in `spilled`.
    fn spill_past_cap(&mut self) -> io::Result<()> {
        while self.cost > self.cap {
            let Some((_, &index)) = self.age.first_key_value() else { break };
            let start = index * BLOCK;
            let len = self.block_len(index);
            match &self.blocks[&index].block {
                Block::Data(d) => self.file.write_all_at(d, start)?,
                Block::Zero => self.zero_file(start, len)?,
            }
            self.remove(index);
            self.spilled += len;
        }
        Ok(())
    }

    /// Zeroes a range of the file, as a hole where the filesystem can.
    fn zero_file(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a file descriptor we own, with plain integer
        // arguments; it touches no memory of ours.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        let zeroes = vec![0u8; FLUSH_RUN];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(FLUSH_RUN as u64) as usize;
            self.file.write_all_at(&zeroes[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache over a temporary file of `size` bytes filled with `fill`.
    fn cache(size: u64, fill: u8, cap: u64) -> (WriteCache, File) {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&vec![fill; size as usize], 0).unwrap();
        let peek = file.try_clone().unwrap();
        (WriteCache::new(file, size, cap), peek)
    }

    fn file_bytes(f: &File, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, offset).unwrap();
        b
    }

    #[test]
    fn unflushed_writes_are_read_back_but_not_in_the_file() {
        let (mut c, f) = cache(64 << 10, 0x11, 1 << 20);
        c.write(4096, &[0xab; 8192]).unwrap();
        assert_eq!(c.read(4096, 8192).unwrap(), vec![0xab; 8192]);
        assert_eq!(file_bytes(&f, 4096, 8192), vec![0x11; 8192]);
        assert_eq!(c.dirty_bytes(), 8192);
        c.flush().unwrap();
        assert_eq!(file_bytes(&f, 4096, 8192), vec![0xab; 8192]);
        assert_eq!(c.dirty_bytes(), 0);
    }

    #[test]
    fn partial_and_overlapping_writes_compose_like_a_disk() {
        let (mut c, f) = cache(16 << 10, 0x11, 1 << 20);
        c.write(100, &[1; 5000]).unwrap(); // blocks 0 and 1, both partial
        c.write(4000, &[2; 200]).unwrap(); // across the boundary
        c.write_zeroes(4096, 4096).unwrap(); // all of block 1
        c.write(8000, &[3; 100]).unwrap(); // zero block becomes data
        let mut want = vec![0x11u8; 16 << 10];
        want[100..5100].fill(1);
        want[4000..4200].fill(2);
        want[4096..8192].fill(0);
        want[8000..8100].fill(3);
        assert_eq!(c.read(0, 16 << 10).unwrap(), want);
        assert_eq!(c.read(3990, 20).unwrap(), want[3990..4010]);
        c.flush().unwrap();
        assert_eq!(file_bytes(&f, 0, 16 << 10), want);
        assert_eq!(c.read(0, 16 << 10).unwrap(), want);
    }

    #[test]
    fn the_power_cut_leaves_what_was_flushed_or_written_through() {
        let (mut c, f) = cache(16 << 10, 0x11, 1 << 20);
        c.write(0, &[1; 4096]).unwrap();
        c.flush().unwrap();
        c.write(0, &[2; 4096]).unwrap();
        c.write(8192, &[3; 10]).unwrap();
        c.write_through(10, &[9; 4]).unwrap(); // durable, inside a cached block
        assert_eq!(c.read(8, 8).unwrap(), [2, 2, 9, 9, 9, 9, 2, 2]);
        assert_eq!(c.drop_all(), (8192, 0));
        let mut want = vec![1u8; 4096];
        want[10..14].fill(9);
        assert_eq!(c.read(0, 4096).unwrap(), want);
        assert_eq!(c.read(8192, 10).unwrap(), vec![0x11; 10]);
        assert_eq!(file_bytes(&f, 0, 4096), want);
    }

    #[test]
    fn past_the_cap_the_oldest_blocks_spill_and_are_counted() {
        let (mut c, f) = cache(64 << 10, 0x11, 8192);
        c.write(40960, &[1; 4096]).unwrap(); // oldest
        c.write(0, &[2; 4096]).unwrap();
        c.write(40960, &[4; 4096]).unwrap(); // rewriting keeps its age
        c.write(8192, &[3; 4096]).unwrap(); // third block: one must go
        assert_eq!(file_bytes(&f, 40960, 4096), vec![4; 4096]);
        assert_eq!(file_bytes(&f, 0, 4096), vec![0x11; 4096]);
        assert_eq!(c.drop_all(), (8192, 4096));
        assert_eq!(c.read(40960, 4096).unwrap(), vec![4; 4096]);
        assert_eq!(c.read(0, 4096).unwrap(), vec![0x11; 4096]);
        // A flush forgets the spill: everything is durable anyway.
        c.write(0, &[5; 3 * 4096]).unwrap();
        c.flush().unwrap();
        assert_eq!(c.drop_all(), (0, 0));
    }

    #[test]
    fn zeroes_cost_no_memory_and_flush_as_holes() {
        let size = 8 << 20;
        let (mut c, f) = cache(size, 0x11, 1 << 20);
        c.write_zeroes(0, size).unwrap(); // far more than the cap, no spill
        assert_eq!(c.drop_all(), (size, 0));
        c.write_zeroes(512, size - 1024).unwrap();
        c.flush().unwrap();
        let bytes = file_bytes(&f, 0, size as usize);
        assert!(bytes[..512].iter().chain(&bytes[size as usize - 512..]).all(|&b| b == 0x11));
        assert!(bytes[512..size as usize - 512].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_short_last_block_is_handled() {
        let (mut c, f) = cache(4096 + 512, 0x11, 1 << 20);
        c.write(4096, &[7; 512]).unwrap();
        c.write_zeroes(4096 + 256, 256).unwrap();
        assert_eq!(c.dirty_bytes(), 512);
        c.flush().unwrap();
        assert_eq!(file_bytes(&f, 4096, 512), [[7u8; 256], [0u8; 256]].concat());
    }
}
