//! Captures over real sockets: what each scope records, the exact record
//! bytes, and how captures end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::agent::Chunk;
use crate::net::pcap::{self, PcapRecord};
use crate::net::{Capture, CaptureScope, Impairment, Rules};

const SHORT: Duration = Duration::from_millis(20);

/// Everything a capture yields until `Eof` (something must end it).
fn read_to_eof(cap: &mut Capture) -> Vec<u8> {
    let mut bytes = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match cap.next(SHORT) {
            Chunk::Data(d) => bytes.extend(d),
            Chunk::Timeout => assert!(std::time::Instant::now() < deadline, "the capture never ended"),
            Chunk::Eof => return bytes,
            Chunk::Failed(e) => panic!("capture failed: {e}"),
        }
    }
}

/// The exact pcap bytes of `frames`, given the timestamps of `recs`.
fn expected_bytes(frames: &[Vec<u8>], recs: &[PcapRecord]) -> Vec<u8> {
    let mut v = pcap::header();
    for (f, r) in frames.iter().zip(recs) {
        let at = UNIX_EPOCH + Duration::new(r.ts_sec.into(), r.ts_usec * 1000);
        pcap::record(&mut v, at, f);
    }
    v
}

fn micros(r: &PcapRecord) -> u64 {
    u64::from(r.ts_sec) * 1_000_000 + u64::from(r.ts_usec)
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

#[test]
fn a_bridge_capture_records_every_frame_from_a_live_port_once_before_rules() {
    let b = Bench::new(1);
    let (na, nb, nc) = (b.nic("a", 1), b.nic("b", 2), b.nic("c", 3));
    let mut cap = b.sw.capture(CaptureScope::Bridge);
    b.sw.set_rules(Rules {
        partitioned: [("a".to_string(), "b".to_string())].into(),
        whole: Impairment { latency: Duration::from_millis(20), ..Impairment::default() },
        ..Rules::default()
    });
    let started = now_micros();
    let sent = vec![
        na.to(BCAST, b"one, flooded: recorded once"),
        na.to(nb.mac, b"partitioned"),
        nb.to(na.mac, b"reply"),
        nc.to(BCAST, b"three"),
        nc.to(mac(77), &[0x5a; 9000]),
    ];
    na.send(&sent[0]);
    na.send(&sent[1]);
    b.settle();
    nb.send(&sent[2]);
    b.settle();
    b.sw.set_link("c", false);
    nc.send(&nc.to(BCAST, b"unplugged: not recorded"));
    b.settle();
    b.sw.set_link("c", true);
    nc.send(&sent[3]);
    nc.send(&sent[4]);
    b.settle();
    b.sw.stop();
    let bytes = read_to_eof(&mut cap);
    let recs = pcap::parse(&bytes).unwrap();
    let got: Vec<Vec<u8>> = recs.iter().map(|r| r.data.clone()).collect();
    assert_eq!(got, sent, "each frame from a live port once, in arrival order, partitioned ones too");
    assert!(recs.iter().zip(&sent).all(|(r, f)| r.orig_len as usize == f.len()));
    assert!(recs.windows(2).all(|w| micros(&w[0]) <= micros(&w[1])));
    assert!(micros(&recs[0]) >= started);
    assert_eq!(bytes, expected_bytes(&sent, &recs));
    assert_eq!(bytes.len(), 24 + sent.iter().map(|f| 16 + f.len()).sum::<usize>());
    assert_eq!(cap.dropped(), 0);
}

#[test]
fn a_port_capture_is_that_guests_wire() {
    let b = Bench::new(1);
    let (na, nb, nc) = (b.nic("a", 1), b.nic("b", 2), b.nic("c", 3));
    let mut cap = b.sw.capture(CaptureScope::Port("b".to_string()));
    let latency = Duration::from_millis(30);
    b.sw.set_rules(Rules {
        partitioned: [("c".to_string(), "b".to_string())].into(),
        directional: [(("a".to_string(), "b".to_string()), Impairment { latency, ..Impairment::default() })].into(),
        ..Rules::default()
    });
    let before = now_micros();
    let to_b = na.to(BCAST, b"for b, late");
    na.send(&to_b);
    assert_eq!(nb.recv(WAIT), Some(to_b.clone()));
    let from_b = nb.to(BCAST, b"b speaks");
    nb.send(&from_b);
    nc.send(&nc.to(BCAST, b"partitioned from b"));
    b.settle();
    // c's MAC is learned now: this one is not for b at all.
    na.send(&na.to(nc.mac, b"for c only"));
    b.settle();
    b.sw.remove_port("b");
    let bytes = read_to_eof(&mut cap);
    let recs = pcap::parse(&bytes).unwrap();
    let expected = vec![to_b, from_b];
    assert_eq!(recs.iter().map(|r| r.data.clone()).collect::<Vec<_>>(), expected);
    assert_eq!(bytes, expected_bytes(&expected, &recs));
    // The delivery was recorded when sent, after its latency.
    assert!(micros(&recs[0]) >= before + latency.as_micros() as u64, "recorded before its latency");
    assert!(micros(&recs[0]) <= micros(&recs[1]));
    assert_eq!(nc.drain().len(), 3, "c got a's and b's floods and its unicast");
    assert_eq!(na.drain().len(), 2, "a got b's and c's floods");
}

#[test]
fn a_port_capture_misses_what_the_rules_drop_for_that_port() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    let mut cap_a = b.sw.capture(CaptureScope::Port("a".to_string()));
    let mut cap_b = b.sw.capture(CaptureScope::Port("b".to_string()));
    b.sw.set_rules(Rules { partitioned: [("a".to_string(), "b".to_string())].into(), ..Rules::default() });
    let f = na.to(BCAST, b"sent, never delivered");
    na.send(&f);
    b.settle();
    assert!(nb.drain().is_empty());
    b.sw.stop();
    // a's wire shows what a sent; b's shows nothing.
    let a = pcap::parse(&read_to_eof(&mut cap_a)).unwrap();
    assert_eq!(a.iter().map(|r| r.data.clone()).collect::<Vec<_>>(), vec![f]);
    assert_eq!(read_to_eof(&mut cap_b), pcap::header());
}

#[test]
fn stop_ends_every_capture_with_eof() {
    let b = Bench::new(1);
    let (na, _nb) = (b.nic("a", 1), b.nic("b", 2));
    let mut bridge = b.sw.capture(CaptureScope::Bridge);
    let mut port = b.sw.capture(CaptureScope::Port("a".to_string()));
    let mut nobody = b.sw.capture(CaptureScope::Port("nobody".to_string()));
    na.send(&na.to(BCAST, b"x"));
    b.settle();
    // Still open while the switch runs.
    let Chunk::Data(d) = bridge.next(WAIT) else { panic!("the header and a record") };
    assert!(d.len() >= 24);
    let mut rest = d;
    b.sw.stop();
    rest.extend(read_to_eof(&mut bridge));
    assert_eq!(pcap::parse(&rest).unwrap().len(), 1);
    assert_eq!(pcap::parse(&read_to_eof(&mut port)).unwrap().len(), 1);
    assert_eq!(read_to_eof(&mut nobody), pcap::header());
    assert_eq!(bridge.next(SHORT), Chunk::Eof);
    // A capture asked of a stopped switch ends at once.
    let mut late = b.sw.capture(CaptureScope::Bridge);
    assert_eq!(read_to_eof(&mut late), pcap::header());
}

#[test]
fn a_closed_capture_does_not_disturb_the_switch_or_other_captures() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    let mut closed = b.sw.capture(CaptureScope::Bridge);
    let mut other = b.sw.capture(CaptureScope::Bridge);
    closed.close();
    assert_eq!(closed.next(SHORT), Chunk::Eof);
    na.send(&na.to(BCAST, b"after close"));
    b.settle();
    assert_eq!(nb.drain().len(), 1, "the switch goes on");
    b.sw.stop();
    assert_eq!(pcap::parse(&read_to_eof(&mut other)).unwrap().len(), 1);
}

#[test]
fn dropping_the_last_handle_ends_captures() {
    let b = Bench::new(1);
    let sw = b.sw.clone();
    let mut cap = sw.capture(CaptureScope::Bridge);
    let Bench { sw: first, dir, .. } = b;
    drop(first);
    assert_eq!(cap.next(SHORT), Chunk::Data(pcap::header()));
    assert_eq!(cap.next(SHORT), Chunk::Timeout, "a clone still holds the switch");
    drop(sw);
    assert_eq!(read_to_eof(&mut cap), Vec::<u8>::new());
    drop(dir);
}
