//! A small QMP client: commands with ids, and events kept in order.
//!
//! A reader thread parses one JSON object per line. Replies go to the caller
//! waiting on that id; events are appended to a log with a sequence number,
//! so a caller can wait for an event emitted *after* a given command (no
//! stale `STOP` or `RESET` matches).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket `{path}`")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("QMP command `{0}` got no answer within {1:?}")]
    Timeout(String, Duration),
}

/// One QMP event as QEMU sent it.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub name: String,
    pub data: Value,
}

/// A command's `return` value, or its error `(class, desc)`.
type Answer = Result<Value, (String, String)>;

#[derive(Default)]
struct Shared {
    waiting: HashMap<u64, Sender<Answer>>,
    events: Vec<Event>,
    closed: bool,
}

pub struct Qmp {
    writer: Mutex<UnixStream>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    next_id: Mutex<u64>,
}

impl Qmp {
    /// Connects (retrying until `deadline` while QEMU creates the socket) and
    /// negotiates capabilities.
    pub fn connect(path: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        let stream = super::connect_when_ready(path, deadline)
            .map_err(|source| QmpError::Connect { path: path.display().to_string(), source })?;
        let reader =
            stream.try_clone().map_err(|source| QmpError::Connect { path: path.display().to_string(), source })?;
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let s2 = shared.clone();
        std::thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || read_loop(reader, s2))
            .expect("spawn qmp reader");
        let qmp = Qmp { writer: Mutex::new(stream), shared, next_id: Mutex::new(1) };
        qmp.execute("qmp_capabilities", None, Duration::from_secs(10))?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&self, command: &str, args: Option<Value>, timeout: Duration) -> Result<Value, QmpError> {
        let id = {
            let mut n = crate::sync::lock(&self.next_id);
            *n += 1;
            *n
        };
        let (tx, rx) = channel();
        {
            let mut sh = crate::sync::lock(&self.shared.0);
            if sh.closed {
                return Err(QmpError::Closed);
            }
            sh.waiting.insert(id, tx);
        }
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let line = format!("{msg}\n");
        crate::sync::lock(&self.writer).write_all(line.as_bytes()).map_err(|_| QmpError::Closed)?;
        match rx.recv_timeout(timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((class, desc))) => Err(QmpError::Command { command: command.to_string(), class, desc }),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(QmpError::Timeout(command.to_string(), timeout)),
            Err(_) => Err(QmpError::Closed),
        }
    }

    /// The sequence number the next event will get: pass it to
    /// [`Qmp::wait_event`] to see only events that come after now.
    pub fn mark(&self) -> u64 {
        crate::sync::lock(&self.shared.0).events.len() as u64
    }

    /// Waits for an event named `name` with a sequence number ≥ `after`.
    pub fn wait_event(&self, name: &str, after: u64, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut sh = crate::sync::lock(lock);
        loop {
            if let Some(e) = sh.events.iter().skip(after as usize).find(|e| e.name == name) {
                return Some(e.clone());
            }
            let now = Instant::now();
            if now >= deadline || sh.closed {
                return None;
            }
            sh = cv.wait_timeout(sh, deadline - now).unwrap().0;
        }
    }
}

fn read_loop(stream: UnixStream, shared: Arc<(Mutex<Shared>, Condvar)>) {
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let (lock, cv) = &*shared;
        let mut sh = crate::sync::lock(lock);
        if let Some(name) = v.get("event").and_then(Value::as_str) {
            let seq = sh.events.len() as u64;
            sh.events.push(Event { seq, name: name.to_string(), data: v.get("data").cloned().unwrap_or(Value::Null) });
            cv.notify_all();
            continue;
        }
        let Some(id) = v.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let Some(tx) = sh.waiting.remove(&id) else {
            continue;
        };
        let answer = match v.get("error") {
            Some(err) => Err((
                err.get("class").and_then(Value::as_str).unwrap_or("GenericError").to_string(),
                err.get("desc").and_then(Value::as_str).unwrap_or("").to_string(),
            )),
            None => Ok(v.get("return").cloned().unwrap_or(Value::Null)),
        };
        let _ = tx.send(answer);
    }
    let (lock, cv) = &*shared;
    let mut sh = crate::sync::lock(lock);
    sh.closed = true;
    sh.waiting.clear();
    cv.notify_all();
}

#[cfg(test)]
mod tests {
    //! A scripted fake QMP peer: enough to pin the client's parsing and id
    //! matching. Real QEMU is exercised by the end-to-end tests.
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    fn fake_qemu(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").unwrap();
            for line in BufReader::new(stream).lines() {
                let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
                let id = v["id"].clone();
                let reply = match v["execute"].as_str().unwrap() {
                    "qmp_capabilities" => json!({"return": {}, "id": id}),
                    "query-status" => {
                        // An event first, then the answer: the client must route both.
                        w.write_all(b"{\"event\": \"STOP\", \"data\": {}}\n").unwrap();
                        json!({"return": {"status": "paused", "running": false}, "id": id})
                    }
                    _ => json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": id}),
                };
                w.write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
        });
        path
    }

    #[test]
    fn commands_errors_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_qemu(dir.path());
        let qmp = Qmp::connect(&path, Instant::now() + Duration::from_secs(5)).unwrap();
        let mark = qmp.mark();
        let status = qmp.execute("query-status", None, Duration::from_secs(5)).unwrap();
        assert_eq!(status["status"], "paused");
        let ev = qmp.wait_event("STOP", mark, Duration::from_secs(5)).expect("STOP event");
        assert_eq!(ev.seq, mark);
        // An event from before the mark does not match a later wait.
        assert!(qmp.wait_event("STOP", qmp.mark(), Duration::from_millis(50)).is_none());
        let err = qmp.execute("bogus", None, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.to_string(), "QMP command `bogus` failed: CommandNotFound: nope");
    }
}
