//! The agent binary as a worker, on the host: started the way the main
//! agent starts one (`--provium-worker UID GID GROUPS`, a socket pair as
//! stdin) and driven with protocol frames. A worker may start workers of its
//! own, so the relay (`Request::Worker`) is exercised here too: the outer
//! worker plays the main agent.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use provium_protocol::frame::{encode, Decoder, Frame, FrameKind};
use provium_protocol::layer0::SyscallCall;
use provium_protocol::{
    decode_msg, encode_msg, ExecRequest, ExitStatus, Hello, OpErrorKind, OutputPipe, ProcState, Reply, Request,
    Response, WorkerSpec, PROTOCOL_VERSION,
};

struct Agent {
    child: Child,
    link: UnixStream,
    decoder: Decoder,
    next: u32,
}

/// What one request got: its stdout (tagged `Data`), other `Data`, and the
/// reply.
struct Answer {
    stdout: Vec<u8>,
    reply: Reply,
}

impl Agent {
    fn worker(args: [&str; 3]) -> Agent {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_provium-agent"))
            .arg("--provium-worker")
            .args(args)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Agent { child, link: ours, decoder: Decoder::new(), next: 1 }
    }

    fn frame(&mut self) -> Option<Frame> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = self.decoder.next_frame().unwrap() {
                return Some(f);
            }
            match self.link.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("the agent answers within 30 s: {e}"),
            }
        }
    }

    fn hello(&mut self) -> Frame {
        let hello = encode_msg(&Hello { protocol_version: PROTOCOL_VERSION });
        self.link.write_all(&encode(0, FrameKind::Hello, &hello)).unwrap();
        self.frame().expect("an answer to Hello")
    }

    fn call(&mut self, req: &Request) -> Answer {
        let ch = self.next;
        self.next += 1;
        self.link.write_all(&encode(ch, FrameKind::Request, &encode_msg(req))).unwrap();
        let mut stdout = Vec::new();
        loop {
            let f = self.frame().expect("a reply before EOF");
            assert_eq!(f.channel, ch, "one request at a time");
            match f.kind {
                FrameKind::Data => {
                    if let Some((OutputPipe::Stdout, b)) = OutputPipe::split(&f.body) {
                        stdout.extend_from_slice(b);
                    }
                }
                FrameKind::Reply => return Answer { stdout, reply: decode_msg("reply", &f.body).unwrap() },
                _ => {}
            }
        }
    }

    fn ok(&mut self, req: &Request) -> (Response, String) {
        let a = self.call(req);
        let resp = a.reply.unwrap_or_else(|e| panic!("{} failed: {e}", req.name()));
        (resp, String::from_utf8_lossy(&a.stdout).into_owned())
    }
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], ..Default::default() }
}

fn via(worker: u64, req: Request) -> Request {
    Request::Worker { worker, request: Box::new(req) }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot
    // fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_worker_serves_kills_joins_and_relays_to_a_worker_of_its_own() {
    let mut outer = Agent::worker(["-", "-", "-"]);
    assert_eq!(outer.hello().kind, FrameKind::HelloOk);
    let (resp, out) = outer.ok(&Request::Exec(sh("echo hi; exit 3")));
    assert_eq!((resp, out.as_str()), (Response::Exec(ExitStatus::Exited(3)), "hi\n"));

    // Outer's own processes: two to kill, then a join that reports the
    // worst status (143 = SIGTERM; the exec above counts too, with 3).
    let spawn = |script: &str| Request::Spawn(sh(script));
    outer.ok(&spawn("sleep 100"));
    outer.ok(&spawn("sleep 100"));
    assert_eq!(outer.ok(&Request::KillAll { signal: libc::SIGTERM }).0, Response::Count(2));

    // A worker of its own, as another user when we may.
    let spec =
        if is_root() { WorkerSpec { uid: Some(65534), gid: Some(65534), groups: None } } else { WorkerSpec::default() };
    let (resp, _) = outer.ok(&Request::SpawnWorker(spec.clone()));
    let Response::Worker { handle: w, pid } = resp else { panic!("{resp:?}") };
    let (_, id) = outer.ok(&via(w, Request::Exec(sh("id -u; echo $PPID"))));
    let me = spec.uid.unwrap_or_else(getuid).to_string();
    assert_eq!(id, format!("{me}\n{pid}\n"), "the command is the inner worker's child");
    let (resp, _) = outer.ok(&via(w, Request::Syscall(SyscallCall::new(39, [0; 6]))));
    let Response::Syscall(getpid) = resp else { panic!("{resp:?}") };
    assert_eq!(getpid.ret, pid as i64, "layer 0 runs in the worker's process");

    // A spawned process of the inner worker, its output as a relayed stream.
    let (resp, _) = outer.ok(&via(w, spawn("echo streamed; exit 5")));
    let Response::Spawned { handle: p, .. } = resp else { panic!("{resp:?}") };
    let state = outer.ok(&via(w, Request::Wait { handle: p, timeout_ms: None, kill_on_timeout: false })).0;
    assert!(matches!(state, Response::Proc(ProcState { status: Some(ExitStatus::Exited(5)), .. })), "{state:?}");
    assert_eq!(outer.ok(&via(w, Request::Join { timeout_ms: Some(10_000) })).0, Response::Joined { status: 5 });
    let refused = outer.call(&via(w, Request::Exec(sh("true")))).reply.unwrap_err();
    assert!(refused.message.contains("was joined"), "{}", refused.message);

    // The outer worker's join is not held up by its worker, which is not one
    // of its processes.
    assert_eq!(outer.ok(&Request::Join { timeout_ms: Some(10_000) }).0, Response::Joined { status: 143 });

    // The inner worker dies: every request names it and how it ended.
    // SAFETY: kill(2) takes integers only.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let gone = loop {
        match outer.call(&via(w, Request::Ping)).reply {
            Err(e) if e.kind == OpErrorKind::WorkerGone => break e,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(gone.message.starts_with(&format!("worker {w} (pid {pid}, uid {me} ")), "{}", gone.message);
    assert!(gone.message.contains("was killed by signal 9 (SIGKILL) (ping not carried out)"), "{}", gone.message);
    assert_eq!(outer.ok(&Request::Release { handle: w }).0, Response::Done);

    // Its link closed, the outer worker exits.
    drop(outer.link);
    let status = outer.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_worker_that_cannot_take_its_credentials_says_why_and_exits() {
    let mut bad = Agent::worker(["nobody", "-", "-"]);
    let f = bad.frame().expect("a refusal");
    assert_eq!((f.channel, f.kind), (0, FrameKind::Reply));
    let e = decode_msg::<Reply>("reply", &f.body).unwrap().unwrap_err();
    assert!(e.message.contains("`nobody` is not a user or group id"), "{}", e.message);
    assert_eq!(bad.child.wait().unwrap().code(), Some(3));
}

#[test]
fn an_unprivileged_worker_cannot_start_a_root_one() {
    if !is_root() {
        return; // needs a uid to drop to
    }
    let mut nobody = Agent::worker(["65534", "65534", "-"]);
    assert_eq!(nobody.hello().kind, FrameKind::HelloOk);
    let spec = WorkerSpec { uid: Some(0), gid: Some(0), groups: None };
    let e = nobody.call(&Request::SpawnWorker(spec)).reply.unwrap_err();
    assert_eq!((e.kind, e.errno), (OpErrorKind::Os, Some(libc::EPERM)), "{}", e.message);
    assert!(e.message.starts_with("worker (uid 0 gid 0): setgroups([]): "), "{}", e.message);
}

#[test]
fn released_workers_end_what_they_started() {
    let mut outer = Agent::worker(["-", "-", "-"]);
    outer.hello();
    let (resp, _) = outer.ok(&Request::SpawnWorker(WorkerSpec::default()));
    let Response::Worker { handle: w, .. } = resp else { panic!("{resp:?}") };
    let (resp, _) = outer.ok(&via(w, Request::Spawn(sh("sleep 100"))));
    let Response::Spawned { pid: sleeper, .. } = resp else { panic!("{resp:?}") };
    assert_eq!(outer.ok(&Request::Release { handle: w }).0, Response::Done);
    // The sleeper was SIGKILLed by its worker on the way out.
    let gone = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for init.
        stat.is_empty() || stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'))
    });
    assert!(gone, "pid {sleeper} still runs");
    let e = outer.call(&via(w, Request::Ping)).reply.unwrap_err();
    assert_eq!(e.kind, OpErrorKind::UnknownHandle, "{}", e.message);
}

fn getuid() -> u32 {
    // SAFETY: getuid(2) takes no arguments, touches no memory and cannot
    // fail.
    unsafe { libc::getuid() }
}
