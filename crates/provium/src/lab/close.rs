//! [`Close`]: what a lab scope owns besides its VMs (streams, background
//! processes, file handles, workers; bridges and disks later) and closes
//! when the scope ends, in a fixed order by kind.

/// The order kinds close in at scope end: streams first (they read from
/// processes and files), then processes, then files, then workers (whose
/// processes closed before them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloseRank {
    Stream,
    Process,
    File,
    Worker,
}

/// A resource a scope owns. `close` is idempotent and never fails (the VM
/// may already be gone).
pub trait Close: Send {
    fn rank(&self) -> CloseRank;
    fn close(&self);
}

/// Closes `resources` by rank, oldest first within a rank.
pub fn close_all(mut resources: Vec<Box<dyn Close>>) {
    // A stable sort keeps creation order within each rank.
    resources.sort_by_key(|r| r.rank());
    for r in resources {
        r.close();
    }
}

/// A resource that records its name when closed, for tests of close order.
#[cfg(test)]
pub(crate) struct Probe(pub &'static str, pub CloseRank, pub std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

#[cfg(test)]
impl Close for Probe {
    fn rank(&self) -> CloseRank {
        self.1
    }
    fn close(&self) {
        self.2.lock().unwrap().push(self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn streams_then_processes_then_files_then_workers_oldest_first() {
        let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let r = |n, k| Box::new(Probe(n, k, Arc::clone(&log))) as Box<dyn Close>;
        close_all(vec![
            r("worker1", CloseRank::Worker),
            r("file1", CloseRank::File),
            r("proc1", CloseRank::Process),
            r("stream1", CloseRank::Stream),
            r("file2", CloseRank::File),
            r("stream2", CloseRank::Stream),
        ]);
        assert_eq!(*log.lock().unwrap(), vec!["stream1", "stream2", "proc1", "file1", "file2", "worker1"]);
    }
}
