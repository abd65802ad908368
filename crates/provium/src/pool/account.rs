//! [`Account`]: one test file's face of the pool. Everything the file
//! reserves (its per-file overhead, each VM boot, a lab's joint boot, its
//! claim) goes through it, so the pool counts it under one holder, a wait
//! emits `file_blocked` for the file, and the file's [`WaitClock`] runs
//! while it waits (its watchdogs leave that time out).
//!
//! With a claim (`provium:claim{…}`) the claim is the file's whole VM
//! budget: boots take slices of it and never wait; a boot beyond what is
//! left fails with [`PoolError::ClaimExceeded`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::amount::Amounts;
use super::error::PoolError;
use super::ledger::{Holder, Lender, Pool, Reservation};
use super::ResourceAmount;
use crate::events::{BlockReason, Event, Events};
use crate::sync::lock;

/// A file's reservations, its claim, and the time it spent waiting.
/// Cheap to clone: every clone is the same account.
#[derive(Clone)]
pub struct Account(Arc<Inner>);

struct Inner {
    /// `None`: no pool (fixture builds from the CLI, library use); every
    /// reservation is granted at once and counts nothing.
    holder: Option<Arc<Holder>>,
    file: String,
    events: Events,
    waits: WaitClock,
    claim: Mutex<ClaimSlot>,
}

enum ClaimSlot {
    None,
    Held(Claim),
    Ended,
}

impl Account {
    /// The account of file `file` with `pool`; its events go to `events`.
    pub fn new(pool: &Arc<Pool>, file: &str, events: Events) -> Account {
        Account::make(Some(pool.holder()), file, events)
    }

    /// An account with no pool behind it.
    pub fn unlimited() -> Account {
        Account::make(None, "", Events::discard())
    }

    fn make(holder: Option<Arc<Holder>>, file: &str, events: Events) -> Account {
        Account(Arc::new(Inner {
            holder,
            file: file.to_string(),
            events,
            waits: WaitClock::default(),
            claim: Mutex::new(ClaimSlot::None),
        }))
    }

    /// The clock of the time this file spent waiting for the pool.
    pub fn waits(&self) -> WaitClock {
        self.0.waits.clone()
    }

    /// Reserves `amount` for one VM (or the file's overhead): from the
    /// claim if the file holds one (never waiting), else from the pool,
    /// waiting in line until it fits.
    pub fn reserve(&self, amount: ResourceAmount) -> Result<Reservation, PoolError> {
        if let ClaimSlot::Held(claim) = &*lock(&self.0.claim) {
            return claim.slice(amount);
        }
        self.take_from_pool(amount)
    }

    /// Reserves for several VMs at once, all or nothing (`lab:boot()`):
    /// one request for the sum, split into one reservation per part.
    pub fn reserve_joint(&self, parts: &[ResourceAmount]) -> Result<Vec<Reservation>, PoolError> {
        Ok(self.reserve(ResourceAmount::sum(parts))?.split(parts))
    }

    fn take_from_pool(&self, amount: ResourceAmount) -> Result<Reservation, PoolError> {
        let Some(holder) = &self.0.holder else { return Ok(Reservation::unbacked(amount)) };
        holder.acquire(amount, || {
            let waiting_for = amount;
            self.0.events.emit(Event::FileBlocked {
                file: self.0.file.clone(),
                waiting_for,
                reason: BlockReason::PoolFull,
            });
            self.0.waits.start()
        })
    }

    /// `provium:claim{…}`: takes `amount` from the pool for the rest of the
    /// file (waiting until it fits); from now on the file's boots take
    /// slices of it. Once per file.
    pub fn claim(&self, amount: ResourceAmount) -> Result<(), PoolError> {
        match &*lock(&self.0.claim) {
            ClaimSlot::None => {}
            ClaimSlot::Held(c) => return Err(PoolError::ClaimTaken { held: c.budget.amount }),
            ClaimSlot::Ended => return Err(PoolError::ClaimTaken { held: ResourceAmount::default() }),
        }
        let reservation = self.take_from_pool(amount)?;
        self.0.events.emit(Event::ClaimAcquired { file: self.0.file.clone(), amount });
        let budget = Arc::new(ClaimBudget { amount, left: Mutex::new(amount) });
        let claim =
            Claim { _reservation: reservation, budget, file: self.0.file.clone(), events: self.0.events.clone() };
        *lock(&self.0.claim) = ClaimSlot::Held(claim);
        Ok(())
    }

    /// The claim held, and what is left of it.
    pub fn claimed(&self) -> Option<(ResourceAmount, ResourceAmount)> {
        match &*lock(&self.0.claim) {
            ClaimSlot::Held(c) => Some((c.budget.amount, *lock(&c.budget.left))),
            _ => None,
        }
    }

    /// The file is over: its claim goes back to the pool (`claim_released`).
    /// Idempotent.
    pub fn end(&self) {
        let slot = std::mem::replace(&mut *lock(&self.0.claim), ClaimSlot::Ended);
        drop(slot);
    }
}

/// A file's claim: held of the pool until the file ends.
struct Claim {
    _reservation: Reservation,
    budget: Arc<ClaimBudget>,
    file: String,
    events: Events,
}

impl Claim {
    fn slice(&self, amount: ResourceAmount) -> Result<Reservation, PoolError> {
        let mut left = lock(&self.budget.left);
        if !amount.fits_in(*left) {
            return Err(PoolError::ClaimExceeded { claim: self.budget.amount, left: *left, wants: amount });
        }
        *left = left.minus(amount);
        let lender: Arc<dyn Lender> = self.budget.clone();
        Ok(Reservation::lent(amount, lender))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.events.emit(Event::ClaimReleased { file: self.file.clone(), amount: self.budget.amount });
    }
}

/// What is left of a claim; slices give back to it.
struct ClaimBudget {
    amount: ResourceAmount,
    left: Mutex<ResourceAmount>,
}

impl Lender for ClaimBudget {
    fn give_back(&self, amount: ResourceAmount) {
        let mut left = lock(&self.left);
        *left = left.plus(amount);
    }
}

/// The time a file's thread spent waiting for the pool, which its watchdogs
/// add to their deadlines. Waits overlap (a lab's VMs on their threads):
/// the clock runs while at least one is on.
#[derive(Clone, Default)]
pub struct WaitClock(Arc<Mutex<Clock>>);

#[derive(Default)]
struct Clock {
    waiting: usize,
    since: Option<Instant>,
    done: Duration,
}

impl WaitClock {
    /// A wait begins; it ends when the guard drops.
    pub fn start(&self) -> WaitGuard {
        let mut c = lock(&self.0);
        c.waiting += 1;
        if c.waiting == 1 {
            c.since = Some(Instant::now());
        }
        WaitGuard(self.clone())
    }

    /// All the time spent waiting so far, the wait going on included.
    pub fn waited(&self) -> Duration {
        let c = lock(&self.0);
        c.done + c.since.map(|s| s.elapsed()).unwrap_or_default()
    }

    /// Whether a wait is going on.
    pub fn waiting(&self) -> bool {
        lock(&self.0).waiting > 0
    }
}

/// One wait of a [`WaitClock`], ended on drop.
pub struct WaitGuard(WaitClock);

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut c = lock(&(self.0).0);
        c.waiting -= 1;
        if c.waiting == 0 {
            if let Some(s) = c.since.take() {
                c.done += s.elapsed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Collect;
    use crate::pool::ledger::tests::until_waiting;

    fn account(pool: &Arc<Pool>, file: &str) -> (Account, Arc<Collect>) {
        let sink = Arc::new(Collect::default());
        (Account::new(pool, file, Events::new(sink.clone())), sink)
    }

    fn vm(m: u64, cpus: u32) -> ResourceAmount {
        ResourceAmount { memory_bytes: m << 20, cpus }
    }

    #[test]
    fn pool_claim_is_the_files_whole_budget_taken_in_slices() {
        let pool = Pool::new(vm(4096, 8));
        let (a, sink) = account(&pool, "a.test.lua");
        a.claim(vm(2048, 4)).unwrap();
        assert_eq!(pool.usage().used, vm(2048, 4), "the claim is taken from the pool at once");
        let one = a.reserve(vm(612, 1)).unwrap();
        let two = a.reserve(vm(612, 1)).unwrap();
        assert_eq!(pool.usage().used, vm(2048, 4), "boots take slices of the claim, not the pool");
        assert_eq!(a.claimed(), Some((vm(2048, 4), vm(824, 2))));
        let e = a.reserve(vm(1124, 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this needs 1124 MiB and 1 vCPU, and the file's claim of 2 GiB and 4 vCPUs has only 824 MiB and 2 vCPUs \
             left; claim more with provium:claim{memory = …, cpus = …}, or shut a VM down first"
        );
        drop(one);
        assert_eq!(a.claimed(), Some((vm(2048, 4), vm(1436, 3))), "a slice goes back to the claim");
        let e = a.claim(vm(1, 0)).unwrap_err();
        assert!(e.to_string().starts_with("claim already taken"), "{e}");
        drop(two);
        a.end();
        assert_eq!(pool.usage().used, vm(0, 0));
        let kinds: Vec<String> = sink
            .events()
            .iter()
            .map(|e| match e {
                Event::ClaimAcquired { file, amount } => format!("acquired {file} {amount:?}"),
                Event::ClaimReleased { file, amount } => format!("released {file} {amount:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        let amount = vm(2048, 4);
        assert_eq!(kinds, [format!("acquired a.test.lua {amount:?}"), format!("released a.test.lua {amount:?}")]);
        a.end();
        assert_eq!(sink.events().len(), 2, "released once");
    }

    #[test]
    fn pool_claim_waits_in_line_and_a_claim_beyond_the_pool_fails() {
        let pool = Pool::new(vm(1024, 2));
        let (a, _) = account(&pool, "a.test.lua");
        let e = a.claim(vm(4096, 4)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "requested 4 GiB and 4 vCPUs, which exceeds the pool's total of 1 GiB and 2 vCPUs; pass --mem and --cpus \
             to give the pool more"
        );
        assert_eq!(a.claimed(), None);
        let (b, sink) = account(&pool, "b.test.lua");
        let held = a.reserve(vm(800, 1)).unwrap();
        let t = {
            let b = b.clone();
            std::thread::spawn(move || b.claim(vm(512, 1)))
        };
        until_waiting(&pool, 1);
        assert!(b.waits().waiting(), "the file's wait clock runs while its claim waits");
        drop(held);
        t.join().unwrap().unwrap();
        assert!(!b.waits().waiting());
        let blocked: Vec<_> = sink
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::FileBlocked { file, waiting_for, reason } => Some((file, waiting_for, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(blocked, [("b.test.lua".to_string(), vm(512, 1), BlockReason::PoolFull)]);
    }

    #[test]
    fn pool_wait_clock_counts_overlapping_waits_once() {
        let clock = WaitClock::default();
        assert_eq!(clock.waited(), Duration::ZERO);
        let a = clock.start();
        let b = clock.start();
        std::thread::sleep(Duration::from_millis(30));
        drop(a);
        assert!(clock.waiting());
        std::thread::sleep(Duration::from_millis(30));
        drop(b);
        assert!(!clock.waiting());
        let w = clock.waited();
        assert!(w >= Duration::from_millis(60) && w < Duration::from_secs(5), "{w:?}");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.waited(), w, "the clock stops when no wait is on");
    }

    #[test]
    fn pool_unlimited_account_grants_everything() {
        let a = Account::unlimited();
        let r = a.reserve(vm(1 << 30, 1000)).unwrap();
        assert_eq!(r.amount(), vm(1 << 30, 1000));
        a.claim(vm(4096, 4)).unwrap();
        assert!(a.claim(vm(1, 0)).is_err(), "still one claim per file");
    }
}
