//! Everything a run tells its user, as typed events.
//!
//! The runner, the Lua layer, the VM layer and the fixture cache *emit*
//! [`Event`]s into an [`Events`] handle; renderers (`crate::report`: human,
//! progress, JSON) *consume* them and depend on nothing else. Nothing that
//! emits prints.
//!
//! ```text
//! runner ─┐
//! lua ────┼─► Events ─► EventSink (a channel) ─► cli ─► Reporter (human | json)
//! vm ─────┤
//! fixture ┘
//! ```

pub mod results;

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use provium_protocol::events::{MetaMap, MetaValue, ResourceAmount};
pub use results::{Counts, FileReport, Outcome, TestReport};

/// Something that happened during a run.
#[derive(Debug, Clone)]
pub enum Event {
    /// The run begins: how many files, how many at once, which accelerator.
    RunStarted { files: usize, jobs: usize, accel: String, accel_reason: String, seed: u64 },
    /// A file will run (emitted for every file before any is dispatched).
    /// `fixture_refs`: the fixtures its source names.
    FileDiscovered { file: String, fixture_refs: Vec<String> },
    /// A file waits for the pool before it can start (or before a boot or
    /// claim can go on).
    FileBlocked { file: String, waiting_for: ResourceAmount, reason: BlockReason },
    /// A file got its per-file reservation and starts.
    FileDispatched { file: String, reservation: ResourceAmount },
    /// A file's Lua state is about to run its chunk.
    FileStarted { file: String },
    /// A test's body is about to run (not emitted for tests skipped
    /// before they run: those only finish, as skipped).
    TestStarted { file: String, name: String, meta: MetaMap },
    /// One test ended (the file goes on).
    TestFinished { file: String, test: TestReport },
    /// A file ended: its whole report.
    FileFinished { report: FileReport },
    /// Every file has ended; the run is over.
    RunFinished { duration: Duration },
    /// A VM's QEMU was started (its boot goes on; `boot()` has not returned).
    VmSpawned { file: Option<String>, vm: String, profile: String, memory_bytes: u64 },
    /// A VM's guest answered its first Hello (`boot()` is about to return).
    VmBooted { file: Option<String>, vm: String, took: Duration },
    /// A VM's QEMU was stopped, `ran` after it was spawned.
    VmStopped { file: Option<String>, vm: String, ran: Duration },
    /// The pool's use, now and then.
    PoolState { used: ResourceAmount, available: ResourceAmount },
    /// `provium:claim{...}` got its amount.
    ClaimAcquired { file: String, amount: ResourceAmount },
    /// A file's claim went back to the pool (at the end of the file).
    ClaimReleased { file: String, amount: ResourceAmount },
    /// A fixture has no cache entry for its key: it is being built.
    FixtureBuilding { file: Option<String>, name: String, path: PathBuf },
    /// Another file or process builds this fixture; waiting for it.
    FixtureWaiting { file: Option<String>, name: String, holder: String },
    /// A fixture was built and stored.
    FixtureBuilt { file: Option<String>, name: String, took: Duration, cache_bytes: u64 },
    /// A fixture was restored from the cache (emitted after the restore
    /// succeeded).
    FixtureCacheHit { file: Option<String>, name: String },
    /// A cache entry went: `reason` says why ("is corrupt (…)", "is beyond
    /// the cache's size cap"); `rebuilding` when it is built again now.
    FixtureEvicted { file: Option<String>, key: String, reason: String, rebuilding: bool },
    /// Something the user should know that is not a test result.
    Warning { file: Option<String>, message: String },
}

/// Why a file waits for the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// What it asks for does not fit in what is free.
    PoolFull,
    /// The host is under memory pressure (PSI); new work waits.
    PsiPressure,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::PoolFull => "pool_full",
            BlockReason::PsiPressure => "psi_pressure",
        }
    }
}

/// Where events go. Implementations must not block for long: emitters are
/// test threads.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// Sends every event down a channel (the CLI's renderer thread reads it).
pub struct ChannelSink(Mutex<Sender<Event>>);

impl ChannelSink {
    pub fn new(tx: Sender<Event>) -> ChannelSink {
        ChannelSink(Mutex::new(tx))
    }
}

impl EventSink for ChannelSink {
    fn emit(&self, event: Event) {
        // A renderer that went away (the CLI exiting) just stops listening.
        let _ = crate::sync::lock(&self.0).send(event);
    }
}

/// Keeps every event, for tests.
#[derive(Default)]
pub struct Collect(Mutex<Vec<Event>>);

impl Collect {
    pub fn events(&self) -> Vec<Event> {
        crate::sync::lock(&self.0).clone()
    }
}

impl EventSink for Collect {
    fn emit(&self, event: Event) {
        crate::sync::lock(&self.0).push(event);
    }
}

struct Discard;

impl EventSink for Discard {
    fn emit(&self, _: Event) {}
}

/// A cheap handle to the run's sink, knowing which file it speaks for.
#[derive(Clone)]
pub struct Events {
    sink: Arc<dyn EventSink>,
    file: Option<String>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("file", &self.file).finish_non_exhaustive()
    }
}

impl Events {
    pub fn new(sink: Arc<dyn EventSink>) -> Events {
        Events { sink, file: None }
    }

    /// Events that go nowhere (library use without a renderer).
    pub fn discard() -> Events {
        Events::new(Arc::new(Discard))
    }

    /// The same sink, speaking for test file `file`.
    pub fn for_file(&self, file: &str) -> Events {
        Events { sink: self.sink.clone(), file: Some(file.to_string()) }
    }

    /// The file these events speak for, if any.
    pub fn file(&self) -> Option<String> {
        self.file.clone()
    }

    pub fn emit(&self, event: Event) {
        self.sink.emit(event);
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.emit(Event::Warning { file: self.file(), message: message.into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_speak_for_their_file_and_share_the_sink() {
        let sink = Arc::new(Collect::default());
        let run = Events::new(sink.clone());
        run.warn("cache over its cap");
        run.for_file("a.test.lua").warn("restore failed");
        let got: Vec<(Option<String>, String)> = sink
            .events()
            .into_iter()
            .map(|e| match e {
                Event::Warning { file, message } => (file, message),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![(None, "cache over its cap".into()), (Some("a.test.lua".into()), "restore failed".into())]
        );
    }
}
