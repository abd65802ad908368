//! What a bridge does to a frame on its way from one member to another:
//! [`Rules`] (partitions, isolation, impairments, whole-bridge and per
//! direction) and the per-delivery decision, [`Rules::verdict`].
//!
//! Impairments combine: a directional rule adds to the whole bridge's
//! (latencies add, losses compound as independent draws, the lower
//! bandwidth wins). Loss draws come from the switch's seeded [`Rng`], one
//! draw per delivery that can be lost, so the same seed and the same traffic
//! drop the same frames.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency, jitter, loss and bandwidth, all off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Impairment {
    pub latency: Duration,
    /// Up to this much more latency, uniformly drawn per frame (order
    /// between two members is kept).
    pub jitter: Duration,
    /// Percent of frames lost, 0–100.
    pub loss_pct: f64,
    /// Bits per second; frames queue past it, and are dropped past the
    /// queue bound ([`queue_bound`]).
    pub bandwidth_bps: Option<u64>,
}

impl Impairment {
    pub fn is_none(&self) -> bool {
        *self == Impairment::default()
    }
}

/// Everything a switch applies, replaced whole on every change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// Ordered pairs `(from, to)` whose frames are dropped.
    pub partitioned: BTreeSet<(String, String)>,
    /// Members cut off from every other member.
    pub isolated: BTreeSet<String>,
    /// Applies to every delivery.
    pub whole: Impairment,
    /// Applies to deliveries from `.0` to `.1`, on top of `whole`.
    pub directional: BTreeMap<(String, String), Impairment>,
}

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Rule,
    Loss,
}

/// How a frame that survives is delivered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivery {
    pub delay: Duration,
    pub rate_bps: Option<u64>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.partitioned.is_empty() && self.isolated.is_empty() && self.whole.is_none() && self.directional.is_empty()
    }

    /// The fate of one frame from `from` to `to`.
    pub fn verdict(&self, from: &str, to: &str, rng: &mut Rng) -> Result<Delivery, Drop> {
        if self.isolated.contains(from) || self.isolated.contains(to) {
            return Err(Drop::Rule);
        }
        let pair = (from.to_string(), to.to_string());
        if self.partitioned.contains(&pair) {
            return Err(Drop::Rule);
        }
        let dir = self.directional.get(&pair);
        let parts = std::iter::once(&self.whole).chain(dir);
        let mut delivery = Delivery { delay: Duration::ZERO, rate_bps: None };
        for imp in parts {
            if imp.loss_pct > 0.0 && rng.percent() < imp.loss_pct {
                return Err(Drop::Loss);
            }
            delivery.delay += imp.latency;
            if !imp.jitter.is_zero() {
                delivery.delay += imp.jitter.mul_f64(rng.unit());
            }
            if let Some(bps) = imp.bandwidth_bps {
                delivery.rate_bps = Some(delivery.rate_bps.map_or(bps, |r| r.min(bps)));
            }
        }
        Ok(delivery)
    }
}

/// How far ahead of real time a bandwidth-limited direction may queue:
/// 100 ms of traffic at its rate, at least 64 KiB. Frames beyond it are
/// dropped (a full queue), as a router would.
pub fn queue_bound(rate_bps: u64) -> Duration {
    let bytes = (rate_bps / 8 / 10).max(64 << 10);
    Duration::from_secs_f64(bytes as f64 * 8.0 / rate_bps.max(1) as f64)
}

/// How long `bytes` take on the wire at `rate_bps`.
pub fn wire_time(bytes: usize, rate_bps: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 * 8.0 / rate_bps.max(1) as f64)
}

/// A small seeded generator (splitmix64): cheap, and the same seed always
/// gives the same sequence.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, 100).
    pub fn percent(&mut self) -> f64 {
        self.unit() * 100.0
    }
}

/// The seed of bridge `bridge` in a run seeded `run_seed`: two bridges do
/// not share a sequence.
pub fn derive_seed(run_seed: u64, bridge: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ run_seed;
    for b in bridge.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.into(), b.into())
    }

    #[test]
    fn a_one_way_partition_drops_one_direction_only() {
        let mut r = Rules::default();
        r.partitioned.insert(pair("a", "b"));
        let mut rng = Rng::new(1);
        assert_eq!(r.verdict("a", "b", &mut rng), Err(Drop::Rule));
        assert!(r.verdict("b", "a", &mut rng).is_ok());
        r.isolated.insert("c".into());
        assert_eq!(r.verdict("c", "a", &mut rng), Err(Drop::Rule));
        assert_eq!(r.verdict("b", "c", &mut rng), Err(Drop::Rule));
    }

    #[test]
    fn whole_and_directional_impairments_combine() {
        let whole =
            Impairment { latency: Duration::from_millis(10), bandwidth_bps: Some(8_000_000), ..Default::default() };
        let mut r = Rules { whole, ..Default::default() };
        r.directional.insert(
            pair("a", "b"),
            Impairment { latency: Duration::from_millis(5), bandwidth_bps: Some(1_000_000), ..Default::default() },
        );
        let mut rng = Rng::new(1);
        let ab = r.verdict("a", "b", &mut rng).unwrap();
        assert_eq!(ab, Delivery { delay: Duration::from_millis(15), rate_bps: Some(1_000_000) });
        let ba = r.verdict("b", "a", &mut rng).unwrap();
        assert_eq!(ba, Delivery { delay: Duration::from_millis(10), rate_bps: Some(8_000_000) });
    }

    #[test]
    fn loss_repeats_with_the_seed_and_lands_near_its_rate() {
        let r = Rules { whole: Impairment { loss_pct: 10.0, ..Default::default() }, ..Default::default() };
        let pattern = |seed| {
            let mut rng = Rng::new(seed);
            (0..2000).map(|_| r.verdict("a", "b", &mut rng).is_err()).collect::<Vec<bool>>()
        };
        assert_eq!(pattern(7), pattern(7));
        assert_ne!(pattern(7), pattern(8));
        let lost = pattern(7).iter().filter(|x| **x).count();
        assert!((100..300).contains(&lost), "{lost} of 2000 lost at 10%");
        assert_ne!(derive_seed(1, "lan"), derive_seed(1, "wan"));
        assert_ne!(derive_seed(1, "lan"), derive_seed(2, "lan"));
    }

    #[test]
    fn the_queue_holds_a_tenth_of_a_second_or_64_kib() {
        assert_eq!(queue_bound(80_000_000), Duration::from_millis(100));
        assert!(queue_bound(1_000_000) > Duration::from_millis(500));
        assert_eq!(wire_time(1250, 1_000_000), Duration::from_millis(10));
    }
}
