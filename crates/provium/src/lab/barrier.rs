//! `lab:barrier(name, count[, timeout])`: a rendezvous of `count` arrivals
//! under one name, for the whole run. One file's Lua code runs on one
//! thread, so the parties are files running at the same time (`-j`), each
//! arriving once; a barrier is reusable (each release starts a new
//! generation).
//!
//! The count is fixed by the first arrival of a generation; an arrival with
//! another count is refused. A wait that runs out of time raises (it does
//! not return `false` as one reading of the reference has it): a barrier
//! that did not fill is a failed rendezvous, and a test must not go on as
//! if its peers were there.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarrierError {
    #[error("barrier `{name}`: {arrived} of {count} arrived within {timeout:?}")]
    TimedOut { name: String, arrived: usize, count: usize, timeout: Duration },
    #[error("barrier `{name}` is waiting for {locked} arrivals; this one says {given}")]
    CountMismatch { name: String, locked: usize, given: usize },
    #[error("barrier `{name}`: count must be at least 1")]
    BadCount { name: String },
}

#[derive(Default)]
struct Gate {
    count: usize,
    arrived: usize,
    generation: u64,
}

/// The barriers of one process.
#[derive(Default)]
pub struct Barriers {
    gates: Mutex<HashMap<String, Gate>>,
    released: Condvar,
}

impl Barriers {
    /// The run's barriers.
    pub fn global() -> &'static Barriers {
        static ALL: OnceLock<Barriers> = OnceLock::new();
        ALL.get_or_init(Barriers::default)
    }

    /// Arrives at `name` and waits until `count` have arrived, or `timeout`.
    pub fn wait(&self, name: &str, count: usize, timeout: Duration) -> Result<(), BarrierError> {
        if count == 0 {
            return Err(BarrierError::BadCount { name: name.into() });
        }
        let deadline = Instant::now() + timeout;
        let mut gates = crate::sync::lock(&self.gates);
        let gate = gates.entry(name.to_string()).or_default();
        if gate.arrived == 0 {
            gate.count = count;
        } else if gate.count != count {
            return Err(BarrierError::CountMismatch { name: name.into(), locked: gate.count, given: count });
        }
        gate.arrived += 1;
        if gate.arrived == gate.count {
            gate.arrived = 0;
            gate.generation += 1;
            self.released.notify_all();
            return Ok(());
        }
        let mine = gate.generation;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let gate = gates.get_mut(name).expect("a gate stays while someone waits");
            if gate.generation != mine {
                return Ok(());
            }
            if left.is_zero() {
                let arrived = gate.arrived;
                gate.arrived -= 1;
                return Err(BarrierError::TimedOut { name: name.into(), arrived, count, timeout });
            }
            gates = self.released.wait_timeout(gates, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn parties_meet_and_the_barrier_is_reused() {
        let b = Arc::new(Barriers::default());
        for _round in 0..2 {
            let others: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    std::thread::spawn(move || b.wait("meet", 3, Duration::from_secs(10)))
                })
                .collect();
            assert_eq!(b.wait("meet", 3, Duration::from_secs(10)), Ok(()));
            for t in others {
                assert_eq!(t.join().unwrap(), Ok(()));
            }
        }
        assert_eq!(b.wait("alone", 1, Duration::ZERO), Ok(()));
    }

    #[test]
    fn a_short_barrier_times_out_and_a_wrong_count_is_refused() {
        let b = Arc::new(Barriers::default());
        let e = b.wait("x", 2, Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.to_string(), "barrier `x`: 1 of 2 arrived within 50ms");
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.wait("y", 2, Duration::from_secs(10)))
        };
        while crate::sync::lock(&b.gates).get("y").map_or(0, |g| g.arrived) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            b.wait("y", 3, Duration::ZERO),
            Err(BarrierError::CountMismatch { name: "y".into(), locked: 2, given: 3 })
        );
        assert_eq!(b.wait("y", 2, Duration::from_secs(10)), Ok(()));
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert!(matches!(b.wait("z", 0, Duration::ZERO), Err(BarrierError::BadCount { .. })));
    }
}
