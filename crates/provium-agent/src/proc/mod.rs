//! Spawned processes: `Spawn`, `Wait`, `Signal`, `StdinWrite`/`StdinClose`
//! and `Release`.
//!
//! A process is started by [`crate::spawn`] like an `Exec` one (same `PATH`
//! resolution, own process group, registered with the reaper under its lock)
//! but the request returns at once; a missing program is an `Os` error
//! (`ENOENT`, or `EACCES` when not executable) rather than status 127. A
//! *pump* thread per process moves its output into a record that `Wait` and
//! `Stream` read (see [`output`] for retention, backpressure and the end of
//! output). The process stays in [`crate::handles`] until `Release`.
//!
//! `status` in the record is set only once the process exited *and* what its
//! pipes held was recorded, so a `Wait` that sees it also sees all output.
//! A timeout (`ExecRequest::timeout_ms`, or `Wait` with `kill_on_timeout`)
//! SIGKILLs the group and makes the status `TimedOut`.

mod output;

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ChildStdin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use provium_protocol::{ExecRequest, OpError, OpErrorKind, ProcState, Response};

use crate::handles::{self, Handle};
use crate::spawn::{command, spawn_registered};
use crate::sys::{kill_group, os_error, poll_one, set_nonblocking, CancelFlag};

use output::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Stdout = 0,
    Stderr = 1,
}

pub struct Proc {
    pid: i32,
    stdin: Mutex<Option<ChildStdin>>,
    out: Mutex<Output>,
    changed: Condvar,
}

impl Proc {
    fn lock(&self) -> MutexGuard<'_, Output> {
        self.out.lock().unwrap()
    }

    fn state(&self, o: &Output) -> ProcState {
        ProcState { pid: self.pid as u32, status: o.status }
    }
}

fn bad(message: String) -> OpError {
    OpError { kind: OpErrorKind::BadRequest, errno: None, message }
}

fn cancelled(message: String) -> OpError {
    OpError { kind: OpErrorKind::Cancelled, errno: None, message }
}

pub fn spawn(req: ExecRequest) -> Result<Response, OpError> {
    let Some(prog) = req.argv.first().cloned() else {
        return Err(bad("spawn: empty argv".into()));
    };
    let mut cmd = command(&req).map_err(|u| OpError {
        kind: OpErrorKind::Os,
        errno: Some(if u.code == 126 { libc::EACCES } else { libc::ENOENT }),
        message: format!("spawn: {}", u.message),
    })?;
    let (mut child, pid, slot) = spawn_registered(&mut cmd, &prog, req.stdin)?;

    if let Some(pipe) = &child.stdin {
        set_nonblocking(pipe.as_raw_fd());
    }
    let proc = Arc::new(Proc {
        pid,
        stdin: Mutex::new(child.stdin.take()),
        out: Mutex::new(Output::default()),
        changed: Condvar::new(),
    });
    let pipes = [
        child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    ];
    let deadline = req.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let p = proc.clone();
    let search_path = crate::spawn::search_path(&req);
    std::thread::Builder::new()
        .name(format!("pump-{pid}"))
        .spawn(move || output::pump(&p, &slot, pipes, deadline, &search_path))
        .map_err(|e| os_error("spawn: start the output thread", e))?;
    let handle = handles::insert(Handle::Proc(proc));
    Ok(Response::Spawned { handle, pid: pid as u32 })
}

pub fn wait(
    handle: u64,
    timeout_ms: Option<u64>,
    kill_on_timeout: bool,
    cancel: &CancelFlag,
) -> Result<Response, OpError> {
    let proc = handles::proc(handle)?;
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut o = proc.lock();
    loop {
        if o.status.is_some() {
            return Ok(Response::Proc(proc.state(&o)));
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(cancelled(format!("wait for process {handle} (pid {}): cancelled by the host", proc.pid)));
        }
        let mut nap = Duration::from_millis(100);
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                if !kill_on_timeout {
                    return Ok(Response::Proc(proc.state(&o)));
                }
                if !o.timed_out {
                    o.timed_out = true;
                    kill_group(proc.pid);
                }
            } else {
                nap = nap.min(d - now);
            }
        }
        o = proc.changed.wait_timeout(o, nap).unwrap().0;
    }
}

pub fn signal(handle: u64, signal: i32) -> Result<Response, OpError> {
    let proc = handles::proc(handle)?;
    // SAFETY: kill(2) takes only integers and touches no memory of ours, so
    // it cannot break a Rust invariant whatever the pid or signal; the host
    // chose the signal, and errors (ESRCH, EINVAL) are reported below.
    if unsafe { libc::kill(-proc.pid, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(os_error(&format!("signal {signal} to process {handle} (pid {})", proc.pid), e));
        }
    }
    Ok(Response::Done)
}

fn no_stdin(handle: u64) -> OpError {
    bad(format!("process {handle} has no stdin open (spawned without `stdin`, or stdin already closed)"))
}

/// Writes all of `data` to the process's stdin (waiting while the pipe is
/// full, checking for a cancel every 100 ms).
pub fn stdin_write(handle: u64, data: &[u8], cancel: &CancelFlag) -> Result<Response, OpError> {
    let proc = handles::proc(handle)?;
    let mut stdin = proc.stdin.lock().unwrap();
    let pipe = stdin.as_mut().ok_or_else(|| no_stdin(handle))?;
    let mut done = 0;
    while done < data.len() {
        match pipe.write(&data[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if cancel.load(Ordering::SeqCst) {
                    return Err(cancelled(format!("stdin of process {handle}: cancelled after {done} bytes")));
                }
                poll_one(pipe.as_raw_fd(), libc::POLLOUT, 100);
            }
            Err(e) => return Err(os_error(&format!("stdin of process {handle} (after {done} bytes)"), e)),
        }
    }
    Ok(Response::Count(done as u64))
}

pub fn stdin_close(handle: u64) -> Result<Response, OpError> {
    let proc = handles::proc(handle)?;
    proc.stdin.lock().unwrap().take().ok_or_else(|| no_stdin(handle))?;
    Ok(Response::Done)
}

/// The process side of `Release`: SIGKILL the group if the process still
/// runs, close its stdin. The pump ends by itself once the exit is reaped.
pub fn release(proc: &Proc) {
    if proc.lock().status.is_none() {
        kill_group(proc.pid);
    }
    if let Ok(mut stdin) = proc.stdin.try_lock() {
        stdin.take();
    }
}

#[cfg(test)]
mod tests {
    use provium_protocol::{ExitStatus, AGENT_RETAIN};

    use super::*;
    use crate::stream::Chunk;

    fn start(script: &str, stdin: bool, timeout_ms: Option<u64>) -> (u64, u32) {
        static REAPER: std::sync::Once = std::sync::Once::new();
        REAPER.call_once(crate::reaper::start);
        let argv = vec!["sh".into(), "-c".into(), script.into()];
        match spawn(ExecRequest { argv, stdin, timeout_ms, ..Default::default() }).unwrap() {
            Response::Spawned { handle, pid } => (handle, pid),
            other => panic!("{other:?}"),
        }
    }

    /// Everything `pipe` of process `h` wrote, read by a new subscriber.
    fn output(h: u64, pipe: Pipe) -> Vec<u8> {
        let mut sub = handles::proc(h).unwrap().subscribe(pipe);
        let mut all = Vec::new();
        loop {
            match sub.next(1 << 20, Duration::from_millis(100)) {
                Chunk::Data(b) => all.extend_from_slice(&b),
                Chunk::Idle => {}
                Chunk::End => return all,
            }
        }
    }

    fn state(r: Result<Response, OpError>) -> ProcState {
        match r.unwrap() {
            Response::Proc(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_spawned_process_takes_stdin_and_is_waited_for() {
        let cancel = CancelFlag::default();
        let (h, _) = start("read x; echo got $x; echo err >&2; exit 3", true, None);
        assert_eq!(state(wait(h, Some(0), false, &cancel)).status, None);
        assert_eq!(stdin_write(h, b"hi\n", &cancel).unwrap(), Response::Count(3));
        stdin_close(h).unwrap();
        assert_eq!(stdin_close(h).unwrap_err().kind, OpErrorKind::BadRequest);
        let s = state(wait(h, None, false, &cancel));
        assert_eq!(
            (s.status, &output(h, Pipe::Stdout)[..], &output(h, Pipe::Stderr)[..]),
            (Some(ExitStatus::Exited(3)), &b"got hi\n"[..], &b"err\n"[..])
        );
        let mut sub = handles::proc(h).unwrap().subscribe(Pipe::Stdout);
        assert!(matches!(sub.next(100, Duration::ZERO), Chunk::Data(b) if b == b"got hi\n"));
        assert!(matches!(sub.next(100, Duration::ZERO), Chunk::End));
        assert_eq!(signal(h, libc::SIGTERM).unwrap(), Response::Done, "ESRCH after exit is fine");
        assert!(handles::remove(h).is_ok());
        assert_eq!(wait(h, None, false, &cancel).unwrap_err().kind, OpErrorKind::UnknownHandle);
    }

    #[test]
    fn timeouts_kill_the_group() {
        let cancel = CancelFlag::default();
        let (h, _) = start("sleep 30 & sleep 30", false, None);
        let t = Instant::now();
        assert_eq!(state(wait(h, Some(50), true, &cancel)).status, Some(ExitStatus::TimedOut));
        assert!(t.elapsed() < Duration::from_secs(5));
        let (h, _) = start("echo before; sleep 30", false, Some(50));
        let s = state(wait(h, None, false, &cancel));
        assert_eq!((s.status, &output(h, Pipe::Stdout)[..]), (Some(ExitStatus::TimedOut), &b"before\n"[..]));
        let err = spawn(ExecRequest { argv: vec!["no-such-program".into()], ..Default::default() }).unwrap_err();
        assert_eq!((err.kind, err.errno), (OpErrorKind::Os, Some(libc::ENOENT)), "{}", err.message);
    }

    #[test]
    fn a_slow_subscriber_holds_the_process_back() {
        let cancel = CancelFlag::default();
        // 20 MiB: past the retention cap (12 MiB) and the backlog (4 MiB).
        let (h, _) = start("head -c 20971520 /dev/zero", false, None);
        let mut sub = handles::proc(h).unwrap().subscribe(Pipe::Stdout);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(state(wait(h, Some(0), false, &cancel)).status, None, "blocked on its full pipe");
        let mut total = 0;
        loop {
            match sub.next(1 << 20, Duration::from_millis(100)) {
                Chunk::Data(b) => total += b.len(),
                Chunk::Idle => {}
                Chunk::End => break,
            }
        }
        assert_eq!(total, 20 << 20);
        let s = state(wait(h, None, false, &cancel));
        assert_eq!((s.status, output(h, Pipe::Stdout).len()), (Some(ExitStatus::Exited(0)), AGENT_RETAIN));
    }
}
