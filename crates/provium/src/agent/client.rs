//! The host side of the agent connection: one Unix socket (QEMU's end of the
//! virtio-serial port), many channels.
//!
//! A reader thread decodes frames and routes them to the waiting caller by
//! channel id; callers write whole frames under a lock. When the socket
//! closes (QEMU exited, guest died) every waiting caller is woken with
//! [`AgentError::Disconnected`] (or [`AgentError::Read`] /
//! [`AgentError::BadFrame`] when a read error or garbage ended it); nothing
//! blocks forever on a dead VM. The handshake's answer is checked as it
//! arrives: a malformed one fails the handshake at once.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provium_protocol::frame::{self, Decoder, FrameError, FrameKind, CHUNK};
use provium_protocol::{
    decode_msg, encode_msg, DecodeError, Hello, HelloErr, HelloOk, OpError, Reply, Request, Response, PROTOCOL_VERSION,
};

/// Why an agent call failed. Messages never repeat their cause: where one
/// exists it is the error's `source()`, for the caller to walk.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The connection is gone; the text says how (the VM's end closed, the
    /// VM died).
    #[error("agent connection closed ({0})")]
    Disconnected(String),
    /// Reading the socket failed; the connection is closed.
    #[error("reading from the agent socket failed; the connection is closed")]
    Read(#[source] Arc<std::io::Error>),
    /// The agent's bytes are not frames any more; the connection is closed.
    #[error("the agent sent an undecodable frame; the connection is closed")]
    BadFrame(#[source] Arc<FrameError>),
    /// Writing a frame to the socket failed.
    #[error("cannot send a frame to the agent")]
    Send(#[source] std::io::Error),
    /// The agent carried out the request and it failed there: this *is* the
    /// error (its message names the operation and the OS's words), not a
    /// cause of one, so it shows as itself.
    #[error(transparent)]
    Op(#[from] OpError),
    /// A `Reply` frame whose body does not decode.
    #[error("the agent's reply could not be decoded")]
    BadReply(#[source] DecodeError),
    /// A reply of the wrong kind for the request.
    #[error("unexpected answer to {op}: {answer}")]
    Unexpected { op: &'static str, answer: String },
    /// A command's output passed what provium keeps in memory.
    #[error(
        "the output passed {}, the most provium keeps of one command (stdout and stderr together); read \
         larger output as it comes with vm:run_async(cmd) and proc:stdout_stream()",
        super::output::size_text(*cap)
    )]
    OutputTooLarge { cap: usize },
    /// A process's output streams stopped before its end.
    #[error("the process's output could not be read whole: {0}")]
    OutputIncomplete(String),
    #[error("protocol version mismatch: host speaks {host}, agent speaks {agent}; rebuild provium so both match")]
    Version { host: u32, agent: u32 },
    /// The handshake's answer (`what`: `HelloOk` or `HelloErr`) does not
    /// decode.
    #[error("the agent answered the handshake with a malformed {what}")]
    BadHello {
        what: &'static str,
        #[source]
        source: DecodeError,
    },
    /// A frame other than `HelloOk`/`HelloErr` on the handshake's channel.
    #[error("the agent answered the handshake with a {kind:?} frame instead of HelloOk or HelloErr")]
    UnexpectedHello { kind: FrameKind },
    #[error("agent did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("cannot connect to the agent socket")]
    Connect(#[source] std::io::Error),
}

impl AgentError {
    /// Whether the connection is unusable from now on (every later call
    /// fails too): [`AgentError::Disconnected`], and the read, frame and
    /// send failures that end the connection.
    pub fn connection_lost(&self) -> bool {
        matches!(
            self,
            AgentError::Disconnected(_) | AgentError::Read(_) | AgentError::BadFrame(_) | AgentError::Send(_)
        )
    }
}

pub(super) enum Incoming {
    Data(Vec<u8>),
    DataEnd,
    Reply(Reply),
    /// A `Reply` frame whose body did not decode.
    BadReply(DecodeError),
}

/// Why the reader stopped; every later caller gets it as an error.
#[derive(Debug, Clone)]
enum Closed {
    Eof,
    Read(Arc<std::io::Error>),
    BadFrame(Arc<FrameError>),
}

impl Closed {
    fn error(&self) -> AgentError {
        match self {
            Closed::Eof => AgentError::Disconnected("the VM's end of the port closed".into()),
            Closed::Read(e) => AgentError::Read(e.clone()),
            Closed::BadFrame(e) => AgentError::BadFrame(e.clone()),
        }
    }
}

#[derive(Default)]
struct Routes {
    channels: HashMap<u32, Sender<Incoming>>,
    /// The pending handshake: gets the agent's answer, or why that answer is
    /// not one.
    hello: Option<Sender<Result<HelloOk, AgentError>>>,
    closed: Option<Closed>,
}

/// A connection to one guest's agent. Cheap to clone.
///
/// [`AgentClient::for_worker`] gives a view of the same connection whose
/// every request is carried out by one worker agent of the guest (relayed
/// by the main agent, channel and all), so each typed method works on a
/// worker unchanged.
#[derive(Clone)]
pub struct AgentClient {
    writer: Arc<Mutex<UnixStream>>,
    routes: Arc<Mutex<Routes>>,
    next_channel: Arc<AtomicU32>,
    /// The worker this view sends its requests to; `None`: the main agent.
    worker: Option<u64>,
}

impl AgentClient {
    /// Connects to QEMU's socket for the agent port, retrying until
    /// `deadline` while QEMU creates it.
    pub fn connect(path: &Path, deadline: Instant) -> Result<AgentClient, AgentError> {
        let stream = crate::vmm::connect_when_ready(path, deadline).map_err(AgentError::Connect)?;
        AgentClient::over(stream)
    }

    /// A client on a connected stream; starts its reader thread.
    fn over(stream: UnixStream) -> Result<AgentClient, AgentError> {
        let reader = stream.try_clone().map_err(AgentError::Connect)?;
        let client = AgentClient {
            writer: Arc::new(Mutex::new(stream)),
            routes: Arc::default(),
            next_channel: Arc::new(AtomicU32::new(1)),
            worker: None,
        };
        let routes = client.routes.clone();
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || read_loop(reader, routes))
            .expect("spawn agent reader");
        Ok(client)
    }

    /// Says Hello and waits for the agent's answer. `alive` is asked every
    /// 50 ms and aborts the wait with its message when the VM has died.
    pub fn handshake(&self, timeout: Duration, alive: &dyn Fn() -> Result<(), String>) -> Result<HelloOk, AgentError> {
        let (tx, rx) = channel();
        {
            let mut r = crate::sync::lock(&self.routes);
            if let Some(closed) = &r.closed {
                return Err(closed.error());
            }
            r.hello = Some(tx);
        }
        self.send(0, FrameKind::Hello, &encode_msg(&Hello { protocol_version: PROTOCOL_VERSION }))?;
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(answer) => return answer,
                Err(RecvTimeoutError::Disconnected) => return Err(self.disconnected()),
                Err(RecvTimeoutError::Timeout) => {
                    alive().map_err(AgentError::Disconnected)?;
                    if Instant::now() >= deadline {
                        return Err(AgentError::HandshakeTimeout(timeout));
                    }
                }
            }
        }
    }

    /// The same connection, with every request sent to worker `handle`
    /// (`Request::Worker`) instead of the main agent.
    pub fn for_worker(&self, handle: u64) -> AgentClient {
        AgentClient { worker: Some(handle), ..self.clone() }
    }

    /// This connection as is (`None`), or its view for worker `worker`.
    pub fn via(&self, worker: Option<u64>) -> AgentClient {
        AgentClient { worker: worker.or(self.worker), ..self.clone() }
    }

    /// Closes the connection; every waiting caller gets `Disconnected`.
    pub fn close(&self) {
        let _ = crate::sync::lock(&self.writer).shutdown(std::net::Shutdown::Both);
    }

    /// Why a route's sender is gone: the reader's reason for stopping.
    pub(super) fn disconnected(&self) -> AgentError {
        match &crate::sync::lock(&self.routes).closed {
            Some(closed) => closed.error(),
            None => AgentError::Disconnected("the agent reader thread ended".into()),
        }
    }

    /// Writes one frame. If the write fails because the reader already saw
    /// the connection end, that is the better account of what happened.
    pub(super) fn send(&self, channel: u32, kind: FrameKind, body: &[u8]) -> Result<(), AgentError> {
        let mut w = crate::sync::lock(&self.writer);
        w.write_all(&frame::encode(channel, kind, body)).map_err(|e| {
            let closed = crate::sync::lock(&self.routes).closed.clone();
            closed.map_or(AgentError::Send(e), |c| c.error())
        })
    }

    pub(super) fn open(&self, req: &Request) -> Result<(u32, Receiver<Incoming>), AgentError> {
        let id = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        {
            let mut r = crate::sync::lock(&self.routes);
            if let Some(closed) = &r.closed {
                return Err(closed.error());
            }
            r.channels.insert(id, tx);
        }
        let body = match self.worker {
            Some(worker) => encode_msg(&Request::Worker { worker, request: Box::new(req.clone()) }),
            None => encode_msg(req),
        };
        self.send(id, FrameKind::Request, &body)?;
        Ok((id, rx))
    }

    /// Waits for the reply on a channel, collecting any `Data` before it.
    pub(super) fn finish(
        &self,
        rx: Receiver<Incoming>,
        mut data: Option<&mut Vec<u8>>,
    ) -> Result<Response, AgentError> {
        loop {
            match rx.recv() {
                Ok(Incoming::Data(bytes)) => {
                    if let Some(buf) = data.as_deref_mut() {
                        buf.extend_from_slice(&bytes);
                    }
                }
                Ok(Incoming::DataEnd) => {}
                Ok(Incoming::Reply(reply)) => return reply.map_err(AgentError::Op),
                Ok(Incoming::BadReply(e)) => return Err(AgentError::BadReply(e)),
                Err(_) => return Err(self.disconnected()),
            }
        }
    }

    /// Sends `data` on a channel as `Data` frames, then `DataEnd`.
    pub(super) fn send_data(&self, channel: u32, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(CHUNK) {
            self.send(channel, FrameKind::Data, chunk)?;
        }
        self.send(channel, FrameKind::DataEnd, &[])
    }

    /// Stops routing a channel (its late frames are dropped).
    pub(super) fn forget(&self, channel: u32) {
        crate::sync::lock(&self.routes).channels.remove(&channel);
    }

    /// Sends one request and waits for its reply.
    pub fn call(&self, req: &Request) -> Result<Response, AgentError> {
        let (_, rx) = self.open(req)?;
        self.finish(rx, None)
    }
}

fn read_loop(mut stream: UnixStream, routes: Arc<Mutex<Routes>>) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 256 * 1024];
    let closed = 'read: loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break Closed::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Closed::Read(Arc::new(e)),
        };
        decoder.feed(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => route(f, &routes),
                Ok(None) => break,
                Err(e) => break 'read Closed::BadFrame(Arc::new(e)),
            }
        }
    };
    let mut r = crate::sync::lock(&routes);
    if let Some(hello) = r.hello.take() {
        let _ = hello.send(Err(closed.error()));
    }
    r.closed = Some(closed);
    r.channels.clear();
}

/// The handshake's answer in a frame on channel 0.
fn hello_answer(f: &frame::Frame) -> Result<HelloOk, AgentError> {
    match f.kind {
        FrameKind::HelloOk => decode_msg::<HelloOk>("hello_ok", &f.body)
            .map_err(|source| AgentError::BadHello { what: "HelloOk", source }),
        FrameKind::HelloErr => match decode_msg::<HelloErr>("hello_err", &f.body) {
            Ok(e) => Err(AgentError::Version { host: e.host_version, agent: e.agent_version }),
            Err(source) => Err(AgentError::BadHello { what: "HelloErr", source }),
        },
        kind => Err(AgentError::UnexpectedHello { kind }),
    }
}

fn route(f: frame::Frame, routes: &Mutex<Routes>) {
    let mut r = crate::sync::lock(routes);
    // Channel 0 is the handshake's; requests start at 1.
    if f.channel == 0 || matches!(f.kind, FrameKind::HelloOk | FrameKind::HelloErr) {
        // An answer nobody waits for (a second one, or one after a timeout)
        // is dropped.
        if let Some(tx) = r.hello.take() {
            let _ = tx.send(hello_answer(&f));
        }
        return;
    }
    match f.kind {
        FrameKind::Data | FrameKind::DataEnd => {
            if let Some(tx) = r.channels.get(&f.channel) {
                let _ = tx.send(if f.kind == FrameKind::Data { Incoming::Data(f.body) } else { Incoming::DataEnd });
            }
        }
        FrameKind::Reply => {
            if let Some(tx) = r.channels.remove(&f.channel) {
                let _ = tx.send(match decode_msg::<Reply>("reply", &f.body) {
                    Ok(reply) => Incoming::Reply(reply),
                    Err(e) => Incoming::BadReply(e),
                });
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// A client over one end of a socket pair; the other end plays the agent.
    fn pair() -> (AgentClient, UnixStream) {
        let (host, agent) = UnixStream::pair().unwrap();
        (AgentClient::over(host).unwrap(), agent)
    }

    /// The next whole frame the host wrote (one frame per test: the decoder
    /// is not kept).
    fn read_frame(agent: &mut UnixStream) -> frame::Frame {
        let mut decoder = Decoder::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = decoder.next_frame().unwrap() {
                return f;
            }
            let n = agent.read(&mut buf).unwrap();
            assert!(n > 0, "the host closed the connection");
            decoder.feed(&buf[..n]);
        }
    }

    /// Handshakes (5 s timeout) with a fake agent that answers the Hello with
    /// one frame; returns the result and how long it took.
    fn handshake_answered_with(kind: FrameKind, body: &[u8]) -> (Result<HelloOk, AgentError>, Duration) {
        let (client, mut agent) = pair();
        let body = body.to_vec();
        let peer = std::thread::spawn(move || {
            let hello = read_frame(&mut agent);
            assert_eq!((hello.channel, hello.kind), (0, FrameKind::Hello));
            agent.write_all(&frame::encode(0, kind, &body)).unwrap();
            agent // returned, not dropped: an EOF would end the handshake by itself
        });
        let start = Instant::now();
        let result = client.handshake(Duration::from_secs(5), &|| Ok(()));
        let took = start.elapsed();
        let _agent = peer.join().unwrap();
        (result, took)
    }

    /// 0xc1 is the one byte MessagePack never uses: no message decodes from it.
    const UNDECODABLE: &[u8] = &[0xc1];

    #[test]
    fn a_malformed_hello_ok_is_a_bad_hello_at_once_not_a_timeout() {
        let (result, took) = handshake_answered_with(FrameKind::HelloOk, UNDECODABLE);
        let e = result.unwrap_err();
        assert!(matches!(e, AgentError::BadHello { what: "HelloOk", .. }), "{e:?}");
        assert_eq!(e.to_string(), "the agent answered the handshake with a malformed HelloOk");
        assert!(e.source().is_some(), "the decode error is the source");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn other_handshake_answers() {
        let (result, _) = handshake_answered_with(FrameKind::HelloErr, UNDECODABLE);
        assert!(matches!(result, Err(AgentError::BadHello { what: "HelloErr", .. })), "{result:?}");

        let (result, took) = handshake_answered_with(FrameKind::Reply, &encode_msg(&Ok::<_, OpError>(Response::Done)));
        assert!(matches!(result, Err(AgentError::UnexpectedHello { kind: FrameKind::Reply })), "{result:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");

        let err = HelloErr { host_version: PROTOCOL_VERSION, agent_version: 99 };
        let (result, _) = handshake_answered_with(FrameKind::HelloErr, &encode_msg(&err));
        assert!(matches!(result, Err(AgentError::Version { agent: 99, .. })), "{result:?}");

        let ok = HelloOk {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0".into(),
            kernel: "6.1".into(),
            agent_start_uptime_ms: 5,
            standalone: true,
        };
        let (result, _) = handshake_answered_with(FrameKind::HelloOk, &encode_msg(&ok));
        assert_eq!(result.unwrap(), ok);
    }

    #[test]
    fn an_undecodable_reply_is_a_bad_reply() {
        let (client, mut agent) = pair();
        let peer = std::thread::spawn(move || {
            let req = read_frame(&mut agent);
            assert_eq!(req.kind, FrameKind::Request);
            agent.write_all(&frame::encode(req.channel, FrameKind::Reply, UNDECODABLE)).unwrap();
            agent
        });
        let result = client.call(&Request::Ping);
        let _agent = peer.join().unwrap();
        assert!(matches!(result, Err(AgentError::BadReply(_))), "{result:?}");
    }

    #[test]
    fn a_worker_view_wraps_each_request_on_the_same_connection() {
        let (client, mut agent) = pair();
        let worker = client.for_worker(7);
        let peer = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let f = read_frame(&mut agent);
                seen.push(decode_msg::<Request>("request", &f.body).unwrap());
                agent
                    .write_all(&frame::encode(
                        f.channel,
                        FrameKind::Reply,
                        &encode_msg(&Ok::<_, OpError>(Response::Done)),
                    ))
                    .unwrap();
            }
            (seen, agent)
        });
        worker.call(&Request::Ping).unwrap();
        client.call(&Request::Ping).unwrap();
        let (seen, _agent) = peer.join().unwrap();
        assert_eq!(seen, [Request::Worker { worker: 7, request: Box::new(Request::Ping) }, Request::Ping]);
    }

    #[test]
    fn a_bad_frame_closes_the_connection_for_every_later_call() {
        let (client, mut agent) = pair();
        // Header: empty body, channel 0, kind 0x7f (no such kind).
        agent.write_all(&[0, 0, 0, 0, 0, 0, 0, 0, 0x7f]).unwrap();
        let result = client.handshake(Duration::from_secs(5), &|| Ok(()));
        assert!(matches!(&result, Err(AgentError::BadFrame(e)) if **e == FrameError::UnknownKind(0x7f)), "{result:?}");
        let later = client.call(&Request::Ping).unwrap_err();
        assert!(matches!(later, AgentError::BadFrame(_)) && later.connection_lost(), "{later:?}");
    }

    #[test]
    fn messages_leave_their_causes_to_source() {
        let io = || std::io::Error::other("the cause");
        let decode = || decode_msg::<HelloOk>("hello_ok", UNDECODABLE).unwrap_err();
        let errors = [
            AgentError::Read(Arc::new(io())),
            AgentError::Send(io()),
            AgentError::Connect(io()),
            AgentError::BadFrame(Arc::new(FrameError::UnknownKind(0x7f))),
            AgentError::BadReply(decode()),
            AgentError::BadHello { what: "HelloOk", source: decode() },
        ];
        for e in errors {
            let cause = e.source().expect("a source").to_string();
            assert!(!e.to_string().contains(&cause), "`{e}` repeats its cause `{cause}`");
            let chain = crate::errors::chain(&e);
            assert!(chain.starts_with(&format!("{e}: {cause}")), "{chain}");
        }
        // An agent-side failure is the error itself: shown once, no source.
        let op = AgentError::from(OpError {
            kind: provium_protocol::OpErrorKind::Os,
            errno: Some(2),
            message: "open `/x`: No such file or directory (os error 2)".into(),
        });
        assert_eq!(op.to_string(), "open `/x`: No such file or directory (os error 2)");
        assert!(op.source().is_none());
    }
}
