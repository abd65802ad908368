//! The agent as a *worker*: a second agent process that the main agent
//! started ([`crate::workers`]) with credentials of its own, serving the
//! requests relayed to it.
//!
//! The main agent runs `provium-agent --provium-worker UID GID GROUPS` with
//! one end of a socket pair as stdin. The worker first takes its
//! credentials (`setgroups`, `setgid`, `setuid`, while it is still one
//! thread), moves the socket off fd 0 (so no command inherits it), starts
//! its own reaper and serves the same session as the main agent over the
//! socket ([`session::Link::Worker`]); nothing of the PID-1 set-up (mounts,
//! modules, the power button) happens here. Its commands are its children,
//! so they run with its credentials, and layer-0 syscalls are made by its
//! process. If it cannot take its credentials it says why in a `Reply` on
//! channel 0 (instead of answering the Hello) and exits.
//!
//! On top of the usual requests a worker takes [`Request::KillAll`] (signal
//! everything it started that still runs) and [`Request::Join`] (wait for
//! all of it, then start nothing new). When the main agent closes the socket
//! (the worker's handle was released, or the main agent is gone) the worker
//! SIGKILLs what it started and exits.
//!
//! This module does not know how requests reach it: relaying is
//! [`crate::workers`]'s.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use provium_protocol::frame::{self, FrameKind};
use provium_protocol::{encode_msg, OpError, OpErrorKind, Request, Response};

use crate::session::{self, AgentInfo};
use crate::sys::{kill_group, CancelFlag};
use crate::{init, kmod, reaper};

/// The argument that makes `provium-agent` a worker.
pub const ARG: &str = "--provium-worker";

/// Set once, at the start of a worker process.
static WORKER: AtomicBool = AtomicBool::new(false);
/// Set by the first `Join`: the worker starts nothing new afterwards.
static JOINED: AtomicBool = AtomicBool::new(false);

/// Whether this process was started as a worker (never as PID 1: a kernel
/// command line cannot make the init a worker).
pub fn requested() -> bool {
    // SAFETY: getpid(2) takes no arguments, touches no memory and cannot
    // fail.
    let pid = unsafe { libc::getpid() };
    pid != 1 && std::env::args().nth(1).as_deref() == Some(ARG)
}

pub fn is_worker() -> bool {
    WORKER.load(Ordering::SeqCst)
}

/// Who a worker runs as, as the main agent passes it on the command line:
/// a number or `-` (keep) for the uid and the gid, and the supplementary
/// groups comma-separated (`""`: none) or `-` (the default: none once the
/// uid or gid changes, else keep).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Creds {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Option<Vec<u32>>,
}

impl Creds {
    pub fn args(&self) -> [String; 3] {
        let id = |v: Option<u32>| v.map_or("-".to_string(), |n| n.to_string());
        let groups = match &self.groups {
            None => "-".to_string(),
            Some(g) => g.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        };
        [id(self.uid), id(self.gid), groups]
    }

    pub fn parse(args: &[String]) -> Result<Creds, String> {
        let [uid, gid, groups] = args else {
            return Err(format!("expected UID GID GROUPS after {ARG}, got {} argument(s)", args.len()));
        };
        let id = |s: &str| -> Result<Option<u32>, String> {
            match s {
                "-" => Ok(None),
                n => n.parse().map(Some).map_err(|_| format!("`{n}` is not a user or group id")),
            }
        };
        let groups = match groups.as_str() {
            "-" => None,
            "" => Some(Vec::new()),
            list => Some(
                list.split(',').map(|g| id(g)?.ok_or("`-` in the group list".to_string())).collect::<Result<_, _>>()?,
            ),
        };
        Ok(Creds { uid: id(uid)?, gid: id(gid)?, groups })
    }

    /// Takes these credentials: groups first, then the gid, then the uid
    /// (after which the others could no longer change).
    fn apply(&self) -> Result<(), OpError> {
        let groups = match (&self.groups, self.uid.or(self.gid)) {
            (Some(g), _) => Some(g.clone()),
            (None, Some(_)) => Some(Vec::new()),
            (None, None) => None,
        };
        let failed = |what: String| {
            let e = std::io::Error::last_os_error();
            OpError { kind: OpErrorKind::Os, errno: e.raw_os_error(), message: format!("{what}: {e}") }
        };
        if let Some(g) = groups {
            // SAFETY: setgroups(2) reads `len` gid_t values at the pointer:
            // `g` is a live Vec<u32> (gid_t is u32) of exactly that length.
            if unsafe { libc::setgroups(g.len(), g.as_ptr()) } != 0 {
                return Err(failed(format!("setgroups({g:?})")));
            }
        }
        if let Some(gid) = self.gid {
            // SAFETY: setgid(2) takes an integer and touches no memory.
            if unsafe { libc::setgid(gid) } != 0 {
                return Err(failed(format!("setgid({gid})")));
            }
        }
        if let Some(uid) = self.uid {
            // SAFETY: setuid(2) takes an integer and touches no memory.
            if unsafe { libc::setuid(uid) } != 0 {
                return Err(failed(format!("setuid({uid})")));
            }
        }
        Ok(())
    }
}

/// Serves the main agent over the socket on fd 0 until it closes, then
/// ends everything this worker started and exits.
pub fn run() -> ! {
    WORKER.store(true, Ordering::SeqCst);
    let start_uptime_ms = init::boottime_ms();
    let args: Vec<String> = std::env::args().skip(2).collect();
    let creds = Creds::parse(&args).map_err(|why| OpError { kind: OpErrorKind::BadRequest, errno: None, message: why });
    let link = take_link();
    if let Err(e) = creds.and_then(|c| c.apply()) {
        let reply: provium_protocol::Reply = Err(e);
        let _ = frame::write_frame(&mut &link, 0, FrameKind::Reply, &encode_msg(&reply));
        std::process::exit(3);
    }
    reaper::start();
    let info = AgentInfo { start_uptime_ms, standalone: false, kernel: kmod::kernel_release() };
    session::serve(link, &info, session::Link::Worker);
    for pid in reaper::live() {
        kill_group(pid);
    }
    std::process::exit(0)
}

/// Moves the socket on fd 0 to a close-on-exec descriptor of its own and
/// puts `/dev/null` on fd 0.
fn take_link() -> File {
    // SAFETY: F_DUPFD_CLOEXEC takes integers only and returns a new
    // descriptor (≥ 3) for the open file behind fd 0, or -1.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        // No socket: nothing to serve.
        std::process::exit(2);
    }
    let null = c"/dev/null";
    // SAFETY: open(2) reads the NUL-terminated path of a C string literal
    // (static); dup2(2) and close(2) take integers only. fd 0 is replaced
    // by /dev/null, whose temporary descriptor is closed once copied (unless
    // open returned 0 itself, when there is nothing to close).
    unsafe {
        let devnull = libc::open(null.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if devnull > 0 {
            libc::dup2(devnull, 0);
            libc::close(devnull);
        }
    }
    // SAFETY: `fd` was just returned by fcntl (checked ≥ 0 above), so it is
    // an open descriptor that nothing else in this process owns; the File
    // becomes its only owner and closes it once.
    unsafe { File::from_raw_fd(fd) }
}

fn bad_request(message: String) -> OpError {
    OpError { kind: OpErrorKind::BadRequest, errno: None, message }
}

/// Why this agent does not take `req`, if it does not: only workers take
/// `KillAll`/`Join`, and a joined worker starts nothing new. (A worker may
/// start workers of its own; they are not among the processes it kills or
/// joins.)
pub fn refusal(req: &Request) -> Option<OpError> {
    let worker = is_worker();
    match req {
        Request::KillAll { .. } | Request::Join { .. } if !worker => {
            Some(bad_request(format!("{}: only a worker takes this request; send it inside `worker`", req.name())))
        }
        Request::Exec(_) | Request::Spawn(_) | Request::SpawnWorker(_) if worker && JOINED.load(Ordering::SeqCst) => {
            Some(bad_request(format!("{}: this worker was joined and starts nothing new", req.name())))
        }
        _ => None,
    }
}

/// Sends `signal` to the group of every process this worker started that
/// still runs; answers how many it reached.
pub fn kill_all(signal: i32) -> Response {
    let reached = reaper::live()
        .into_iter()
        // SAFETY: kill(2) takes only integers and touches no memory of
        // ours; a group that is already gone fails with ESRCH and is not
        // counted.
        .filter(|&pid| unsafe { libc::kill(-pid, signal) } == 0)
        .count();
    Response::Count(reached as u64)
}

/// Waits until nothing this worker started runs (SIGKILLing what still
/// does after `timeout_ms`); answers the worst status of all of it.
pub fn join(timeout_ms: Option<u64>, cancel: &CancelFlag) -> Result<Response, OpError> {
    JOINED.store(true, Ordering::SeqCst);
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut killed = false;
    while !reaper::wait_none_live(Duration::from_millis(100)) {
        if cancel.load(Ordering::SeqCst) {
            return Err(OpError {
                kind: OpErrorKind::Cancelled,
                errno: None,
                message: "join: cancelled by the host".into(),
            });
        }
        if !killed && deadline.is_some_and(|d| Instant::now() >= d) {
            for pid in reaper::live() {
                kill_group(pid);
            }
            killed = true;
        }
    }
    Ok(Response::Joined { status: reaper::worst_status() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_travel_as_three_arguments() {
        let all = Creds { uid: Some(1000), gid: Some(100), groups: Some(vec![10, 20]) };
        for c in [all, Creds::default(), Creds { uid: Some(0), gid: None, groups: Some(vec![]) }] {
            let args = c.args().to_vec();
            assert_eq!(Creds::parse(&args), Ok(c.clone()), "{args:?}");
        }
        assert_eq!(Creds::default().args(), ["-", "-", "-"]);
        let e = Creds::parse(&["x".into(), "-".into(), "-".into()]).unwrap_err();
        assert!(e.contains("`x` is not a user or group id"), "{e}");
        assert!(Creds::parse(&[]).unwrap_err().contains("got 0 argument(s)"));
    }

    #[test]
    fn the_main_agent_refuses_worker_only_requests() {
        assert!(!is_worker());
        let e = refusal(&Request::Join { timeout_ms: None }).unwrap();
        assert!(e.message.starts_with("join: only a worker takes this request"), "{}", e.message);
        assert!(refusal(&Request::KillAll { signal: 15 }).is_some());
        assert!(refusal(&Request::SpawnWorker(Default::default())).is_none());
        assert!(refusal(&Request::Ping).is_none());
    }
}
