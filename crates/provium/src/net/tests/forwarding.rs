//! Learning, flooding, byte-exact forwarding, runts, ports coming and
//! going, links and unreachable peers.

use std::os::unix::net::UnixDatagram;

use super::*;
use crate::net::{NetError, PortCounters};

#[test]
fn a_learned_unicast_reaches_only_its_port() {
    let b = Bench::new(1);
    let (na, nb, nc) = (b.nic("a", 1), b.nic("b", 2), b.nic("c", 3));
    // a→b: b is unknown, so it floods to b and c.
    let hello = na.to(nb.mac, b"hello");
    na.send(&hello);
    b.settle();
    assert_eq!(nb.drain(), vec![hello.clone()]);
    assert_eq!(nc.drain(), vec![hello]);
    // b→a: a was learned, only a gets it.
    let back = nb.to(na.mac, b"back");
    nb.send(&back);
    b.settle();
    assert_eq!(na.drain(), vec![back]);
    assert!(nc.drain().is_empty(), "c must not see a learned unicast");
    // c→a as well; b was learned from its reply and sees nothing.
    nc.send(&nc.to(na.mac, b"from c"));
    b.settle();
    assert_eq!(na.drain().len(), 1);
    assert!(nb.drain().is_empty());
    // Guest perspective: tx is what a sent, rx what it was given.
    assert_eq!(
        b.sw.counters("a").unwrap(),
        PortCounters { rx_bytes: 18 + 20, tx_bytes: 19, rx_packets: 2, tx_packets: 1, errors: 0 }
    );
    let s = b.settle();
    assert_eq!((s.received, s.received_bytes, s.delivered), (3, 19 + 18 + 20, 4));
}

#[test]
fn a_frame_to_its_own_port_goes_nowhere() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    na.send(&na.to(BCAST, b"learn a"));
    b.settle();
    nb.drain();
    // a's own MAC was learned on a: the frame is not reflected, nor flooded.
    na.send(&na.to(na.mac, b"to myself"));
    b.settle();
    assert!(na.drain().is_empty() && nb.drain().is_empty());
}

#[test]
fn broadcast_multicast_and_unknown_unicast_flood_to_all_but_the_sender() {
    let b = Bench::new(1);
    let nics: Vec<Nic> = (1..=4).map(|i| b.nic(&format!("vm{i}"), i)).collect();
    let sent = [
        nics[0].to(BCAST, b"who has"),
        nics[0].to([0x01, 0x00, 0x5e, 0, 0, 1], b"ipv4 group"),
        nics[0].to([0x33, 0x33, 0, 0, 0, 1], b"ipv6 group"),
        nics[0].to(mac(99), b"anyone"),
    ];
    for f in &sent {
        nics[0].send(f);
    }
    b.settle();
    assert!(nics[0].drain().is_empty(), "nothing goes back to the sender");
    for n in &nics[1..] {
        assert_eq!(n.drain(), sent, "{}", n.id);
    }
}

#[test]
fn frames_are_forwarded_byte_for_byte() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    for len in [0usize, 1, 46, 1486, 1500, 8986, 9000, 60_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let f = na.to(nb.mac, &payload);
        na.send(&f);
        assert_eq!(nb.recv(WAIT).as_deref(), Some(&f[..]), "{len}-byte payload");
    }
    let c = b.sw.counters("b").unwrap();
    assert_eq!(c.rx_packets, 8);
    assert_eq!(c.rx_bytes, [0, 1, 46, 1486, 1500, 8986, 9000, 60_000].iter().map(|l| 14 + l).sum::<u64>());
}

#[test]
fn runts_are_dropped_and_counted() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    na.send(&[0xff; 13]);
    na.send(&[]);
    na.send(&[0xff; 1]);
    let s = b.settle();
    assert_eq!((s.received, s.runt, s.delivered), (3, 3, 0));
    assert!(nb.drain().is_empty());
    // A 14-byte frame (an empty payload) is not a runt.
    na.send(&[0xff; 14]);
    let s = b.settle();
    assert_eq!((s.runt, s.delivered), (3, 1));
    assert_eq!(nb.drain(), vec![vec![0xff; 14]]);
}

#[test]
fn a_removed_port_is_forgotten_and_can_come_back() {
    let b = Bench::new(1);
    let (na, nb, nc) = (b.nic("a", 1), b.nic("b", 2), b.nic("c", 3));
    na.send(&na.to(BCAST, b"learn me"));
    b.settle();
    nb.drain();
    nc.drain();
    b.sw.remove_port("a");
    wait_for("a to leave", || b.sw.counters("a").is_none().then_some(()));
    // a's MAC is forgotten: a unicast to it floods to c, and a gets nothing.
    let ask = nb.to(na.mac, b"still there?");
    nb.send(&ask);
    b.settle();
    assert_eq!(nc.drain(), vec![ask]);
    assert!(na.drain().is_empty());
    // Back with new sockets under the same id, and fresh counters.
    let na2 = b.nic("a", 1);
    assert_eq!(b.sw.counters("a"), Some(PortCounters::default()));
    let again = nb.to(na2.mac, b"welcome back");
    nb.send(&again);
    b.settle();
    assert_eq!(na2.drain(), vec![again.clone()]);
    assert_eq!(nc.drain(), vec![again], "a's MAC is unknown until it speaks again");
    assert!(na.drain().is_empty(), "the old NIC is not a port any more");
    // Once it speaks, it is learned again.
    na2.send(&na2.to(BCAST, b"hi"));
    b.settle();
    nb.drain();
    nc.drain();
    nb.send(&nb.to(na2.mac, b"just you"));
    b.settle();
    assert_eq!(na2.drain().len(), 1);
    assert!(nc.drain().is_empty());
}

#[test]
fn a_duplicate_port_is_refused_and_the_first_stays() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    let other = b.unattached("a", 9);
    let port = UnixDatagram::bind(&other.port_path).unwrap();
    let e = b.sw.add_port("a", port, other.nic_path.clone()).unwrap_err();
    assert!(matches!(&e, NetError::DuplicatePort(id) if id == "a"), "{e:?}");
    assert_eq!(e.to_string(), "port `a` is already on the switch");
    let f = nb.to(BCAST, b"still the first a");
    nb.send(&f);
    b.settle();
    assert_eq!(na.drain(), vec![f]);
    assert!(other.drain().is_empty());
}

#[test]
fn a_pulled_cable_drops_both_ways_without_errors() {
    let b = Bench::new(1);
    let (na, nb, nc) = (b.nic("a", 1), b.nic("b", 2), b.nic("c", 3));
    b.sw.set_link("a", false);
    na.send(&na.to(BCAST, b"out"));
    let inbound = nb.to(BCAST, b"in");
    nb.send(&inbound);
    let s = b.settle();
    assert!(na.drain().is_empty(), "nothing reaches a");
    assert!(nb.drain().is_empty(), "nothing leaves a");
    assert_eq!(nc.drain(), vec![inbound], "the others still talk");
    assert_eq!((s.received, s.delivered), (2, 1));
    let a = b.sw.counters("a").unwrap();
    assert_eq!((a.tx_packets, a.rx_packets, a.errors), (1, 0, 0), "{a:?}");
    assert_eq!(b.sw.counters("b").unwrap().errors, 0);
    b.sw.set_link("a", true);
    let back = nb.to(BCAST, b"in again");
    nb.send(&back);
    na.send(&na.to(BCAST, b"out again"));
    b.settle();
    assert_eq!(na.drain(), vec![back]);
    assert_eq!(nb.drain().len(), 1);
}

#[test]
fn an_absent_peer_costs_errors_and_stalls_nobody() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    // `gone`'s QEMU side was never bound; `stuck`'s is bound but never read.
    let gone = b.unattached("gone", 3);
    let port = UnixDatagram::bind(&gone.port_path).unwrap();
    b.sw.add_port("gone", port, b.dir.path().join("absent.sock")).unwrap();
    let stuck = b.nic("stuck", 4);
    const N: u8 = 100;
    for i in 0..N {
        let f = na.to(BCAST, &[&[i][..], &[0; 1000][..]].concat());
        na.send(&f);
        assert_eq!(nb.recv(WAIT), Some(f), "frame {i} to b");
    }
    wait_for("gone's errors", || (b.sw.counters("gone").unwrap().errors == u64::from(N)).then_some(()));
    assert_eq!(b.sw.counters("gone").unwrap().rx_packets, 0);
    // Whatever the switch does with frames `stuck` cannot take yet, it
    // never hands it more than were sent, and the others carry on.
    let got = stuck.drain().len() as u64;
    assert!((1..=u64::from(N)).contains(&got), "stuck got {got}");
    let c = b.sw.counters("stuck").unwrap();
    assert!(c.rx_packets + c.errors <= u64::from(N), "{c:?}");
    let f = nb.to(na.mac, b"b still reaches a");
    nb.send(&f);
    assert_eq!(na.recv(WAIT), Some(f));
}

#[test]
fn a_stopped_switch_refuses_ports_and_keeps_its_last_stats() {
    let b = Bench::new(1);
    let (na, _nb) = (b.nic("a", 1), b.nic("b", 2));
    na.send(&na.to(BCAST, b"counted"));
    b.settle();
    let clone = b.sw.clone();
    clone.stop();
    b.sw.stop();
    let s = b.sw.stats();
    assert_eq!((s.received, s.delivered), (1, 1));
    let late = b.unattached("c", 3);
    let e = b.sw.add_port("c", UnixDatagram::bind(&late.port_path).unwrap(), late.nic_path.clone()).unwrap_err();
    assert!(matches!(e, NetError::Stopped(ref n) if n == "lan"), "{e:?}");
    // The thread took the port sockets with it.
    assert!(UnixDatagram::unbound().unwrap().send_to(b"x", &na.port_path).is_err());
}
