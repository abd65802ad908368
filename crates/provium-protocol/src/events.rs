//! The event stream's wire form: what `--save-events`, `--events-stdout`
//! and `--events-socket` carry, for consumers outside provium (CI
//! dashboards, coverage by `meta` key, JUnit converters).
//!
//! A stream is a sequence of frames, each a big-endian `u32` length and a
//! MessagePack map `{v, ts, kind, payload}`: `v` is [`PROTOCOL_VERSION`] (a
//! consumer checks it on every frame, so one joining a socket late can
//! too), `ts` nanoseconds since the Unix epoch on the host's clock, `kind`
//! the snake-case name of the [`EventKind`], `payload` its fields by name.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::PROTOCOL_VERSION;

/// Memory and vCPUs, as the resource pool counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAmount {
    pub memory_bytes: u64,
    pub cpus: u32,
}

/// A value of a test's `meta` table.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A Lua string that is not UTF-8.
    Bytes(Vec<u8>),
    Array(Vec<MetaValue>),
    Map(MetaMap),
}

/// A test's `meta` table: string keys (others are dropped), sorted.
pub type MetaMap = BTreeMap<String, MetaValue>;

impl MetaValue {
    /// The strings this value holds, for tag matching: a string is one, an
    /// array of strings is each of them, anything else is none.
    pub fn strings(&self) -> Vec<&str> {
        match self {
            MetaValue::Str(s) => vec![s.as_str()],
            MetaValue::Array(items) => {
                items.iter().filter_map(|v| if let MetaValue::Str(s) = v { Some(s.as_str()) } else { None }).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl Serialize for MetaValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MetaValue::Null => s.serialize_unit(),
            MetaValue::Bool(b) => s.serialize_bool(*b),
            MetaValue::Int(i) => s.serialize_i64(*i),
            MetaValue::Float(f) => s.serialize_f64(*f),
            MetaValue::Str(v) => s.serialize_str(v),
            MetaValue::Bytes(b) => s.serialize_bytes(b),
            MetaValue::Array(items) => items.serialize(s),
            MetaValue::Map(m) => m.serialize(s),
        }
    }
}

struct MetaVisitor;

impl<'de> Visitor<'de> for MetaVisitor {
    type Value = MetaValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a meta value (nil, boolean, number, string, bytes, array or map)")
    }
    fn visit_unit<E>(self) -> Result<MetaValue, E> {
        Ok(MetaValue::Null)
    }
    fn visit_none<E>(self) -> Result<MetaValue, E> {
        Ok(MetaValue::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<MetaValue, E> {
        Ok(MetaValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<MetaValue, E> {
        Ok(MetaValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MetaValue, E> {
        i64::try_from(v).map(MetaValue::Int).map_err(|_| E::custom("meta integer beyond i64"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<MetaValue, E> {
        Ok(MetaValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<MetaValue, E> {
        Ok(MetaValue::Str(v.to_string()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<MetaValue, E> {
        Ok(MetaValue::Bytes(v.to_vec()))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<MetaValue, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(MetaValue::Array(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<MetaValue, A::Error> {
        let mut m = MetaMap::new();
        while let Some((k, v)) = map.next_entry::<String, MetaValue>()? {
            m.insert(k, v);
        }
        Ok(MetaValue::Map(m))
    }
}

impl<'de> Deserialize<'de> for MetaValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MetaValue, D::Error> {
        d.deserialize_any(MetaVisitor)
    }
}

/// What happened, by the reference's kind names (12.2), plus a few that
/// only provium has (`run_started`, `vm_booted`, `fixture_evicted`,
/// `warning`, `run_finished`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        protocol_version: u32,
        files: u64,
        jobs: u64,
        accel: String,
        seed: u64,
    },
    FileDiscovered {
        path: String,
        fixture_refs: Vec<String>,
        declared_claim: Option<ResourceAmount>,
    },
    FileBlocked {
        path: String,
        waiting_for: ResourceAmount,
        /// `pool_full` or `psi_pressure`.
        reason: String,
    },
    FileDispatched {
        path: String,
        reservation: ResourceAmount,
    },
    FileCompleted {
        path: String,
        /// `passed`, `failed`, `timed_out` or `crashed` (a chunk error).
        status: String,
        duration_ns: u64,
        chunk_error: Option<String>,
    },
    TestStarted {
        path: String,
        name: String,
        meta: MetaMap,
    },
    TestSkipped {
        path: String,
        name: String,
        reason: String,
        meta: MetaMap,
    },
    TestPassed {
        path: String,
        name: String,
        duration_ns: u64,
        meta: MetaMap,
        log: Vec<String>,
    },
    TestFailed {
        path: String,
        name: String,
        duration_ns: u64,
        reason: String,
        console_excerpt: String,
        meta: MetaMap,
        log: Vec<String>,
    },
    VmSpawned {
        file: Option<String>,
        vm_name: String,
        profile: String,
        memory_bytes: u64,
        cid: u32,
    },
    VmBooted {
        file: Option<String>,
        vm_name: String,
        duration_ns: u64,
    },
    VmShutdown {
        file: Option<String>,
        vm_name: String,
        duration_ns: u64,
    },
    PoolState {
        used: ResourceAmount,
        available: ResourceAmount,
    },
    ClaimAcquired {
        path: String,
        amount: ResourceAmount,
    },
    ClaimReleased {
        path: String,
        amount: ResourceAmount,
    },
    FixtureBuildStarted {
        path: String,
    },
    FixtureBuildDone {
        path: String,
        duration_ns: u64,
        snapshot_bytes: u64,
    },
    FixtureBuildWaiting {
        path: String,
        held_by_file: String,
    },
    FixtureCacheHit {
        path: String,
    },
    FixtureEvicted {
        key: String,
        reason: String,
        rebuilding: bool,
    },
    Warning {
        file: Option<String>,
        message: String,
    },
    RunFinished {
        duration_ns: u64,
    },
}

/// One frame of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// The [`PROTOCOL_VERSION`] of the writer.
    pub v: u32,
    /// Nanoseconds since the Unix epoch, host clock, when it was emitted.
    pub ts: i64,
    #[serde(flatten)]
    pub event: EventKind,
}

impl EventFrame {
    pub fn new(ts: i64, event: EventKind) -> EventFrame {
        EventFrame { v: PROTOCOL_VERSION, ts, event }
    }

    /// The frame as it goes on the wire: length, then the map.
    pub fn encode(&self) -> Vec<u8> {
        let body = crate::encode_msg(self);
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventReadError {
    #[error("reading the event stream")]
    Io(#[from] io::Error),
    #[error("the event stream ends inside a frame")]
    Truncated,
    #[error("event frame of {0} bytes is beyond the 16 MiB a frame may have")]
    TooLarge(u32),
    #[error("event frame does not decode")]
    Decode(#[source] rmp_serde::decode::Error),
    #[error("event frame is of protocol version {found}; this reader knows {PROTOCOL_VERSION}")]
    Version { found: u32 },
}

const MAX_EVENT_FRAME: u32 = 16 << 20;

/// Reads the next frame; `Ok(None)` at a clean end of stream.
pub fn read_event<R: Read>(r: &mut R) -> Result<Option<EventFrame>, EventReadError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(EventReadError::Truncated),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_EVENT_FRAME {
        return Err(EventReadError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => EventReadError::Truncated,
        _ => EventReadError::Io(e),
    })?;
    // The version first, so a newer writer's unknown kind says so.
    #[derive(Deserialize)]
    struct Versioned {
        v: u32,
    }
    let v: Versioned = rmp_serde::from_slice(&body).map_err(EventReadError::Decode)?;
    if v.v != PROTOCOL_VERSION {
        return Err(EventReadError::Version { found: v.v });
    }
    rmp_serde::from_slice(&body).map(Some).map_err(EventReadError::Decode)
}

/// Every frame of a stream, in order.
pub fn read_all<R: Read>(mut r: R) -> Result<Vec<EventFrame>, EventReadError> {
    let mut out = Vec::new();
    while let Some(f) = read_event(&mut r)? {
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> MetaMap {
        let mut inner = MetaMap::new();
        inner.insert("k".into(), MetaValue::Float(1.5));
        MetaMap::from([
            ("tags".into(), MetaValue::Array(vec![MetaValue::Str("net".into()), MetaValue::Int(3)])),
            ("raw".into(), MetaValue::Bytes(vec![0xff, 0])),
            ("slow".into(), MetaValue::Bool(true)),
            ("none".into(), MetaValue::Null),
            ("nested".into(), MetaValue::Map(inner)),
        ])
    }

    #[test]
    fn frames_round_trip_and_keep_bytes_as_bytes() {
        let frames = vec![
            EventFrame::new(1, EventKind::TestStarted { path: "a.test.lua".into(), name: "t".into(), meta: meta() }),
            EventFrame::new(
                2,
                EventKind::FileBlocked {
                    path: "a.test.lua".into(),
                    waiting_for: ResourceAmount { memory_bytes: 1 << 30, cpus: 2 },
                    reason: "pool_full".into(),
                },
            ),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(f.encode());
        }
        assert_eq!(read_all(&wire[..]).unwrap(), frames);
        assert_eq!(meta()["tags"].strings(), vec!["net"]);
    }

    #[test]
    fn the_envelope_is_a_map_of_v_ts_kind_payload() {
        let f = EventFrame::new(7, EventKind::FixtureCacheHit { path: "base".into() });
        let body = &f.encode()[4..];
        // fixmap of 4: "v" 7 … "ts" 7 "kind" "fixture_cache_hit" "payload" {path}
        assert_eq!(body[0], 0x84);
        assert_eq!(&body[1..3], b"\xa1v");
        let text = String::from_utf8_lossy(body);
        for key in ["ts", "kind", "fixture_cache_hit", "payload", "path", "base"] {
            assert!(text.contains(key), "{key} in {text:?}");
        }
    }

    #[test]
    fn bad_streams_say_what_is_wrong() {
        let f = EventFrame::new(1, EventKind::RunFinished { duration_ns: 5 }).encode();
        assert!(matches!(read_all(&f[..f.len() - 1]), Err(EventReadError::Truncated)));
        assert!(matches!(read_all(&f[..2]), Err(EventReadError::Truncated)));
        let mut newer = EventFrame::new(1, EventKind::RunFinished { duration_ns: 5 });
        newer.v = PROTOCOL_VERSION + 1;
        let e = read_all(&newer.encode()[..]).unwrap_err();
        assert!(e.to_string().contains("protocol version"), "{e}");
        assert!(matches!(read_all(&[0xff, 0xff, 0xff, 0xff][..]), Err(EventReadError::TooLarge(_))));
        assert!(read_all(&[][..]).unwrap().is_empty());
    }
}
