//! Running a command to completion.
//!
//! The child is started by [`crate::spawn`] (own process group, registered
//! with the reaper); stdin is fed from the host's `Data` frames by a feeder
//! thread; stdout and stderr go to the host as they are read, in
//! [`OutputPipe`]-tagged `Data` frames, so nothing is held back or cut here
//! (a slow host slows the command down through the port). One `poll` loop watches the pipes
//! and the child's [`ExitSlot`](crate::reaper::ExitSlot), so the call
//! returns **when the child exits**, not when its pipes close: a `server &` left behind keeps the pipes open but
//! does not hang the command. A timeout, or a cancel from the host, kills
//! the whole process group.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{ChildStderr, ChildStdin, ChildStdout};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use provium_protocol::{ExecRequest, ExitStatus, OpError, OpErrorKind, OutputPipe};

use crate::session::{Inbound, Sender};
use crate::spawn::{command, search_path, spawn_registered};
use crate::sys::{decode_status, kill_group, set_nonblocking, CancelFlag};

/// Copies the host's stdin `Data` frames into the child's stdin pipe on a
/// thread of its own (blocking writes; stops at `DataEnd`, cancel, or when
/// the child closes its end).
fn feed_stdin(mut pipe: ChildStdin, inbox: Receiver<Inbound>) {
    std::thread::spawn(move || {
        while let Ok(Inbound::Data(bytes)) = inbox.recv() {
            if pipe.write_all(&bytes).is_err() {
                break;
            }
        }
    });
}

pub fn run(
    req: ExecRequest,
    out: &Sender,
    inbox: Receiver<Inbound>,
    cancel: &CancelFlag,
) -> Result<ExitStatus, OpError> {
    let Some(prog) = req.argv.first() else {
        return Err(OpError { kind: OpErrorKind::BadRequest, errno: None, message: "exec: empty argv".into() });
    };
    let mut cmd = match command(&req) {
        Ok(cmd) => cmd,
        Err(u) => {
            out.output(OutputPipe::Stderr, format!("provium-agent: {}\n", u.message).as_bytes());
            return Ok(ExitStatus::Exited(u.code));
        }
    };
    let (mut child, pid, slot) = spawn_registered(&mut cmd, prog, req.stdin)?;

    let deadline = req.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    if let Some(pipe) = child.stdin.take() {
        feed_stdin(pipe, inbox);
    }
    let mut io = ChildIo::new(child.stdout.take().unwrap(), child.stderr.take().unwrap(), out);
    let mut killed_for_timeout = false;
    loop {
        if let Some(status) = slot.status() {
            io.drain_after_exit();
            let status = if killed_for_timeout { ExitStatus::TimedOut } else { decode_status(status) };
            if let Some(line) = crate::elf::after_exit(status, &io.stderr_tail, &search_path(&req)) {
                out.output(OutputPipe::Stderr, &line);
            }
            return Ok(status);
        }
        let now = Instant::now();
        let mut wait_ms = 100i32;
        if let Some(d) = deadline {
            if now >= d && !killed_for_timeout {
                kill_group(pid);
                killed_for_timeout = true;
            }
            wait_ms = wait_ms.min(d.saturating_duration_since(now).as_millis() as i32 + 1);
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) && !killed_for_timeout {
            kill_group(pid);
        }
        io.poll_once(slot.fd(), wait_ms);
    }
}

/// The child's output pipes and where their bytes go.
struct ChildIo<'a> {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    host: &'a Sender,
    /// The last bytes of stderr, to explain a shell's `not found`.
    stderr_tail: Vec<u8>,
}

impl<'a> ChildIo<'a> {
    fn new(stdout: ChildStdout, stderr: ChildStderr, host: &'a Sender) -> ChildIo<'a> {
        for fd in [stdout.as_raw_fd(), stderr.as_raw_fd()] {
            set_nonblocking(fd);
        }
        ChildIo { stdout: Some(stdout), stderr: Some(stderr), host, stderr_tail: Vec::new() }
    }

    fn poll_once(&mut self, exit_fd: i32, timeout_ms: i32) {
        let mut fds = vec![libc::pollfd { fd: exit_fd, events: libc::POLLIN, revents: 0 }];
        let ids: Vec<u8> = [
            self.stdout.as_ref().map(|s| (s.as_raw_fd(), libc::POLLIN, 1u8)),
            self.stderr.as_ref().map(|s| (s.as_raw_fd(), libc::POLLIN, 2u8)),
        ]
        .into_iter()
        .flatten()
        .map(|(fd, events, id)| {
            fds.push(libc::pollfd { fd, events, revents: 0 });
            id
        })
        .collect();
        // SAFETY: poll(2) reads and writes `nfds` pollfd structs starting at the
        // pointer; `nfds` is `fds.len()` and the Vec is neither moved nor
        // resized during the call, so every access is inside its buffer. The
        // kernel keeps no reference to it after returning.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n <= 0 {
            return;
        }
        for (pfd, id) in fds[1..].iter().zip(ids) {
            if pfd.revents == 0 {
                continue;
            }
            self.read_pipe(id == 1);
        }
    }

    /// Reads what is available; closes the pipe at EOF.
    fn read_pipe(&mut self, is_stdout: bool) {
        let mut buf = [0u8; 64 * 1024];
        // Bounded, so a grandchild writing without pause cannot keep us here.
        for _ in 0..256 {
            let pipe: &mut dyn Read = match (is_stdout, self.stdout.as_mut(), self.stderr.as_mut()) {
                (true, Some(p), _) => p,
                (false, _, Some(p)) => p,
                _ => return,
            };
            match pipe.read(&mut buf) {
                Ok(0) => {
                    if is_stdout {
                        self.stdout = None;
                    } else {
                        self.stderr = None;
                    }
                    return;
                }
                Ok(n) => {
                    let pipe = if is_stdout { OutputPipe::Stdout } else { OutputPipe::Stderr };
                    self.host.output(pipe, &buf[..n]);
                    if !is_stdout {
                        self.stderr_tail.extend_from_slice(&buf[..n]);
                        let excess = self.stderr_tail.len().saturating_sub(crate::elf::STDERR_TAIL);
                        self.stderr_tail.drain(..excess);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock: nothing more for now
            }
        }
    }

    /// The child has exited: take what its pipes already hold, then stop
    /// (a background grandchild may keep them open forever).
    fn drain_after_exit(&mut self) {
        self.read_pipe(true);
        self.read_pipe(false);
    }
}
