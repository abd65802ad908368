//! Classic pcap (what `tcpdump -w` writes): a 24-byte global header, then a
//! 16-byte record header and the frame for each frame. Link type Ethernet,
//! microsecond timestamps, little-endian.

use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: u32 = 0xa1b2_c3d4;
const LINKTYPE_ETHERNET: u32 = 1;
pub const SNAPLEN: u32 = 65535;

/// The global header.
pub fn header() -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend(MAGIC.to_le_bytes());
    v.extend(2u16.to_le_bytes());
    v.extend(4u16.to_le_bytes());
    v.extend(0i32.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v.extend(SNAPLEN.to_le_bytes());
    v.extend(LINKTYPE_ETHERNET.to_le_bytes());
    v
}

/// Appends one record for `frame`, seen at `at`.
pub fn record(out: &mut Vec<u8>, at: SystemTime, frame: &[u8]) {
    let t = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let kept = frame.len().min(SNAPLEN as usize);
    out.extend((t.as_secs() as u32).to_le_bytes());
    out.extend(t.subsec_micros().to_le_bytes());
    out.extend((kept as u32).to_le_bytes());
    out.extend((frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame[..kept]);
}

/// One frame read back from a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapRecord {
    pub ts_sec: u32,
    pub ts_usec: u32,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PcapError {
    #[error("not a pcap file: the global header is missing or has the wrong magic")]
    Header,
    #[error("pcap record {index} at byte {offset} is cut short")]
    Truncated { index: usize, offset: usize },
}

/// Parses a whole capture (what provium's own tests check captures with).
pub fn parse(bytes: &[u8]) -> Result<Vec<PcapRecord>, PcapError> {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    if bytes.len() < 24 || u32_at(0) != MAGIC || u32_at(20) != LINKTYPE_ETHERNET {
        return Err(PcapError::Header);
    }
    let mut records = Vec::new();
    let mut o = 24;
    while o < bytes.len() {
        let index = records.len();
        if o + 16 > bytes.len() {
            return Err(PcapError::Truncated { index, offset: o });
        }
        let incl = u32_at(o + 8) as usize;
        if o + 16 + incl > bytes.len() {
            return Err(PcapError::Truncated { index, offset: o });
        }
        records.push(PcapRecord {
            ts_sec: u32_at(o),
            ts_usec: u32_at(o + 4),
            orig_len: u32_at(o + 12),
            data: bytes[o + 16..o + 16 + incl].to_vec(),
        });
        o += 16 + incl;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn records_round_trip() {
        let mut v = header();
        assert_eq!(v.len(), 24);
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        record(&mut v, at, b"frame-one-bytes");
        record(&mut v, at, b"two");
        let r = parse(&v).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].ts_sec, r[0].ts_usec, r[0].orig_len), (1_700_000_000, 123_456, 15));
        assert_eq!(r[1].data, b"two");
        assert_eq!(parse(&v[..v.len() - 1]), Err(PcapError::Truncated { index: 1, offset: 24 + 16 + 15 }));
        assert_eq!(parse(b"nope"), Err(PcapError::Header));
    }
}
