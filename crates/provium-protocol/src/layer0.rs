//! Layer-0 messages: raw `syscall(2)`, `ioctl(2)` on an open file handle,
//! and reads of the agent's own memory.
//!
//! A call names its buffers by index. The agent copies every buffer into
//! memory of its own, writes buffer addresses where the call says, makes the
//! call, and answers with the buffers as the kernel left them:
//!
//! ```text
//! SyscallCall { nr: 20 (writev), args: [fd, _, 1, 0, 0, 0],
//!               bufs: [iovec (16 bytes), "hello"],
//!               ptrs: [{buf: 0, arg: 1}],                 args[1]  = &bufs[0]
//!               nested: [{parent: 0, child: 1, offset: 0}] } bufs[0][0..8] = &bufs[1] (u64 LE)
//! ```
//!
//! A syscall that fails is a *result* (`ret` < 0, `errno` set), not an
//! error: the request itself worked. Malformed calls (an index out of range,
//! a pointer that does not fit in its parent, too many bytes) are refused
//! before anything runs; [`SyscallCall::check`] and [`IoctlCall::check`]
//! say why, and host and agent both use them. Buffers travel as MessagePack
//! `bin`.

use serde::{Deserialize, Serialize};

/// The most bytes the buffers (and `data`) of one call may hold in total,
/// and the longest [`crate::Request::ReadMem`]: both ride inside one frame.
pub const MAX_LAYER0_BYTES: usize = 8 * 1024 * 1024;

/// The arguments a syscall takes at most.
pub const SYSCALL_ARGS: usize = 6;

/// `args[arg]` receives the address of `bufs[buf]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufArg {
    pub buf: u32,
    pub arg: u8,
}

/// The address of `bufs[child]` is written as a little-endian u64 into
/// `bufs[parent]` at byte `offset` (a struct that points at another buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedPtr {
    pub parent: u32,
    pub child: u32,
    pub offset: u32,
}

/// One raw syscall (x86_64 numbers) made by the agent process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallCall {
    pub nr: i64,
    /// Integer arguments; a slot named by [`SyscallCall::ptrs`] is replaced
    /// by a buffer address.
    pub args: [i64; SYSCALL_ARGS],
    #[serde(with = "bin_list")]
    pub bufs: Vec<Vec<u8>>,
    pub ptrs: Vec<BufArg>,
    pub nested: Vec<NestedPtr>,
}

impl SyscallCall {
    /// A call with integer arguments only.
    pub fn new(nr: i64, args: [i64; SYSCALL_ARGS]) -> SyscallCall {
        SyscallCall { nr, args, ..Default::default() }
    }

    /// Adds a buffer whose address goes into argument `arg` (`None`: only
    /// pointed at from another buffer); returns its index.
    pub fn buf(&mut self, data: impl Into<Vec<u8>>, arg: Option<u8>) -> u32 {
        let index = self.bufs.len() as u32;
        self.bufs.push(data.into());
        if let Some(arg) = arg {
            self.ptrs.push(BufArg { buf: index, arg });
        }
        index
    }

    /// Points `bufs[parent]` at `offset` to `bufs[child]`.
    pub fn nest(&mut self, parent: u32, child: u32, offset: u32) {
        self.nested.push(NestedPtr { parent, child, offset });
    }

    /// Why the agent would refuse this call, if it would.
    pub fn check(&self) -> Result<(), String> {
        check_total(self.bufs.iter().map(Vec::len))?;
        let n = self.bufs.len();
        for p in &self.ptrs {
            if p.buf as usize >= n {
                return Err(format!("pointer argument names buffer {} of {n} (0-based)", p.buf));
            }
            if p.arg as usize >= SYSCALL_ARGS {
                return Err(format!("pointer argument slot {} is past the {SYSCALL_ARGS} arguments", p.arg));
            }
        }
        for p in &self.nested {
            for (what, i) in [("parent", p.parent), ("child", p.child)] {
                if i as usize >= n {
                    return Err(format!("nested pointer: {what} buffer {i} of {n} (0-based)"));
                }
            }
            fits(p.offset, self.bufs[p.parent as usize].len(), &format!("buffer {} (0-based)", p.parent))?;
        }
        Ok(())
    }
}

/// What a syscall returned, and its buffers afterwards (in call order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallOutcome {
    pub ret: i64,
    /// 0 unless the call failed.
    pub errno: i32,
    #[serde(with = "bin_list")]
    pub out_bufs: Vec<Vec<u8>>,
}

/// `ioctl(fd, cmd, &data)` on the descriptor behind an open file handle.
/// `bufs[i]`'s address is written into `data` at `ptr_offsets[i]`. With
/// empty `data` the third argument is 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoctlCall {
    /// A file handle of [`crate::Request::OpenFile`].
    pub handle: u64,
    pub cmd: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    #[serde(with = "bin_list")]
    pub bufs: Vec<Vec<u8>>,
    pub ptr_offsets: Vec<u32>,
}

impl IoctlCall {
    /// Why the agent would refuse this call, if it would.
    pub fn check(&self) -> Result<(), String> {
        check_total(std::iter::once(self.data.len()).chain(self.bufs.iter().map(Vec::len)))?;
        if self.ptr_offsets.len() != self.bufs.len() {
            return Err(format!(
                "{} buffer(s) but {} pointer offset(s): each buffer needs its offset in `data`",
                self.bufs.len(),
                self.ptr_offsets.len()
            ));
        }
        for &off in &self.ptr_offsets {
            fits(off, self.data.len(), "`data`")?;
        }
        Ok(())
    }

    /// The same call as a [`SyscallCall`] on descriptor `fd`: `data` is
    /// buffer 0, `bufs` follow, each nested into `data`.
    pub fn to_syscall(&self, nr: i64, fd: i32) -> SyscallCall {
        let mut call = SyscallCall::new(nr, [fd as i64, self.cmd as i64, 0, 0, 0, 0]);
        let data = call.buf(self.data.clone(), (!self.data.is_empty()).then_some(2));
        for (b, &off) in self.bufs.iter().zip(&self.ptr_offsets) {
            let child = call.buf(b.clone(), None);
            call.nest(data, child, off);
        }
        call
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoctlOutcome {
    pub ret: i64,
    pub errno: i32,
    #[serde(with = "serde_bytes")]
    pub out_data: Vec<u8>,
    #[serde(with = "bin_list")]
    pub out_bufs: Vec<Vec<u8>>,
}

/// What a [`crate::Request::ReadMem`] read: the bytes (fewer than asked
/// when the range runs into unmapped memory), or the errno of a read that
/// got none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum MemRead {
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Errno(i32),
}

fn check_total(lens: impl Iterator<Item = usize>) -> Result<(), String> {
    let total: usize = lens.sum();
    if total > MAX_LAYER0_BYTES {
        return Err(format!("buffers hold {total} bytes, more than the {MAX_LAYER0_BYTES} one call may carry"));
    }
    Ok(())
}

/// An 8-byte pointer written at `offset` must lie inside `len` bytes.
fn fits(offset: u32, len: usize, what: &str) -> Result<(), String> {
    if offset as usize + 8 > len {
        return Err(format!("a pointer at offset {offset} does not fit in {what} of {len} bytes"));
    }
    Ok(())
}

/// A list of byte strings as a MessagePack array of `bin`.
mod bin_list {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<ByteBuf>::deserialize(d)?.into_iter().map(ByteBuf::into_vec).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_call_passes_and_each_bad_index_is_named() {
        let mut c = SyscallCall::new(20, [3, 0, 1, 0, 0, 0]);
        let iov = c.buf(vec![0; 16], Some(1));
        let data = c.buf(b"hello".to_vec(), None);
        c.nest(iov, data, 0);
        assert_eq!(c.check(), Ok(()));

        let mut bad = c.clone();
        bad.ptrs[0].arg = 6;
        assert!(bad.check().unwrap_err().contains("slot 6"), "{:?}", bad.check());
        let mut bad = c.clone();
        bad.ptrs[0].buf = 2;
        assert!(bad.check().unwrap_err().contains("buffer 2 of 2"));
        let mut bad = c.clone();
        bad.nested[0].child = 9;
        assert!(bad.check().unwrap_err().contains("child buffer 9"));
        let mut bad = c.clone();
        bad.nested[0].offset = 9; // 9 + 8 > 16
        assert!(bad.check().unwrap_err().contains("offset 9 does not fit in buffer 0"));
        let mut big = SyscallCall::new(0, [0; 6]);
        big.buf(vec![0; MAX_LAYER0_BYTES + 1], None);
        assert!(big.check().unwrap_err().contains("more than"));
    }

    #[test]
    fn an_ioctl_becomes_a_syscall_with_data_first() {
        let io =
            IoctlCall { handle: 1, cmd: 0x541b, data: vec![0; 16], bufs: vec![b"x".to_vec()], ptr_offsets: vec![8] };
        assert_eq!(io.check(), Ok(()));
        let c = io.to_syscall(16, 7);
        assert_eq!(c.args[..2], [7, 0x541b]);
        assert_eq!(c.ptrs, [BufArg { buf: 0, arg: 2 }]);
        assert_eq!(c.nested, [NestedPtr { parent: 0, child: 1, offset: 8 }]);
        assert_eq!(c.check(), Ok(()));
        // No data: the argument stays 0.
        let bare = IoctlCall { handle: 1, cmd: 5, ..Default::default() }.to_syscall(16, 7);
        assert!(bare.ptrs.is_empty());

        let uneven = IoctlCall { bufs: vec![vec![], vec![]], ..io.clone() };
        assert!(uneven.check().unwrap_err().contains("2 buffer(s) but 1"), "{:?}", uneven.check());
        let uneven = IoctlCall { ptr_offsets: vec![], ..io.clone() };
        assert!(uneven.check().unwrap_err().contains("1 buffer(s) but 0 pointer offset(s)"));
        let outside = IoctlCall { ptr_offsets: vec![9], ..io };
        assert!(outside.check().unwrap_err().contains("offset 9 does not fit in `data` of 16 bytes"));
    }
}
