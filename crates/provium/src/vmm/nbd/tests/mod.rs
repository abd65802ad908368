//! Tests of the server as a client sees it: a small framing-only client of
//! our own (handshake, commands, faults, lifecycle), then QEMU's own client
//! (`qemu-io`, `qemu-img`, `qemu-system-x86_64`) in `qemu.rs`.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::protocol::{self as p, Request};
use super::*;

mod qemu;

/// A temporary directory with an image of `size` bytes (all `fill`) and a
/// server on `dir/nbd.sock`.
pub(super) struct Served {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub server: BlockServer,
}

pub(super) fn served(size: u64, fill: u8, readonly: bool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![fill; size as usize]).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(!readonly).open(&image).unwrap();
    // Where provium's command line expects disk `data` of a VM whose scratch is `dir`.
    let socket = crate::vmm::argv::disk_socket("data", dir.path());
    let server = BlockServer::serve(&socket, file, readonly).unwrap();
    Served { dir, image, server }
}

impl Served {
    pub fn socket(&self) -> &Path {
        self.server.socket()
    }

    /// The image file's bytes, bypassing the server.
    pub fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        std::fs::File::open(&self.image).unwrap().read_exact_at(&mut b, offset).unwrap();
        b
    }
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

fn send_option(s: &mut UnixStream, option: u32, data: &[u8]) {
    let mut b = p::IHAVEOPT.to_be_bytes().to_vec();
    b.extend(option.to_be_bytes());
    b.extend((data.len() as u32).to_be_bytes());
    b.extend(data);
    s.write_all(&b).unwrap();
}

/// One option reply: (option, reply type, data).
fn option_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let h = read_n(s, 20);
    assert_eq!(p::be_u64(&h[0..8]), p::OPTION_REPLY_MAGIC);
    let len = p::be_u32(&h[16..20]) as usize;
    (p::be_u32(&h[8..12]), p::be_u32(&h[12..16]), read_n(s, len))
}

/// Greeting and client flags.
fn greet(s: &mut UnixStream, client_flags: u32) {
    let g = read_n(s, 18);
    assert_eq!(p::be_u64(&g[0..8]), p::NBDMAGIC);
    assert_eq!(p::be_u64(&g[8..16]), p::IHAVEOPT);
    assert_eq!(u16::from_be_bytes([g[16], g[17]]), p::FLAG_FIXED_NEWSTYLE | p::FLAG_NO_ZEROES);
    s.write_all(&client_flags.to_be_bytes()).unwrap();
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend(name.as_bytes());
    d.extend((infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend(i.to_be_bytes());
    }
    d
}

/// Connects and negotiates like QEMU does (structured replies refused, then
/// `NBD_OPT_GO`); returns the stream, the size and the transmission flags.
fn connect(socket: &Path) -> (UnixStream, u64, u16) {
    let mut s = UnixStream::connect(socket).unwrap();
    greet(&mut s, p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES);
    send_option(&mut s, 8, &[]); // NBD_OPT_STRUCTURED_REPLY
    assert_eq!(option_reply(&mut s), (8, p::REP_ERR_UNSUP, vec![]));
    send_option(&mut s, p::OPT_GO, &go_data("disk0", &[p::INFO_BLOCK_SIZE]));
    let (mut size, mut flags, mut sizes) = (None, None, None);
    loop {
        let (opt, rep, data) = option_reply(&mut s);
        assert_eq!(opt, p::OPT_GO);
        match rep {
            p::REP_ACK => break,
            p::REP_INFO if data[0..2] == p::INFO_EXPORT.to_be_bytes() => {
                size = Some(p::be_u64(&data[2..10]));
                flags = Some(u16::from_be_bytes([data[10], data[11]]));
            }
            p::REP_INFO if data[0..2] == p::INFO_BLOCK_SIZE.to_be_bytes() => {
                sizes = Some((p::be_u32(&data[2..6]), p::be_u32(&data[6..10]), p::be_u32(&data[10..14])));
            }
            other => panic!("unexpected reply {other:#x}"),
        }
    }
    assert_eq!(sizes, Some((512, 4096, 32 << 20)));
    (s, size.unwrap(), flags.unwrap())
}

fn send_request(s: &mut UnixStream, kind: u16, flags: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) {
    let mut b = Request { flags, kind, cookie, offset, length }.encode().to_vec();
    b.extend(payload);
    s.write_all(&b).unwrap();
}

/// A simple reply: (error, cookie), then `data_len` bytes if no error.
fn reply(s: &mut UnixStream, data_len: usize) -> (u32, u64, Vec<u8>) {
    let h = read_n(s, 16);
    assert_eq!(p::be_u32(&h[0..4]), p::SIMPLE_REPLY_MAGIC);
    let error = p::be_u32(&h[4..8]);
    let data = if error == 0 { read_n(s, data_len) } else { vec![] };
    (error, p::be_u64(&h[8..16]), data)
}

fn call(s: &mut UnixStream, kind: u16, offset: u64, length: u32, payload: &[u8]) -> (u32, Vec<u8>) {
    send_request(s, kind, 0, 7, offset, length, payload);
    let want = if kind == p::CMD_READ { length as usize } else { 0 };
    let (error, cookie, data) = reply(s, want);
    assert_eq!(cookie, 7);
    (error, data)
}

#[test]
fn request_encoding_is_pinned() {
    let r = Request { flags: 1, kind: p::CMD_WRITE, cookie: 0x0102_0304_0506_0708, offset: 4096, length: 512 };
    let b = r.encode();
    assert_eq!(
        b.to_vec(),
        [
            &[0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1][..],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0, 0, 0, 0, 0, 0, 0x10, 0],
            &[0, 0, 2, 0]
        ]
        .concat()
    );
    assert_eq!(Request::decode(&b).unwrap(), r);
    let mut bad = b;
    bad[0] = 0;
    assert!(Request::decode(&bad).is_err());
}

#[test]
fn go_reports_the_size_flags_and_block_sizes() {
    let s = served(1 << 20, 0, false);
    let (_c, size, flags) = connect(s.socket());
    assert_eq!(size, 1 << 20);
    let want =
        p::FLAG_HAS_FLAGS | p::FLAG_SEND_FLUSH | p::FLAG_SEND_FUA | p::FLAG_SEND_TRIM | p::FLAG_SEND_WRITE_ZEROES;
    assert_eq!(flags, want);
}

#[test]
fn options_other_than_the_supported_are_refused_and_info_list_abort_answer() {
    let s = served(1 << 20, 0, true);
    let mut c = UnixStream::connect(s.socket()).unwrap();
    greet(&mut c, p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES);
    for unsupported in [5u32, 8, 10, 11, 99] {
        send_option(&mut c, unsupported, &[]);
        assert_eq!(option_reply(&mut c), (unsupported, p::REP_ERR_UNSUP, vec![]));
    }
    send_option(&mut c, p::OPT_LIST, &[]);
    assert_eq!(option_reply(&mut c), (p::OPT_LIST, p::REP_SERVER, vec![0, 0, 0, 0]));
    assert_eq!(option_reply(&mut c).1, p::REP_ACK);
    send_option(&mut c, p::OPT_INFO, &[0, 0, 0, 9, 1]); // name longer than the data
    assert_eq!(option_reply(&mut c).1, p::REP_ERR_INVALID);
    send_option(&mut c, p::OPT_INFO, &go_data("", &[]));
    let (_, rep, data) = option_reply(&mut c);
    assert_eq!(rep, p::REP_INFO);
    assert_eq!(p::be_u64(&data[2..10]), 1 << 20);
    assert_ne!(u16::from_be_bytes([data[10], data[11]]) & p::FLAG_READ_ONLY, 0);
    assert_eq!(option_reply(&mut c).1, p::REP_INFO); // block sizes
    assert_eq!(option_reply(&mut c).1, p::REP_ACK);
    send_option(&mut c, p::OPT_ABORT, &[]);
    assert_eq!(option_reply(&mut c).1, p::REP_ACK);
    assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0, "the server hangs up after an abort");
}

#[test]
fn export_name_enters_transmission_with_or_without_zeroes() {
    let s = served(1 << 20, 0x5a, false);
    for (client_flags, pad) in [(p::FLAG_C_FIXED_NEWSTYLE, 124), (p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES, 0)] {
        let mut c = UnixStream::connect(s.socket()).unwrap();
        greet(&mut c, client_flags);
        send_option(&mut c, p::OPT_EXPORT_NAME, b"anything");
        let r = read_n(&mut c, 10 + pad);
        assert_eq!(p::be_u64(&r[0..8]), 1 << 20);
        assert!(r[10..].iter().all(|&b| b == 0));
        assert_eq!(call(&mut c, p::CMD_READ, 0, 4, &[]), (0, vec![0x5a; 4]));
        send_request(&mut c, p::CMD_DISC, 0, 0, 0, 0, &[]);
        assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
    }
    assert_eq!(s.server.disk().stats().connections, 2);
}

#[test]
fn commands_read_write_flush_trim_zero_and_check_ranges() {
    let s = served(64 << 10, 0x11, false);
    let disk = s.server.disk();
    let (mut c, ..) = connect(s.socket());
    assert_eq!(call(&mut c, p::CMD_WRITE, 1000, 3000, &[0xab; 3000]).0, 0);
    assert_eq!(call(&mut c, p::CMD_READ, 999, 3002, &[]).1, [&[0x11][..], &[0xab; 3000], &[0x11]].concat());
    assert_eq!(s.file_bytes(1000, 3000), vec![0x11; 3000], "unflushed");
    assert_eq!(call(&mut c, p::CMD_FLUSH, 0, 0, &[]).0, 0);
    assert_eq!(s.file_bytes(1000, 3000), vec![0xab; 3000]);
    assert_eq!(call(&mut c, p::CMD_TRIM, 0, 8192, &[]).0, 0);
    assert_eq!(call(&mut c, p::CMD_WRITE_ZEROES, 8192, 100, &[]).0, 0);
    assert_eq!(call(&mut c, p::CMD_READ, 0, 8292, &[]).1, vec![0; 8292]);
    // Out of range, too big, unknown: errors, and the stream stays in step
    // (the refused write's payload was read).
    assert_eq!(call(&mut c, p::CMD_READ, 64 << 10, 1, &[]).0, p::EINVAL);
    assert_eq!(call(&mut c, p::CMD_READ, u64::MAX, 2, &[]).0, p::EINVAL);
    assert_eq!(call(&mut c, p::CMD_WRITE, (64 << 10) - 1, 2, &[1, 2]).0, p::ENOSPC);
    assert_eq!(call(&mut c, p::CMD_TRIM, 0, (64 << 10) + 1, &[]).0, p::EINVAL);
    assert_eq!(call(&mut c, p::CMD_READ, 0, (32 << 20) + 1, &[]).0, p::EINVAL);
    assert_eq!(call(&mut c, 42, 0, 0, &[]).0, p::EINVAL);
    // A FUA write is in the file at once.
    send_request(&mut c, p::CMD_WRITE, p::CMD_FLAG_FUA, 9, 40960, 4, &[1, 2, 3, 4]);
    assert_eq!(reply(&mut c, 0).0, 0);
    assert_eq!(s.file_bytes(40960, 4), [1, 2, 3, 4]);
    let st = disk.stats();
    assert_eq!((st.writes, st.flushes, st.trims, st.write_zeroes, st.bytes_written), (2, 1, 1, 1, 3004));
    assert_eq!(st.errors, 6);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = served(1 << 20, 0, false);
    let (mut c, ..) = connect(s.socket());
    let mut burst = Vec::new();
    for i in 0..64u64 {
        burst.extend(Request { flags: 0, kind: p::CMD_WRITE, cookie: i, offset: i * 512, length: 512 }.encode());
        burst.extend([i as u8; 512]);
        burst.extend(Request { flags: 0, kind: p::CMD_READ, cookie: 1000 + i, offset: i * 512, length: 512 }.encode());
    }
    c.write_all(&burst).unwrap();
    for i in 0..64u64 {
        assert_eq!(reply(&mut c, 0), (0, i, vec![]));
        assert_eq!(reply(&mut c, 512), (0, 1000 + i, vec![i as u8; 512]));
    }
}

#[test]
fn a_read_only_export_refuses_writes() {
    let s = served(1 << 20, 0x22, true);
    let (mut c, _, flags) = connect(s.socket());
    assert_ne!(flags & p::FLAG_READ_ONLY, 0);
    assert_eq!(call(&mut c, p::CMD_WRITE, 0, 4, &[1; 4]).0, p::EPERM);
    assert_eq!(call(&mut c, p::CMD_WRITE_ZEROES, 0, 4, &[]).0, p::EPERM);
    assert_eq!(call(&mut c, p::CMD_READ, 0, 4, &[]), (0, vec![0x22; 4]));
    let e = s.server.disk().write(0, &[1]).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
}

#[test]
fn faults_reach_the_guest_and_the_host_alike() {
    let s = served(1 << 20, 0x33, false);
    let disk = s.server.disk();
    let (mut c, ..) = connect(s.socket());
    disk.set_faults(Faults { eio_read: true, ..Faults::default() });
    assert_eq!(call(&mut c, p::CMD_READ, 0, 512, &[]).0, p::EIO);
    assert_eq!(call(&mut c, p::CMD_WRITE, 0, 4, &[1; 4]).0, 0);
    let e = disk.read(0, 512).unwrap_err();
    assert!(e.to_string().contains("EIO (fault_inject)"), "{e}");
    disk.set_faults(Faults { eio_write: true, ..Faults::default() });
    assert_eq!(call(&mut c, p::CMD_WRITE, 0, 4, &[2; 4]).0, p::EIO);
    assert_eq!(call(&mut c, p::CMD_TRIM, 0, 4096, &[]).0, p::EIO);
    assert_eq!(call(&mut c, p::CMD_FLUSH, 0, 0, &[]).0, p::EIO);
    assert!(disk.write(0, &[3]).unwrap_err().to_string().contains("EIO (fault_inject)"));
    assert_eq!(call(&mut c, p::CMD_READ, 0, 5, &[]).1, [1, 1, 1, 1, 0x33], "the failed writes changed nothing");
    disk.set_faults(Faults { slow: true, ..Faults::default() });
    assert!(disk.faults().slow);
    let t = std::time::Instant::now();
    assert_eq!(call(&mut c, p::CMD_READ, 0, 1, &[]).0, 0);
    assert!(t.elapsed() >= SLOW_DELAY);
    disk.set_faults(Faults::default());
    assert_eq!(call(&mut c, p::CMD_FLUSH, 0, 0, &[]).0, 0);
    assert_eq!(s.file_bytes(0, 5), [1, 1, 1, 1, 0x33]);
}

#[test]
fn the_host_sees_the_cache_writes_through_and_cuts_the_power() {
    let s = served(1 << 20, 0x44, false);
    let disk = s.server.disk();
    let (mut c, ..) = connect(s.socket());
    assert_eq!(call(&mut c, p::CMD_WRITE, 8192, 4096, &[0xee; 4096]).0, 0);
    assert_eq!(disk.read(8192, 4096).unwrap(), vec![0xee; 4096]);
    assert_eq!(disk.dirty_bytes(), 4096);
    disk.write(0, &[9; 100]).unwrap();
    assert_eq!(s.file_bytes(0, 100), vec![9; 100], "host writes are durable");
    assert_eq!(disk.power_cut(), PowerCut { dropped_bytes: 4096, spilled_bytes: 0 });
    assert_eq!(call(&mut c, p::CMD_READ, 8192, 4, &[]).1, vec![0x44; 4]);
    assert_eq!(call(&mut c, p::CMD_READ, 0, 4, &[]).1, vec![9; 4]);
    assert_eq!(call(&mut c, p::CMD_WRITE, 8192, 4, &[1; 4]).0, 0);
    disk.flush().unwrap();
    assert_eq!(s.file_bytes(8192, 4), vec![1; 4]);
    assert!(matches!(disk.read(1 << 20, 1), Err(DiskIoError::OutOfRange { .. })));
    assert_eq!(disk.size(), 1 << 20);
}

#[test]
fn bad_image_sizes_and_taken_sockets_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("odd.img");
    std::fs::write(&image, [0u8; 1000]).unwrap();
    let file = std::fs::File::open(&image).unwrap();
    let e = BlockServer::serve(&dir.path().join("s"), file, true).err().unwrap();
    assert!(matches!(e, NbdError::ImageSize { size: 1000 }), "{e}");
    let s = served(4096, 0, true);
    let again = std::fs::File::open(&s.image).unwrap();
    assert!(matches!(BlockServer::serve(s.socket(), again, true), Err(NbdError::Bind { .. })));
}

#[test]
fn dropping_the_server_ends_every_thread_and_removes_the_socket() {
    let s = served(1 << 20, 0, false);
    let disk = s.server.disk();
    let socket = s.socket().to_owned();
    // One connection that ended, one in the handshake, one in transmission.
    let (mut done, ..) = connect(&socket);
    send_request(&mut done, p::CMD_DISC, 0, 0, 0, 0, &[]);
    assert_eq!(done.read(&mut [0u8; 1]).unwrap(), 0);
    let mut greeting = UnixStream::connect(&socket).unwrap();
    read_n(&mut greeting, 18);
    let (mut live, ..) = connect(&socket);
    assert_eq!(call(&mut live, p::CMD_READ, 0, 1, &[]).0, 0);
    let Served { dir, server, .. } = s;
    drop(server);
    assert!(!socket.exists());
    assert_eq!(live.read(&mut [0u8; 1]).unwrap(), 0, "the server closed the connection");
    assert_eq!(greeting.read(&mut [0u8; 1]).unwrap(), 0);
    // Every thread held the disk; only this handle is left.
    assert_eq!(Arc::strong_count(&disk.0), 1);
    assert!(UnixStream::connect(&socket).is_err());
    drop(dir);
}
