//! Frames: the unit that crosses the virtio-serial byte stream.
//!
//! This module owns the byte layout of a frame and nothing else: it does not
//! know what a request is. Every frame is a fixed 9-byte header followed by a
//! body whose length the header announces:
//!
//! ```text
//!  0               4               8   9
//!  +---------------+---------------+---+----------------------+
//!  |  body length  |    channel    | k |  body (length bytes) |
//!  |   u32 LE      |    u32 LE     |u8 |                      |
//!  +---------------+---------------+---+----------------------+
//! ```
//!
//! The length is checked against [`MAX_BODY`] *before* any buffer is
//! allocated, so a corrupt or hostile length cannot make either side allocate
//! gigabytes. The decoder is incremental: feed it whatever a `read` returned
//! and take out the frames that are complete.

use std::io::{self, Write};

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 9;

/// Largest body a frame may carry (16 MiB). Bigger payloads (files, command
/// output) travel as several [`FrameKind::Data`] frames.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// The size in which files and streams are chunked into `Data` frames.
pub const CHUNK: usize = 256 * 1024;

/// What a frame's body is. The numeric values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Host → agent: opens (or re-opens) a session. Body: [`crate::Hello`].
    Hello = 0x01,
    /// Agent → host: handshake accepted. Body: [`crate::HelloOk`].
    HelloOk = 0x02,
    /// Agent → host: version mismatch. Body: [`crate::HelloErr`].
    HelloErr = 0x03,
    /// Host → agent: opens `channel` with a request. Body: [`crate::Request`].
    Request = 0x10,
    /// Agent → host: the final answer on `channel`, which is then closed.
    /// Body: [`crate::Reply`].
    Reply = 0x11,
    /// Either way: raw bytes belonging to `channel` (file contents, stdin,
    /// stream data). The body is the bytes themselves, not encoded.
    Data = 0x20,
    /// Either way: the sender will send no more `Data` on `channel`.
    DataEnd = 0x21,
    /// Host → agent: the host can take `n` more bytes of `Data` on `channel`
    /// (credit-based flow control for streams). Body: u32 LE.
    Credit = 0x30,
    /// Host → agent: stop the work behind `channel` (close a stream, kill an
    /// exec). The agent still answers with a `Reply`.
    Cancel = 0x31,
}

impl FrameKind {
    /// Parses the kind byte of a header.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            0x01 => FrameKind::Hello,
            0x02 => FrameKind::HelloOk,
            0x03 => FrameKind::HelloErr,
            0x10 => FrameKind::Request,
            0x11 => FrameKind::Reply,
            0x20 => FrameKind::Data,
            0x21 => FrameKind::DataEnd,
            0x30 => FrameKind::Credit,
            0x31 => FrameKind::Cancel,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub channel: u32,
    pub kind: FrameKind,
    pub body: Vec<u8>,
}

/// Why bytes could not be decoded into a frame. Either error means the
/// stream is out of sync: the connection must be reset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame body of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
}

/// Encodes a frame header and body into one buffer, so that a single
/// `write_all` puts the whole frame on the wire (frames from different
/// threads never interleave when writers share a lock).
pub fn encode(channel: u32, kind: FrameKind, body: &[u8]) -> Vec<u8> {
    assert!(body.len() <= MAX_BODY, "frame body over MAX_BODY");
    let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&channel.to_le_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(body);
    buf
}

/// Writes one frame with a single `write_all`.
pub fn write_frame<W: Write>(w: &mut W, channel: u32, kind: FrameKind, body: &[u8]) -> io::Result<()> {
    w.write_all(&encode(channel, kind, body))
}

/// Incremental frame decoder.
///
/// ```
/// use provium_protocol::frame::{encode, Decoder, FrameKind};
/// let bytes = encode(7, FrameKind::Data, b"hi");
/// let mut d = Decoder::new();
/// d.feed(&bytes[..4]);
/// assert!(d.next_frame().unwrap().is_none());
/// d.feed(&bytes[4..]);
/// let f = d.next_frame().unwrap().unwrap();
/// assert_eq!((f.channel, f.body.as_slice()), (7, &b"hi"[..]));
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Drops any partial frame (used when the peer disconnects mid-frame).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed,
    /// or an error if the header is invalid (checked before allocating).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            self.compact();
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[0..4].try_into().unwrap()) as usize;
        if len > MAX_BODY {
            return Err(FrameError::TooLarge { len, max: MAX_BODY });
        }
        let channel = u32::from_le_bytes(avail[4..8].try_into().unwrap());
        let kind = FrameKind::from_u8(avail[8]).ok_or(FrameError::UnknownKind(avail[8]))?;
        if avail.len() < HEADER_LEN + len {
            self.compact();
            return Ok(None);
        }
        let body = avail[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.start += HEADER_LEN + len;
        Ok(Some(Frame { channel, kind, body }))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_are_pinned() {
        let bytes = encode(0x0102_0304, FrameKind::Request, b"xyz");
        assert_eq!(bytes, [3, 0, 0, 0, 4, 3, 2, 1, 0x10, b'x', b'y', b'z']);
    }

    #[test]
    fn every_kind_round_trips_through_its_byte() {
        for b in 0..=255u8 {
            if let Some(k) = FrameKind::from_u8(b) {
                assert_eq!(k as u8, b);
            }
        }
    }

    #[test]
    fn too_large_is_rejected_before_the_body_arrives() {
        let mut d = Decoder::new();
        let mut hdr = ((MAX_BODY + 1) as u32).to_le_bytes().to_vec();
        hdr.extend_from_slice(&[0, 0, 0, 0, 0x20]);
        d.feed(&hdr);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len: MAX_BODY + 1, max: MAX_BODY }));
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let mut d = Decoder::new();
        d.feed(&[0, 0, 0, 0, 0, 0, 0, 0, 0xee]);
        assert_eq!(d.next_frame(), Err(FrameError::UnknownKind(0xee)));
    }

    #[test]
    fn byte_at_a_time_feeding_yields_every_frame() {
        let mut wire = Vec::new();
        for i in 0..50u32 {
            wire.extend(encode(i, FrameKind::Data, &vec![i as u8; i as usize * 3]));
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.feed(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 50);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.channel, i as u32);
            assert_eq!(f.body, vec![i as u8; i * 3]);
        }
        assert_eq!(d.pending(), 0);
    }
}
