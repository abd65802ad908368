//! Partitions, isolation and impairments over real sockets. Timing is
//! checked as lower bounds only.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use super::*;
use crate::net::rules::{queue_bound, wire_time};
use crate::net::{Impairment, Rules};

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

fn whole(imp: Impairment) -> Rules {
    Rules { whole: imp, ..Rules::default() }
}

#[test]
fn a_one_way_partition_drops_one_direction_only() {
    let b = Bench::new(1);
    let (na, nb, nc) = (b.nic("a", 1), b.nic("b", 2), b.nic("c", 3));
    b.sw.set_rules(Rules { partitioned: [pair("a", "b")].into(), ..Rules::default() });
    let (from_a, from_b) = (na.to(BCAST, b"a says"), nb.to(BCAST, b"b says"));
    na.send(&from_a);
    nb.send(&from_b);
    let s = b.settle();
    assert!(nb.drain().is_empty(), "a→b is partitioned");
    assert_eq!(na.drain(), vec![from_b.clone()], "b→a is not");
    let mut at_c = nc.drain();
    at_c.sort();
    let mut both = vec![from_a, from_b];
    both.sort();
    assert_eq!(at_c, both);
    assert_eq!((s.dropped_rule, s.delivered), (1, 3));
    // Lifting it restores the path.
    b.sw.set_rules(Rules::default());
    let again = na.to(BCAST, b"again");
    na.send(&again);
    b.settle();
    assert_eq!(nb.drain(), vec![again]);
}

#[test]
fn an_isolated_member_hears_and_reaches_nobody() {
    let b = Bench::new(1);
    let (na, nb, nc) = (b.nic("a", 1), b.nic("b", 2), b.nic("c", 3));
    b.sw.set_rules(Rules { isolated: ["c".to_string()].into(), ..Rules::default() });
    let to_all = na.to(BCAST, b"to all");
    na.send(&to_all);
    nc.send(&nc.to(BCAST, b"from c"));
    nc.send(&nc.to(na.mac, b"c to a"));
    let s = b.settle();
    assert_eq!(nb.drain(), vec![to_all]);
    assert!(nc.drain().is_empty(), "c hears nobody");
    assert!(na.drain().is_empty(), "c reaches nobody");
    assert_eq!(s.dropped_rule, 4);
    assert_eq!(b.sw.counters("c").unwrap().errors, 0);
}

#[test]
fn latency_delays_delivery_at_least_as_configured() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    let latency = Duration::from_millis(80);
    b.sw.set_rules(whole(Impairment { latency, ..Impairment::default() }));
    for i in 0..3u8 {
        let sent = Instant::now();
        na.send(&na.to(BCAST, &[i]));
        assert_eq!(nb.recv(WAIT), Some(na.to(BCAST, &[i])));
        assert!(sent.elapsed() >= latency, "frame {i} after {:?}", sent.elapsed());
    }
}

#[test]
fn whole_and_directional_impairments_combine() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    let ms = Duration::from_millis;
    b.sw.set_rules(Rules {
        whole: Impairment { latency: ms(40), ..Impairment::default() },
        directional: BTreeMap::from([
            (pair("a", "b"), Impairment { latency: ms(40), ..Impairment::default() }),
            (pair("b", "a"), Impairment { loss_pct: 100.0, ..Impairment::default() }),
        ]),
        ..Rules::default()
    });
    let sent = Instant::now();
    na.send(&na.to(BCAST, b"slow"));
    assert!(nb.recv(WAIT).is_some());
    assert!(sent.elapsed() >= ms(80), "a→b took {:?}", sent.elapsed());
    nb.send(&nb.to(BCAST, b"lost"));
    assert_eq!(b.settle().dropped_loss, 1);
    assert!(na.recv(ms(200)).is_none());
}

#[test]
fn jitter_keeps_each_direction_in_order() {
    let b = Bench::new(3);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    let ms = Duration::from_millis;
    b.sw.set_rules(whole(Impairment { latency: ms(5), jitter: ms(30), ..Impairment::default() }));
    for i in 0..16u8 {
        na.send(&na.to(BCAST, &[i]));
    }
    let got: Vec<u8> = (0..16).map(|_| nb.recv(WAIT).expect("all arrive")[14]).collect();
    assert_eq!(got, (0..16).collect::<Vec<u8>>());
}

/// Which of `n` frames a→b arrive under `loss_pct` with switch seed `seed`.
fn loss_pattern(seed: u64, loss_pct: f64, n: u32) -> Vec<bool> {
    let b = Bench::new(seed);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    b.sw.set_rules(whole(Impairment { loss_pct, ..Impairment::default() }));
    let pattern: Vec<bool> = (0..n)
        .map(|i| {
            na.send(&na.to(nb.mac, &i.to_be_bytes()));
            b.settle();
            match nb.drain().as_slice() {
                [] => false,
                [one] => {
                    assert_eq!(one[14..18], i.to_be_bytes());
                    true
                }
                many => panic!("{} frames for one", many.len()),
            }
        })
        .collect();
    let s = b.settle();
    assert_eq!(s.dropped_loss as usize, pattern.iter().filter(|k| !**k).count());
    pattern
}

#[test]
fn the_same_seed_drops_the_same_frames_and_another_seed_others() {
    let first = loss_pattern(7, 50.0, 200);
    assert_eq!(first, loss_pattern(7, 50.0, 200));
    assert_ne!(first, loss_pattern(8, 50.0, 200), "another seed, another pattern");
    let kept = first.iter().filter(|k| **k).count();
    assert!((50..=150).contains(&kept), "{kept} of 200 kept at 50%");
}

#[test]
fn frames_of_another_ethertype_do_not_shift_the_loss_pattern() {
    let run = |interleave: bool| {
        let b = Bench::new(11);
        let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
        b.sw.set_rules(whole(Impairment { loss_pct: 50.0, ..Impairment::default() }));
        (0..100u32)
            .map(|i| {
                if interleave {
                    // An IPv6 frame between every two test frames.
                    na.send(&[&nb.mac[..], &na.mac[..], &[0x86, 0xdd], &i.to_be_bytes()].concat());
                }
                na.send(&na.to(nb.mac, &i.to_be_bytes()));
                b.settle();
                nb.drain().iter().any(|f| f[12..14] == ETHERTYPE)
            })
            .collect::<Vec<bool>>()
    };
    assert_eq!(run(false), run(true));
}

/// Sends `n` frames of `size` bytes a→b, keeping at most `window` unreceived,
/// while a thread reads them; how many arrived and the time of the last.
fn paced_burst(na: &Nic, nb: Nic, n: usize, size: usize, window: usize) -> (usize, Duration) {
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let reader = std::thread::spawn(move || {
        let mut last = Instant::now();
        while count.load(Ordering::SeqCst) < n {
            let Some(f) = nb.recv(WAIT) else { break };
            assert_eq!(f.len(), size);
            assert_eq!(f[14..18], (count.load(Ordering::SeqCst) as u32).to_be_bytes(), "in order");
            count.fetch_add(1, Ordering::SeqCst);
            last = Instant::now();
        }
        last
    });
    let start = Instant::now();
    for i in 0..n {
        wait_for("the window to open", || (i - received.load(Ordering::SeqCst) < window).then_some(()));
        let mut payload = vec![0u8; size - 14];
        payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
        na.send(&na.to(mac(2), &payload));
    }
    let last = reader.join().unwrap();
    (received.load(Ordering::SeqCst), last - start)
}

#[test]
fn bandwidth_spaces_frames_without_dropping_within_the_bound() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    nb.send(&nb.to(BCAST, b"learn b"));
    b.settle();
    na.drain();
    let rate = 1_000_000;
    b.sw.set_rules(whole(Impairment { bandwidth_bps: Some(rate), ..Impairment::default() }));
    // 100 × 1250 bytes = 1 Mbit: a second on the wire. At most 40 frames
    // (0.4 s) are queued at once, within the bound of this rate.
    assert!(wire_time(40 * 1250, rate) < queue_bound(rate));
    let (got, took) = paced_burst(&na, nb, 100, 1250, 40);
    assert_eq!(got, 100);
    assert!(took >= Duration::from_millis(900), "100 frames in {took:?}");
    let s = b.settle();
    assert_eq!((s.dropped_queue, s.dropped_loss), (0, 0));
}

#[test]
fn a_full_bandwidth_queue_tail_drops() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    let rate = 1_000_000;
    b.sw.set_rules(whole(Impairment { bandwidth_bps: Some(rate), ..Impairment::default() }));
    // Frames whose wire slot starts within the bound are kept: at least the
    // first `fit`, however slowly the burst is sent.
    let fit = (queue_bound(rate).as_nanos() / wire_time(1250, rate).as_nanos()) as u32;
    assert!(fit < 100, "the bound holds {fit} frames");
    let n = 300u32;
    for i in 0..n {
        na.send(&na.to(nb.mac, &[&i.to_be_bytes()[..], &[0; 1232]].concat()));
    }
    let dropped = b.settle().dropped_queue;
    assert!(dropped > 0, "nothing dropped");
    // Everything not dropped arrives, in order, the first `fit` among them.
    let got: Vec<u32> = (0..n - dropped as u32)
        .map(|_| {
            let f = nb.recv(WAIT).expect("a kept frame arrives");
            u32::from_be_bytes(f[14..18].try_into().unwrap())
        })
        .collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    assert_eq!(got[..fit as usize], (0..fit).collect::<Vec<u32>>());
    assert!(nb.recv(Duration::from_millis(50)).is_none());
    assert_eq!(b.settle().dropped_queue, dropped);
}

#[test]
fn a_frame_in_flight_is_lost_when_the_cable_is_pulled() {
    let b = Bench::new(1);
    let (na, nb) = (b.nic("a", 1), b.nic("b", 2));
    let latency = Duration::from_millis(500);
    b.sw.set_rules(whole(Impairment { latency, ..Impairment::default() }));
    let sent = Instant::now();
    na.send(&na.to(BCAST, b"in flight"));
    b.settle();
    let pulled_after = sent.elapsed();
    b.sw.set_link("b", false);
    std::thread::sleep(latency + Duration::from_millis(200));
    // Only meaningful if the pull was sent well before the frame was due
    // (the test thread could have been descheduled).
    if pulled_after < latency / 5 {
        assert!(nb.drain().is_empty(), "a frame due after the pull was delivered");
        assert_eq!(b.sw.counters("b").unwrap(), crate::net::PortCounters::default());
    }
}
