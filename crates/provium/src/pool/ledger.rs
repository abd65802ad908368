//! [`Pool`]: what is held of the run's budget and who waits for more, under
//! one lock with one condition variable; [`Holder`]: one file's identity in
//! it; [`Reservation`]: an amount held until the guard drops.
//!
//! Admission is first come, first served: a request waits until it fits
//! *and* every request that came before it has been served (no backfill),
//! so a large boot is not starved by small ones. One exception keeps the
//! pool moving: when every holder is itself waiting, nothing held will be
//! given back, so the first request in line that fits goes ahead.
//!
//! Deadlock: when every holder waits and what is free serves none of the
//! waiting requests, nothing can ever change. The first waiting request of
//! a holder to see it fails (with [`PoolError::Deadlocked`]) instead of
//! sleeping forever; its file fails and gives back what it held, and the
//! others go on. A request of a file that holds nothing is never chosen:
//! failing it would free nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::amount::Amounts;
use super::error::PoolError;
use super::ResourceAmount;
use crate::sync::lock;

/// The budget of one run and what is held of it.
pub struct Pool {
    total: ResourceAmount,
    ledger: Mutex<Ledger>,
    changed: Condvar,
}

/// The pool's use at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub total: ResourceAmount,
    pub used: ResourceAmount,
    pub free: ResourceAmount,
    /// Requests waiting in line.
    pub waiting: usize,
}

#[derive(Default)]
struct Ledger {
    used: ResourceAmount,
    /// What each holder holds (entries at zero are removed).
    held: HashMap<u64, ResourceAmount>,
    /// Waiting requests, in the order they came.
    queue: VecDeque<Ticket>,
    next_ticket: u64,
    next_holder: u64,
}

#[derive(Debug, Clone, Copy)]
struct Ticket {
    id: u64,
    holder: u64,
    amount: ResourceAmount,
}

impl Ledger {
    fn free(&self, total: ResourceAmount) -> ResourceAmount {
        total.minus(self.used)
    }

    fn waits(&self, holder: u64) -> bool {
        self.queue.iter().any(|t| t.holder == holder)
    }

    /// Someone holds part of the pool and every holder waits for more:
    /// nothing held will be given back.
    fn stuck(&self) -> bool {
        !self.held.is_empty() && self.held.keys().all(|&h| self.waits(h))
    }

    fn ticket(&self, id: u64) -> Ticket {
        *self.queue.iter().find(|t| t.id == id).expect("a waiting ticket is in the queue")
    }

    /// Whether ticket `id` may take its amount now: it is the first in
    /// line and fits, or the pool is stuck and it is the first that fits.
    fn grantable(&self, id: u64, total: ResourceAmount) -> bool {
        let free = self.free(total);
        match self.queue.iter().find(|t| t.amount.fits_in(free)) {
            Some(t) if t.id == id => self.queue.front().is_some_and(|f| f.id == id) || self.stuck(),
            _ => false,
        }
    }

    /// The deadlock ticket `id` is caught in, if it is one that failing
    /// would break (its holder holds something).
    fn deadlock(&self, id: u64, total: ResourceAmount) -> Option<PoolError> {
        let me = self.ticket(id);
        let free = self.free(total);
        let none_fits = !self.queue.iter().any(|t| t.amount.fits_in(free));
        (self.held.contains_key(&me.holder) && none_fits && self.stuck()).then_some(PoolError::Deadlocked {
            holders: self.held.len(),
            held: self.used,
            total,
            free,
            waiting: self.queue.len(),
            wants: me.amount,
        })
    }

    fn leave_queue(&mut self, id: u64) {
        self.queue.retain(|t| t.id != id);
    }
}

impl Pool {
    pub fn new(total: ResourceAmount) -> Arc<Pool> {
        Arc::new(Pool { total, ledger: Mutex::default(), changed: Condvar::new() })
    }

    pub fn total(&self) -> ResourceAmount {
        self.total
    }

    pub fn usage(&self) -> Usage {
        let l = lock(&self.ledger);
        Usage { total: self.total, used: l.used, free: l.free(self.total), waiting: l.queue.len() }
    }

    /// A new holder (one test file) of this pool.
    pub fn holder(self: &Arc<Self>) -> Arc<Holder> {
        let mut l = lock(&self.ledger);
        l.next_holder += 1;
        Arc::new(Holder { pool: self.clone(), id: l.next_holder })
    }

    fn wait<'a>(&self, l: MutexGuard<'a, Ledger>) -> MutexGuard<'a, Ledger> {
        self.changed.wait(l).unwrap_or_else(|p| p.into_inner())
    }

    fn give_back(&self, holder: u64, amount: ResourceAmount) {
        let mut l = lock(&self.ledger);
        l.used = l.used.minus(amount);
        if let Some(h) = l.held.get_mut(&holder) {
            *h = h.minus(amount);
            if h.is_zero() {
                l.held.remove(&holder);
            }
        }
        self.changed.notify_all();
    }
}

/// One file's identity in the pool: what it holds is counted under it, and
/// the deadlock check asks whether it waits.
pub struct Holder {
    pool: Arc<Pool>,
    id: u64,
}

impl Holder {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Takes `amount` from the pool, waiting (in line) until it fits.
    /// `on_wait` runs once, if the request has to wait, under the pool's
    /// lock; what it returns is dropped when the wait ends (a `file_blocked`
    /// event and a [`super::WaitClock`] guard).
    pub fn acquire<G>(
        self: &Arc<Self>,
        amount: ResourceAmount,
        on_wait: impl FnOnce() -> G,
    ) -> Result<Reservation, PoolError> {
        let pool = &self.pool;
        if !amount.fits_in(pool.total) {
            return Err(PoolError::ExceedsTotal { requested: amount, total: pool.total });
        }
        if amount.is_zero() {
            return Ok(Reservation::unbacked(amount));
        }
        let mut on_wait = Some(on_wait);
        let mut waiting: Option<G> = None;
        let mut l = lock(&pool.ledger);
        l.next_ticket += 1;
        let id = l.next_ticket;
        l.queue.push_back(Ticket { id, holder: self.id, amount });
        // A new waiter can make the pool stuck, which lets a waiter that
        // fits go ahead: everyone looks again.
        pool.changed.notify_all();
        loop {
            if l.grantable(id, pool.total) {
                l.leave_queue(id);
                l.used = l.used.plus(amount);
                let held = l.held.entry(self.id).or_default();
                *held = held.plus(amount);
                pool.changed.notify_all();
                drop(l);
                drop(waiting);
                let lender: Arc<dyn Lender> = self.clone();
                return Ok(Reservation { amount, lender: Some(lender) });
            }
            if let Some(e) = l.deadlock(id, pool.total) {
                l.leave_queue(id);
                pool.changed.notify_all();
                drop(l);
                drop(waiting);
                return Err(e);
            }
            if let Some(f) = on_wait.take() {
                waiting = Some(f());
            }
            l = pool.wait(l);
        }
    }
}

/// Where a reservation's amount goes back to: the pool, or a claim.
pub(super) trait Lender: Send + Sync {
    fn give_back(&self, amount: ResourceAmount);
}

impl Lender for Holder {
    fn give_back(&self, amount: ResourceAmount) {
        self.pool.give_back(self.id, amount);
    }
}

/// An amount held of the pool (or of a file's claim) until this is dropped.
#[must_use = "a reservation is given back when dropped"]
pub struct Reservation {
    amount: ResourceAmount,
    lender: Option<Arc<dyn Lender>>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("amount", &self.amount).finish_non_exhaustive()
    }
}

impl Reservation {
    /// An amount held of nothing (a run without a pool, or a zero request).
    pub fn unbacked(amount: ResourceAmount) -> Reservation {
        Reservation { amount, lender: None }
    }

    pub(super) fn lent(amount: ResourceAmount, lender: Arc<dyn Lender>) -> Reservation {
        Reservation { amount, lender: Some(lender) }
    }

    pub fn amount(&self) -> ResourceAmount {
        self.amount
    }

    /// Splits a joint reservation into one per part (each given back when
    /// it drops); the parts must add up to what it holds.
    pub fn split(mut self, parts: &[ResourceAmount]) -> Vec<Reservation> {
        assert_eq!(ResourceAmount::sum(parts), self.amount, "a reservation splits into parts that add up to it");
        let lender = self.lender.take();
        parts.iter().map(|&amount| Reservation { amount, lender: lender.clone() }).collect()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(l) = self.lender.take() {
            l.give_back(self.amount);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    pub(crate) fn mib(m: u64) -> ResourceAmount {
        ResourceAmount { memory_bytes: m << 20, cpus: 0 }
    }

    /// Waits (bounded) until `n` requests wait in `pool`.
    pub(crate) fn until_waiting(pool: &Pool, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.usage().waiting != n {
            assert!(Instant::now() < deadline, "never {n} waiting: {:?}", pool.usage());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn take(h: &Arc<Holder>, a: ResourceAmount) -> Reservation {
        h.acquire(a, || ()).expect("fits")
    }

    #[test]
    fn pool_release_on_drop_gives_back_and_wakes_a_waiter() {
        let pool = Pool::new(mib(100));
        let (a, b) = (pool.holder(), pool.holder());
        let r = take(&a, mib(80));
        assert_eq!(pool.usage().used, mib(80));
        let (tx, rx) = channel();
        let waiter = std::thread::spawn(move || tx.send(take(&b, mib(50)).amount()).unwrap());
        until_waiting(&pool, 1);
        assert!(rx.try_recv().is_err(), "50 MiB does not fit beside 80 of 100");
        drop(r);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(mib(50)));
        waiter.join().unwrap();
        // The waiter's reservation dropped with its thread.
        assert_eq!(pool.usage(), Usage { total: mib(100), used: mib(0), free: mib(100), waiting: 0 });
    }

    #[test]
    fn pool_admits_in_order_without_backfill() {
        let pool = Pool::new(mib(100));
        let first = pool.holder();
        let held = take(&first, mib(100));
        let (tx, rx) = channel::<(&str, Reservation)>();
        let mut threads = Vec::new();
        // In line: a 60, a 50, then a 30 that would fit beside the 60 but
        // must not pass the 50 waiting before it.
        for (name, m) in [("sixty", 60), ("fifty", 50), ("thirty", 30)] {
            let (h, tx) = (pool.holder(), tx.clone());
            threads.push(std::thread::spawn(move || tx.send((name, take(&h, mib(m)))).unwrap()));
            until_waiting(&pool, threads.len());
        }
        drop(held);
        let (name, sixty) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(name, "sixty");
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "the 30 went past the 50 (backfill)");
        assert_eq!(pool.usage().waiting, 2);
        drop(sixty);
        // Both fit now; which thread reports first is the scheduler's.
        let mut admitted: Vec<&str> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap().0).collect();
        admitted.sort();
        assert_eq!(admitted, ["fifty", "thirty"]);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn pool_joint_reservation_is_all_or_nothing_and_splits() {
        let pool = Pool::new(ResourceAmount { memory_bytes: 1000 << 20, cpus: 4 });
        let (other, lab) = (pool.holder(), pool.holder());
        let held = take(&other, ResourceAmount { memory_bytes: 600 << 20, cpus: 1 });
        let vm = ResourceAmount { memory_bytes: 300 << 20, cpus: 1 };
        let (tx, rx) = channel();
        let t = std::thread::spawn(move || tx.send(take(&lab, vm.plus(vm)).split(&[vm, vm])).unwrap());
        until_waiting(&pool, 1);
        // One VM's 300 would fit in the 400 free; the lab takes none of it
        // until both fit.
        assert_eq!(pool.usage().used, ResourceAmount { memory_bytes: 600 << 20, cpus: 1 });
        drop(held);
        let mut parts = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(pool.usage().used, vm.plus(vm));
        parts.pop();
        assert_eq!(pool.usage().used, vm, "each part goes back on its own");
        parts.pop();
        assert_eq!(pool.usage().used, ResourceAmount::default());
    }

    #[test]
    fn pool_refuses_at_once_what_exceeds_its_total() {
        let pool = Pool::new(ResourceAmount { memory_bytes: 1 << 30, cpus: 2 });
        let h = pool.holder();
        let e = h.acquire(ResourceAmount { memory_bytes: 2 << 30, cpus: 1 }, || ()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "requested 2 GiB and 1 vCPU, which exceeds the pool's total of 1 GiB and 2 vCPUs; pass --mem to give the \
             pool more"
        );
        let e = h.acquire(ResourceAmount { memory_bytes: 1 << 20, cpus: 3 }, || ()).unwrap_err();
        assert!(e.to_string().ends_with("pass --cpus or --cpu-overcommit to give the pool more"), "{e}");
        assert_eq!(pool.usage().waiting, 0, "nothing waited");
    }

    #[test]
    fn pool_deadlock_of_two_holders_is_detected_not_hung() {
        let pool = Pool::new(mib(1000));
        let (tx, rx) = channel::<Result<Reservation, PoolError>>();
        let both = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (h, tx, both) = (pool.holder(), tx.clone(), both.clone());
                std::thread::spawn(move || {
                    let first = take(&h, mib(500));
                    both.wait();
                    let second = h.acquire(mib(400), || ());
                    // The victim's file fails and gives back its first 500.
                    let failed = second.is_err();
                    tx.send(second).unwrap();
                    if failed {
                        drop(first);
                    } else {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        let one = rx.recv_timeout(Duration::from_secs(10)).expect("the pool hung: no deadlock detected");
        let e = one.expect_err("the first to finish is the victim");
        assert_eq!(
            e.to_string(),
            "the pool is deadlocked: 2 files hold 1000 MiB of its 1000 MiB and every one of them is waiting for more, \
             while the 0 MiB still free serves none of the 2 waiting requests (this one wants 400 MiB); reserve a \
             lab's VMs together with lab:boot(), claim what each file needs with provium:claim{…}, or pass \
             --mem/--cpus to give the pool more"
        );
        let other = rx.recv_timeout(Duration::from_secs(10)).expect("the survivor was never served");
        assert_eq!(other.expect("the survivor gets its 400").amount(), mib(400));
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.usage().used, mib(0));
    }

    #[test]
    fn pool_stuck_lets_the_first_fitting_go_ahead_and_spares_files_holding_nothing() {
        let pool = Pool::new(mib(100));
        let (big, small, newcomer) = (pool.holder(), pool.holder(), pool.holder());
        let big_held = take(&big, mib(40));
        let small_held = take(&small, mib(40));
        let (tx, rx) = channel::<(&str, Result<Reservation, PoolError>)>();
        // `big` waits first in line for 50 (20 free): it does not fit.
        let t1 = {
            let (tx, big) = (tx.clone(), big.clone());
            std::thread::spawn(move || tx.send(("big", big.acquire(mib(50), || ()))).unwrap())
        };
        until_waiting(&pool, 1);
        // A file holding nothing waits for 30: it does not fit either, and
        // is never the deadlock's victim.
        let t2 = {
            let (tx, n) = (tx.clone(), newcomer.clone());
            std::thread::spawn(move || tx.send(("newcomer", n.acquire(mib(30), || ()))).unwrap())
        };
        until_waiting(&pool, 2);
        // `small` asks for 10: it fits but is behind the others; since both
        // holders now wait, nothing would ever be given back: it goes.
        let r = small.acquire(mib(10), || ()).expect("the stuck pool serves the request that fits");
        assert!(rx.try_recv().is_err());
        // `small` gives all back: `big` gets its 50, then the newcomer its 30.
        drop((r, small_held));
        // Both are served (in line order, under the ledger's lock); which
        // thread reports first is the scheduler's.
        let mut got: Vec<(&str, bool)> =
            (0..2).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).map(|(n, r)| (n, r.is_ok())).collect();
        got.sort();
        assert_eq!(got, [("big", true), ("newcomer", true)]);
        t1.join().unwrap();
        t2.join().unwrap();
        drop(big_held);
    }

    #[test]
    fn pool_single_holder_waiting_for_more_than_can_come_back_is_a_deadlock() {
        let pool = Pool::new(mib(700));
        let h = pool.holder();
        let _first = take(&h, mib(400));
        let (tx, rx) = channel();
        std::thread::spawn(move || tx.send(h.acquire(mib(400), || ()).map(|r| r.amount())).unwrap());
        let e = rx.recv_timeout(Duration::from_secs(10)).expect("the pool hung: no deadlock detected").unwrap_err();
        assert!(matches!(e, PoolError::Deadlocked { holders: 1, waiting: 1, .. }), "{e:?}");
        assert_eq!(pool.usage().waiting, 0, "the failed request left the line");
    }
}
