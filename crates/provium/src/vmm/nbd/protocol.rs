//! The NBD wire format, server side: the fixed-newstyle handshake up to the
//! transmission phase, and the framing of requests and simple replies.
//!
//! This file owns bytes only. It knows nothing of the disk behind the export:
//! [`handshake`] is told the export's size and flags and returns once the
//! client chose it; [`Request::read_from`] and [`write_simple_reply`] frame
//! one transaction. Numbers are big-endian, as the protocol says.

use std::io::{self, Read, Write};

/// `NBDMAGIC`, the server's first eight bytes.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, after `NBDMAGIC` and in front of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// In front of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// Information types in `REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands and command flags.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_FLAG_FUA: u16 = 1 << 0;

// Errors in simple replies (the protocol's values, Linux's errno numbers).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

/// Block sizes advertised in `NBD_INFO_BLOCK_SIZE`. The server accepts any
/// alignment; the minimum only tells the client that sectors are 512 bytes.
pub const MIN_BLOCK: u32 = 512;
pub const PREFERRED_BLOCK: u32 = 4096;
/// The largest `READ` or `WRITE` payload, checked before allocating.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// The largest option the server reads into memory (names are at most 4 KiB).
const MAX_OPTION: u32 = 64 << 10;

/// What the client chose in the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum Negotiated {
    /// Transmission begins; the client asked for this export name.
    Export { name: String },
    /// The client aborted (or hung up) before choosing an export.
    Aborted,
}

/// What the handshake needs to know about the one export.
#[derive(Clone, Copy, Debug)]
pub struct ExportInfo {
    pub size: u64,
    pub transmission_flags: u16,
}

/// Runs the fixed-newstyle handshake: greets, reads the client flags and
/// answers options until one enters transmission (`NBD_OPT_GO`,
/// `NBD_OPT_EXPORT_NAME`) or the client leaves. Every name is the export.
/// `out` is flushed after each reply: the client waits for it.
pub fn handshake(input: &mut impl Read, out: &mut impl Write, export: ExportInfo) -> io::Result<Negotiated> {
    out.write_all(&NBDMAGIC.to_be_bytes())?;
    out.write_all(&IHAVEOPT.to_be_bytes())?;
    out.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    out.flush()?;
    let client_flags = read_u32(input)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(invalid(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    loop {
        let mut header = [0u8; 16];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Negotiated::Aborted),
            Err(e) => return Err(e),
        }
        if be_u64(&header[0..8]) != IHAVEOPT {
            return Err(invalid("option without IHAVEOPT".into()));
        }
        let option = be_u32(&header[8..12]);
        let len = be_u32(&header[12..16]);
        if len > MAX_OPTION {
            io::copy(&mut input.take(u64::from(len)), &mut io::sink())?;
            if option == OPT_EXPORT_NAME {
                return Err(invalid("export name too long".into()));
            }
            option_reply(out, option, REP_ERR_TOO_BIG, &[])?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        input.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                out.write_all(&export.size.to_be_bytes())?;
                out.write_all(&export.transmission_flags.to_be_bytes())?;
                if !no_zeroes {
                    out.write_all(&[0u8; 124])?;
                }
                out.flush()?;
                return Ok(Negotiated::Export { name: String::from_utf8_lossy(&data).into_owned() });
            }
            OPT_ABORT => {
                // The client may already be gone; it need not read the ack.
                let _ = option_reply(out, option, REP_ACK, &[]);
                return Ok(Negotiated::Aborted);
            }
            OPT_LIST if data.is_empty() => {
                option_reply(out, option, REP_SERVER, &0u32.to_be_bytes())?;
                option_reply(out, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some(name) = parse_info_request(&data) else {
                    option_reply(out, option, REP_ERR_INVALID, &[])?;
                    continue;
                };
                let mut info = Vec::with_capacity(12);
                info.extend(INFO_EXPORT.to_be_bytes());
                info.extend(export.size.to_be_bytes());
                info.extend(export.transmission_flags.to_be_bytes());
                option_reply(out, option, REP_INFO, &info)?;
                let mut sizes = Vec::with_capacity(14);
                sizes.extend(INFO_BLOCK_SIZE.to_be_bytes());
                for v in [MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD] {
                    sizes.extend(v.to_be_bytes());
                }
                option_reply(out, option, REP_INFO, &sizes)?;
                option_reply(out, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(Negotiated::Export { name });
                }
            }
            OPT_LIST => option_reply(out, option, REP_ERR_INVALID, &[])?,
            // STRUCTURED_REPLY, EXTENDED_HEADERS, SET_META_CONTEXT, STARTTLS…:
            // the client falls back to simple replies and no TLS.
            _ => option_reply(out, option, REP_ERR_UNSUP, &[])?,
        }
    }
}

/// The export name of an `NBD_OPT_INFO`/`NBD_OPT_GO`, if the data is well
/// formed: name length, name, count of info requests, the requests.
fn parse_info_request(data: &[u8]) -> Option<String> {
    let name_len = usize::try_from(be_u32(data.get(0..4)?)).ok()?;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let count = usize::from(u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?));
    (rest.len() == 2 + 2 * count).then(|| String::from_utf8_lossy(name).into_owned())
}

fn option_reply(out: &mut impl Write, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| invalid("option reply too long".into()))?;
    out.write_all(&OPTION_REPLY_MAGIC.to_be_bytes())?;
    out.write_all(&option.to_be_bytes())?;
    out.write_all(&reply.to_be_bytes())?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(data)?;
    out.flush()
}

/// One transmission-phase request header (a `WRITE`'s payload follows it on
/// the stream and is not read here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub const LEN: usize = 28;

    /// Reads the next request; `None` when the client closed the stream
    /// between requests.
    pub fn read_from(input: &mut impl Read) -> io::Result<Option<Request>> {
        let mut b = [0u8; Self::LEN];
        match input.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        Request::decode(&b).map(Some)
    }

    pub fn decode(b: &[u8; Self::LEN]) -> io::Result<Request> {
        let magic = be_u32(&b[0..4]);
        if magic != REQUEST_MAGIC {
            return Err(invalid(format!("bad request magic {magic:#x}")));
        }
        Ok(Request {
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            cookie: be_u64(&b[8..16]),
            offset: be_u64(&b[16..24]),
            length: be_u32(&b[24..28]),
        })
    }

    /// The client's side, for tests.
    #[cfg(test)]
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply: magic, error, cookie, then `data` (a successful `READ`'s
/// bytes; empty otherwise). Not flushed: the caller decides when.
pub fn write_simple_reply(out: &mut impl Write, error: u32, cookie: u64, data: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    header[4..8].copy_from_slice(&error.to_be_bytes());
    header[8..16].copy_from_slice(&cookie.to_be_bytes());
    out.write_all(&header)?;
    out.write_all(data)
}

pub fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

pub fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
