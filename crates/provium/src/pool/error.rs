//! [`PoolError`]: why a reservation could not be made. Each message says
//! what was asked, what the pool (or the claim) has, and what to do; the
//! caller (`vm `a`: boot …`, `provium:claim`) wraps it with who asked.

use super::amount::Shown;
use super::ResourceAmount;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// More than the whole pool: it could never be granted.
    #[error("requested {}, which exceeds the pool's total of {}; {}", Shown(*requested), Shown(*total), hint(*requested, *total))]
    ExceedsTotal { requested: ResourceAmount, total: ResourceAmount },
    /// Every file holding part of the pool waits for more, and what is
    /// free serves none of the waiting requests: nothing will ever move.
    #[error(
        "the pool is deadlocked: {holders} files hold {} of its {} and every one of them is waiting for more, while \
         the {} still free serves none of the {waiting} waiting requests (this one wants {}); reserve a lab's VMs \
         together with lab:boot(), claim what each file needs with provium:claim{{…}}, or pass --mem/--cpus to give \
         the pool more",
        Shown(*held), Shown(*total), Shown(*free), Shown(*wants)
    )]
    Deadlocked {
        holders: usize,
        held: ResourceAmount,
        total: ResourceAmount,
        free: ResourceAmount,
        waiting: usize,
        wants: ResourceAmount,
    },
    /// A file with a claim boots only within it.
    #[error(
        "this needs {}, and the file's claim of {} has only {} left; claim more with provium:claim{{memory = …, cpus \
         = …}}, or shut a VM down first",
        Shown(*wants), Shown(*claim), Shown(*left)
    )]
    ClaimExceeded { claim: ResourceAmount, left: ResourceAmount, wants: ResourceAmount },
    /// `provium:claim` a second time.
    #[error("claim already taken: this file holds a claim of {} until it ends (one claim per file)", Shown(*held))]
    ClaimTaken { held: ResourceAmount },
}

/// Which flag gives the pool what it lacks.
fn hint(requested: ResourceAmount, total: ResourceAmount) -> &'static str {
    match (requested.memory_bytes > total.memory_bytes, requested.cpus > total.cpus) {
        (true, true) => "pass --mem and --cpus to give the pool more",
        (true, false) => "pass --mem to give the pool more",
        _ => "pass --cpus or --cpu-overcommit to give the pool more",
    }
}
