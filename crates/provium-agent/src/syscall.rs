//! Layer-0 requests: `Syscall`, `Ioctl` and `ReadMem` — the kernel as the
//! agent process sees it, with no userspace in between.
//!
//! A call's buffers are copied into memory the agent owns ([`Prepared`]);
//! the addresses the call asks for are written into its arguments and into
//! parent buffers (nested pointers, as little-endian u64s); then
//! `libc::syscall` runs on this request's pool thread, so a syscall that
//! blocks (a `read` on an empty pipe, a `nanosleep`) holds up only its own
//! request. What the kernel returned — including a failure, which is a
//! result here, not an error — goes back with the buffers as they are
//! afterwards. A malformed call (see `SyscallCall::check`) is refused as
//! `BadRequest` before anything runs.
//!
//! This module owns the copying, patching and the calls themselves; the file
//! behind an `Ioctl` handle belongs to [`crate::files`]. It does not police
//! what a call does: a test may point the kernel at any address of the
//! agent, which is the point of layer 0.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use provium_protocol::{
    IoctlCall, IoctlOutcome, MemRead, OpError, OpErrorKind, Response, SyscallCall, SyscallOutcome, MAX_LAYER0_BYTES,
};

use crate::handles;

fn bad_request(op: &str, why: String) -> OpError {
    OpError { kind: OpErrorKind::BadRequest, errno: None, message: format!("{op}: {why}") }
}

/// A call's buffers in agent memory with every pointer patched in, and the
/// arguments that point at them.
struct Prepared {
    nr: i64,
    args: [i64; 6],
    /// Each at least one byte long, so even an empty buffer has an address
    /// the kernel may read a byte at; `lens` are the sizes the host sent.
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
}

impl Prepared {
    /// Copies and patches; fails (naming the problem) on a malformed call.
    fn new(call: SyscallCall) -> Result<Prepared, String> {
        call.check()?;
        let lens: Vec<usize> = call.bufs.iter().map(Vec::len).collect();
        let mut bufs: Vec<Vec<u8>> = call
            .bufs
            .into_iter()
            .map(|mut b| {
                if b.is_empty() {
                    b.push(0);
                }
                b
            })
            .collect();
        // The buffers are never resized from here on, so these addresses
        // stay valid until `bufs` is dropped.
        let addrs: Vec<u64> = bufs.iter_mut().map(|b| b.as_mut_ptr() as u64).collect();
        for p in &call.nested {
            let (parent, off) = (p.parent as usize, p.offset as usize);
            let at = bufs[parent].get_mut(off..off + 8).ok_or("nested pointer outside its parent")?;
            at.copy_from_slice(&addrs[p.child as usize].to_le_bytes());
        }
        let mut args = call.args;
        for p in &call.ptrs {
            args[p.arg as usize] = addrs[p.buf as usize] as i64;
        }
        Ok(Prepared { nr: call.nr, args, bufs, lens })
    }

    /// Makes the call; returns what the kernel returned, the errno of a
    /// failure (0 otherwise) and the buffers at their original sizes.
    fn call(mut self) -> SyscallOutcome {
        let [a, b, c, d, e, f] = self.args;
        // SAFETY: syscall(2) passes six integers to the kernel. Where the
        // request asked for a buffer address, the integer is the address of
        // one of `self.bufs`: live, exclusively owned allocations at least
        // one byte long that are neither moved nor read by Rust until the
        // call returns (their pointers came from `as_mut_ptr`, so the kernel
        // may write through them). Any other integer the test chose is the
        // test's business: a raw syscall can by design unmap or overwrite
        // agent memory, which is what layer 0 offers and documents; nothing
        // here creates a Rust reference to memory the kernel writes.
        let ret = unsafe { libc::syscall(self.nr as libc::c_long, a, b, c, d, e, f) };
        // Only a -1 from the wrapper is a failure: it maps the kernel's
        // -4095..-1 to -1 and errno.
        let errno = if ret == -1 { io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { 0 };
        for (b, &len) in self.bufs.iter_mut().zip(&self.lens) {
            b.truncate(len);
        }
        SyscallOutcome { ret: ret as i64, errno, out_bufs: self.bufs }
    }
}

/// `Syscall`: the call made, whatever it returned.
pub fn syscall(call: SyscallCall) -> Result<Response, OpError> {
    let prepared = Prepared::new(call).map_err(|why| bad_request("syscall", why))?;
    Ok(Response::Syscall(prepared.call()))
}

/// `Ioctl`: `ioctl(fd, cmd, &data)` on the descriptor of a file handle,
/// with `bufs` nested into `data`.
pub fn ioctl(call: IoctlCall) -> Result<Response, OpError> {
    call.check().map_err(|why| bad_request("ioctl", why))?;
    // Holding the `Arc` keeps the descriptor open for the whole call even if
    // the handle is released meanwhile.
    let file = handles::file(call.handle)?;
    let sys = call.to_syscall(libc::SYS_ioctl, file.raw_fd());
    let prepared = Prepared::new(sys).map_err(|why| bad_request("ioctl", why))?;
    let out = prepared.call();
    drop(file);
    // Buffer 0 is `data`, the others are `bufs` in order.
    let mut bufs = out.out_bufs.into_iter();
    let out_data = bufs.next().unwrap_or_default();
    Ok(Response::Ioctl(IoctlOutcome { ret: out.ret, errno: out.errno, out_data, out_bufs: bufs.collect() }))
}

/// `ReadMem`: `len` bytes of the agent's memory at `addr`, read through
/// `/proc/self/mem` so an unmapped address is an errno (EIO), not a crash.
/// A range that runs into unmapped memory gives the bytes before it.
pub fn read_mem(addr: u64, len: u32) -> Result<Response, OpError> {
    let len = len as usize;
    if len > MAX_LAYER0_BYTES {
        return Err(bad_request(
            "read_mem",
            format!("{len} bytes is more than the {MAX_LAYER0_BYTES} one read may carry"),
        ));
    }
    let mem = File::open("/proc/self/mem").map_err(|e| crate::sys::os_error("read_mem: open /proc/self/mem", e))?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match mem.read_at(&mut buf[got..], addr.wrapping_add(got as u64)) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if got == 0 => return Ok(Response::Memory(MemRead::Errno(e.raw_os_error().unwrap_or(libc::EIO)))),
            Err(_) => break,
        }
    }
    buf.truncate(got);
    Ok(Response::Memory(MemRead::Bytes(buf)))
}

#[cfg(test)]
mod tests {
    //! These make real syscalls in the test process, which is what the
    //! agent does in the guest.
    use super::*;

    fn outcome(call: SyscallCall) -> SyscallOutcome {
        match syscall(call) {
            Ok(Response::Syscall(o)) => o,
            other => panic!("{other:?}"),
        }
    }

    fn refusal(call: SyscallCall) -> String {
        match syscall(call) {
            Err(e) if e.kind == OpErrorKind::BadRequest => e.message,
            other => panic!("expected a BadRequest, got {other:?}"),
        }
    }

    #[test]
    fn integer_syscalls_return_what_the_kernel_returned() {
        let pid = outcome(SyscallCall::new(libc::SYS_getpid, [0; 6]));
        assert_eq!((pid.ret, pid.errno), (std::process::id() as i64, 0));
        // close(-1): a failure is a result with errno, not an error.
        let bad = outcome(SyscallCall::new(libc::SYS_close, [-1, 0, 0, 0, 0, 0]));
        assert_eq!((bad.ret, bad.errno), (-1, libc::EBADF));
    }

    #[test]
    fn a_buffer_argument_is_written_by_the_kernel_and_comes_back() {
        let mut call = SyscallCall::new(libc::SYS_uname, [0; 6]);
        call.buf(vec![0; 390], Some(0));
        let out = outcome(call);
        assert_eq!((out.ret, out.errno), (0, 0));
        assert_eq!(out.out_bufs[0].len(), 390);
        assert!(out.out_bufs[0].starts_with(b"Linux"), "{:?}", &out.out_bufs[0][..16]);
    }

    #[test]
    fn a_nested_pointer_is_patched_into_its_parent() {
        let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        // writev(w, &iov, 1) with iov = {&bufs[1], 5}: the base is patched in.
        let mut call = SyscallCall::new(libc::SYS_writev, [std::os::fd::AsRawFd::as_raw_fd(&w) as i64, 0, 1, 0, 0, 0]);
        let mut iov = vec![0u8; 16];
        iov[8..].copy_from_slice(&5u64.to_le_bytes());
        let iov = call.buf(iov, Some(1));
        let data = call.buf(b"hello".to_vec(), None);
        call.nest(iov, data, 0);
        let out = outcome(call);
        assert_eq!((out.ret, out.errno), (5, 0));
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut r, &mut got).unwrap();
        assert_eq!(&got, b"hello");
        // The parent comes back holding the child's address in agent memory.
        let base = u64::from_le_bytes(out.out_bufs[0][..8].try_into().unwrap());
        assert_ne!(base, 0);
        assert_eq!(out.out_bufs[1], b"hello");
    }

    #[test]
    fn out_of_range_pointers_are_refused_before_anything_runs() {
        let mut call = SyscallCall::new(libc::SYS_getpid, [0; 6]);
        let small = call.buf(vec![0; 12], None);
        let child = call.buf(vec![], Some(0));
        call.nest(small, child, 5); // 5 + 8 > 12
        assert!(refusal(call.clone()).contains("offset 5 does not fit in buffer 0 (0-based) of 12 bytes"));
        call.nested[0].offset = 4;
        assert_eq!(outcome(call.clone()).errno, 0, "offset 4 fits exactly");
        call.nested[0].child = 2;
        assert!(refusal(call.clone()).contains("child buffer 2 of 2"));
        call.nested.clear();
        call.ptrs[0].arg = 7;
        assert!(refusal(call).contains("syscall: pointer argument slot 7"));
    }

    #[test]
    fn an_empty_buffer_still_has_an_address_and_comes_back_empty() {
        let mut call = SyscallCall::new(libc::SYS_getcwd, [0, 0, 0, 0, 0, 0]);
        call.buf(vec![], Some(0));
        let out = outcome(call);
        assert_eq!(out.errno, libc::ERANGE, "size 0 is too small for any cwd");
        assert_eq!(out.out_bufs, [Vec::<u8>::new()]);
    }

    #[test]
    fn an_ioctl_runs_on_the_descriptor_of_a_file_handle() {
        let path = std::env::temp_dir().join(format!("provium-agent-ioctl-{}", std::process::id()));
        std::fs::write(&path, b"eleven byte").unwrap();
        let mode = provium_protocol::OpenMode { read: true, ..Default::default() };
        let Ok(Response::Handle(handle)) = crate::files::open(path.to_str().unwrap(), mode, 0o644) else {
            panic!("open failed")
        };
        std::fs::remove_file(&path).unwrap();
        // FIONREAD writes the bytes left as an int at the start of `data`;
        // the buffer's address lands at offset 8.
        let call = IoctlCall {
            handle,
            cmd: libc::FIONREAD,
            data: vec![0; 16],
            bufs: vec![b"b".to_vec()],
            ptr_offsets: vec![8],
        };
        let Ok(Response::Ioctl(out)) = ioctl(call) else { panic!("ioctl failed") };
        assert_eq!((out.ret, out.errno), (0, 0));
        assert_eq!(i32::from_le_bytes(out.out_data[..4].try_into().unwrap()), 11);
        assert_ne!(u64::from_le_bytes(out.out_data[8..].try_into().unwrap()), 0);
        assert_eq!(out.out_bufs, [b"b".to_vec()]);
        // A failing ioctl is a result.
        let Ok(Response::Ioctl(out)) = ioctl(IoctlCall { handle, cmd: 0xdead, ..Default::default() }) else {
            panic!("ioctl failed")
        };
        assert_eq!((out.ret, out.errno), (-1, libc::ENOTTY));
        let _ = handles::remove(handle);
        let gone = ioctl(IoctlCall { handle, cmd: libc::FIONREAD, ..Default::default() }).unwrap_err();
        assert_eq!(gone.kind, OpErrorKind::UnknownHandle);
    }

    #[test]
    fn own_memory_reads_back_and_an_unmapped_address_is_an_errno() {
        let here = b"layer zero".to_vec();
        match read_mem(here.as_ptr() as u64, here.len() as u32).unwrap() {
            Response::Memory(MemRead::Bytes(b)) => assert_eq!(b, here),
            other => panic!("{other:?}"),
        }
        match read_mem(0, 8).unwrap() {
            Response::Memory(MemRead::Errno(e)) => assert_eq!(e, libc::EIO),
            other => panic!("{other:?}"),
        }
        let e = read_mem(0, MAX_LAYER0_BYTES as u32 + 1).unwrap_err();
        assert_eq!(e.kind, OpErrorKind::BadRequest);
    }
}
