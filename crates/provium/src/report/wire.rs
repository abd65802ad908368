//! The msgpack event stream (`--save-events`, `--events-stdout`,
//! `--events-socket`): every [`Event`] as the wire frame of
//! `provium_protocol::events`, written to a file, to stdout, or fanned out
//! to every client of a Unix socket.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use provium_protocol::events::{EventFrame, EventKind};
use provium_protocol::PROTOCOL_VERSION;

use super::{Event, Outcome, Reporter, TestReport};
use crate::sync::lock;

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The reference's `console_excerpt`: each VM's tail under a header.
pub fn console_excerpt(t: &TestReport) -> String {
    t.console.iter().map(|(vm, tail)| format!("---- vm {vm} (last {} bytes) ----\n{tail}\n", tail.len())).collect()
}

/// `e` as it goes on the wire; `None` for what only renderers care about.
pub fn to_wire(e: &Event) -> Option<EventKind> {
    Some(match e.clone() {
        Event::RunStarted { files, jobs, accel, seed, .. } => EventKind::RunStarted {
            protocol_version: PROTOCOL_VERSION,
            files: files as u64,
            jobs: jobs as u64,
            accel,
            seed,
        },
        Event::FileDiscovered { file, fixture_refs } => {
            EventKind::FileDiscovered { path: file, fixture_refs, declared_claim: None }
        }
        Event::FileBlocked { file, waiting_for, reason } => {
            EventKind::FileBlocked { path: file, waiting_for, reason: reason.as_str().to_string() }
        }
        Event::FileDispatched { file, reservation } => EventKind::FileDispatched { path: file, reservation },
        Event::FileStarted { .. } => return None,
        Event::TestStarted { file, name, meta } => EventKind::TestStarted { path: file, name, meta },
        Event::TestFinished { file, test } => {
            let duration_ns = ns(test.duration);
            let excerpt = console_excerpt(&test);
            let TestReport { name, outcome, log, meta, .. } = test;
            match outcome {
                Outcome::Passed => EventKind::TestPassed { path: file, name, duration_ns, meta, log },
                Outcome::Skipped(reason) => EventKind::TestSkipped { path: file, name, reason, meta },
                Outcome::Failed(reason) => {
                    EventKind::TestFailed { path: file, name, duration_ns, reason, console_excerpt: excerpt, meta, log }
                }
            }
        }
        Event::FileFinished { report } => EventKind::FileCompleted {
            status: file_status(&report).to_string(),
            duration_ns: ns(report.duration),
            chunk_error: report.chunk_error.clone(),
            path: report.path,
        },
        Event::RunFinished { duration } => EventKind::RunFinished { duration_ns: ns(duration) },
        Event::VmSpawned { file, vm, profile, memory_bytes } => {
            EventKind::VmSpawned { file, vm_name: vm, profile, memory_bytes, cid: 0 }
        }
        Event::VmBooted { file, vm, took } => EventKind::VmBooted { file, vm_name: vm, duration_ns: ns(took) },
        Event::VmStopped { file, vm, ran } => EventKind::VmShutdown { file, vm_name: vm, duration_ns: ns(ran) },
        Event::PoolState { used, available } => EventKind::PoolState { used, available },
        Event::ClaimAcquired { file, amount } => EventKind::ClaimAcquired { path: file, amount },
        Event::ClaimReleased { file, amount } => EventKind::ClaimReleased { path: file, amount },
        Event::FixtureBuilding { name, .. } => EventKind::FixtureBuildStarted { path: name },
        Event::FixtureWaiting { name, holder, .. } => {
            EventKind::FixtureBuildWaiting { path: name, held_by_file: holder }
        }
        Event::FixtureBuilt { name, took, cache_bytes, .. } => {
            EventKind::FixtureBuildDone { path: name, duration_ns: ns(took), snapshot_bytes: cache_bytes }
        }
        Event::FixtureCacheHit { name, .. } => EventKind::FixtureCacheHit { path: name },
        Event::FixtureEvicted { key, reason, rebuilding, .. } => EventKind::FixtureEvicted { key, reason, rebuilding },
        Event::Warning { file, message } => EventKind::Warning { file, message },
    })
}

/// The reference's file status, by precedence: `timed_out` > `crashed`
/// (the chunk failed) > `passed` (every test passed or was skipped) >
/// `failed`.
pub fn file_status(f: &super::FileReport) -> &'static str {
    if f.timed_out {
        "timed_out"
    } else if f.chunk_error.is_some() {
        "crashed"
    } else if f.counts().failed == 0 {
        "passed"
    } else {
        "failed"
    }
}

fn now_ns() -> i64 {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Writes frames to one stream (a file, stdout).
pub struct FrameWriter<W: Write> {
    out: W,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(out: W) -> FrameWriter<W> {
        FrameWriter { out }
    }
}

impl<W: Write> Reporter for FrameWriter<W> {
    fn event(&mut self, e: &Event) {
        if let Some(kind) = to_wire(e) {
            let _ = self.out.write_all(&EventFrame::new(now_ns(), kind).encode());
            // A consumer tailing the file sees each event as it happens.
            let _ = self.out.flush();
        }
    }
}

/// `--events-socket PATH`: a listener that accepts clients at any time and
/// sends every later frame to each of them. A client that stops reading
/// (its socket buffer full for 2 s) or goes away is dropped. The socket
/// file is removed when this drops.
pub struct SocketFanout {
    path: PathBuf,
    clients: Arc<Mutex<Vec<UnixStream>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl SocketFanout {
    pub fn bind(path: &Path) -> std::io::Result<SocketFanout> {
        // A socket left by a killed run would make bind fail; only a socket
        // is replaced, never another kind of file.
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if m.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path)?;
        let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let closed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (accepted, done) = (clients.clone(), closed.clone());
        std::thread::Builder::new().name("events-socket".into()).spawn(move || {
            for client in listener.incoming().flatten() {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let _ = client.set_write_timeout(Some(Duration::from_secs(2)));
                lock(&accepted).push(client);
            }
        })?;
        Ok(SocketFanout { path: path.to_path_buf(), clients, closed })
    }

    /// How many clients are connected now.
    pub fn clients(&self) -> usize {
        lock(&self.clients).len()
    }
}

impl Reporter for SocketFanout {
    fn event(&mut self, e: &Event) {
        if let Some(kind) = to_wire(e) {
            let frame = EventFrame::new(now_ns(), kind).encode();
            lock(&self.clients).retain_mut(|c| c.write_all(&frame).is_ok());
        }
    }
}

/// One listener shared by the runs of `--watch`.
impl Reporter for Arc<Mutex<SocketFanout>> {
    fn event(&mut self, e: &Event) {
        lock(self).event(e);
    }
}

impl Drop for SocketFanout {
    fn drop(&mut self) {
        // Clients see the end of the stream; the accept loop is woken by
        // one last connection and ends.
        for c in lock(&self.clients).drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{FileReport, MetaMap, MetaValue};
    use provium_protocol::events::read_all;

    fn report() -> FileReport {
        let mut f = FileReport::new("a.test.lua");
        f.tests.push(TestReport {
            name: "t".into(),
            outcome: Outcome::Failed("boom".into()),
            log: vec!["l".into()],
            duration: Duration::from_millis(3),
            console: vec![("web".into(), "Oops".into())],
            meta: MetaMap::from([("area".into(), MetaValue::Str("net".into()))]),
        });
        f
    }

    #[test]
    fn a_failed_test_carries_its_excerpt_and_meta_and_the_file_its_status() {
        let f = report();
        let Some(EventKind::TestFailed { console_excerpt, meta, duration_ns, .. }) =
            to_wire(&Event::TestFinished { file: f.path.clone(), test: f.tests[0].clone() })
        else {
            panic!("not a test_failed")
        };
        assert_eq!(console_excerpt, "---- vm web (last 4 bytes) ----\nOops\n");
        assert_eq!(meta["area"], MetaValue::Str("net".into()));
        assert_eq!(duration_ns, 3_000_000);
        assert_eq!(file_status(&f), "failed");
        let mut crashed = f.clone();
        crashed.chunk_error = Some("syntax".into());
        assert_eq!(file_status(&crashed), "crashed");
        crashed.timed_out = true;
        assert_eq!(file_status(&crashed), "timed_out");
        assert_eq!(file_status(&FileReport::new("b")), "passed");
    }

    #[test]
    fn the_writer_writes_frames_a_reader_reads_back() {
        let mut out = Vec::new();
        let mut w = FrameWriter::new(&mut out);
        w.event(&Event::FileStarted { file: "a".into() });
        w.event(&Event::FileFinished { report: report() });
        w.event(&Event::RunFinished { duration: Duration::from_secs(1) });
        let frames = read_all(&out[..]).unwrap();
        let kinds: Vec<&str> = frames
            .iter()
            .map(|f| match f.event {
                EventKind::FileCompleted { .. } => "file_completed",
                EventKind::RunFinished { .. } => "run_finished",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, vec!["file_completed", "run_finished"]);
        assert!(frames.iter().all(|f| f.v == PROTOCOL_VERSION && f.ts > 0));
    }

    #[test]
    fn the_socket_fans_frames_out_to_every_client_and_goes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let mut fan = SocketFanout::bind(&path).unwrap();
        let a = UnixStream::connect(&path).unwrap();
        let b = UnixStream::connect(&path).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fan.clients() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        fan.event(&Event::RunFinished { duration: Duration::from_secs(1) });
        drop(fan);
        for c in [a, b] {
            let frames = read_all(c).unwrap();
            assert!(matches!(frames.as_slice(), [EventFrame { event: EventKind::RunFinished { .. }, .. }]));
        }
        assert!(!path.exists(), "the socket file is removed");
    }
}
