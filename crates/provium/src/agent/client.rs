//! The host side of the agent connection: one Unix socket (QEMU's end of the
//! virtio-serial port), many channels.
//!
//! A reader thread decodes frames and routes them to the waiting caller by
//! channel id; callers write whole frames under a lock. When the socket
//! closes (QEMU exited, guest died) every waiting caller is woken with
//! [`AgentError::Disconnected`]; nothing blocks forever on a dead VM.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provium_protocol::frame::{self, Decoder, FrameKind, CHUNK};
use provium_protocol::{
    decode_msg, encode_msg, Hello, HelloErr, HelloOk, OpError, Reply, Request, Response, PROTOCOL_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent connection closed ({0})")]
    Disconnected(String),
    #[error("{0}")]
    Op(#[from] OpError),
    #[error("protocol version mismatch: host speaks {host}, agent speaks {agent}; rebuild provium so both match")]
    Version { host: u32, agent: u32 },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("agent did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("cannot connect to the agent socket")]
    Connect(#[source] std::io::Error),
}

pub(super) enum Incoming {
    Data(Vec<u8>),
    DataEnd,
    Reply(Reply),
}

#[derive(Default)]
struct Routes {
    channels: HashMap<u32, Sender<Incoming>>,
    hello: Option<Sender<Result<HelloOk, HelloErr>>>,
    closed: Option<String>,
}

/// A connection to one guest's agent. Cheap to clone.
#[derive(Clone)]
pub struct AgentClient {
    writer: Arc<Mutex<UnixStream>>,
    routes: Arc<Mutex<Routes>>,
    next_channel: Arc<AtomicU32>,
}

impl AgentClient {
    /// Connects to QEMU's socket for the agent port, retrying until
    /// `deadline` while QEMU creates it.
    pub fn connect(path: &Path, deadline: Instant) -> Result<AgentClient, AgentError> {
        let stream = crate::vmm::connect_when_ready(path, deadline).map_err(AgentError::Connect)?;
        let reader = stream.try_clone().map_err(AgentError::Connect)?;
        let client = AgentClient {
            writer: Arc::new(Mutex::new(stream)),
            routes: Arc::default(),
            next_channel: Arc::new(AtomicU32::new(1)),
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
            let mut r = self.routes.lock().unwrap();
            if let Some(reason) = &r.closed {
                return Err(AgentError::Disconnected(reason.clone()));
            }
            r.hello = Some(tx);
        }
        self.send(0, FrameKind::Hello, &encode_msg(&Hello { protocol_version: PROTOCOL_VERSION }))?;
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(ok)) => return Ok(ok),
                Ok(Err(e)) => return Err(AgentError::Version { host: e.host_version, agent: e.agent_version }),
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

    /// Closes the connection; every waiting caller gets `Disconnected`.
    pub fn close(&self) {
        let _ = self.writer.lock().unwrap().shutdown(std::net::Shutdown::Both);
    }

    fn disconnected(&self) -> AgentError {
        let reason = self.routes.lock().unwrap().closed.clone();
        AgentError::Disconnected(reason.unwrap_or_else(|| "reader stopped".into()))
    }

    pub(super) fn send(&self, channel: u32, kind: FrameKind, body: &[u8]) -> Result<(), AgentError> {
        let mut w = self.writer.lock().unwrap();
        w.write_all(&frame::encode(channel, kind, body)).map_err(|e| AgentError::Disconnected(e.to_string()))
    }

    pub(super) fn open(&self, req: &Request) -> Result<(u32, Receiver<Incoming>), AgentError> {
        let id = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        {
            let mut r = self.routes.lock().unwrap();
            if let Some(reason) = &r.closed {
                return Err(AgentError::Disconnected(reason.clone()));
            }
            r.channels.insert(id, tx);
        }
        self.send(id, FrameKind::Request, &encode_msg(req))?;
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
        self.routes.lock().unwrap().channels.remove(&channel);
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
    let reason = loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break "the VM's end of the port closed".to_string(),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break e.to_string(),
        };
        decoder.feed(&buf[..n]);
        let mut bad = None;
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => route(f, &routes),
                Ok(None) => break,
                Err(e) => {
                    bad = Some(format!("undecodable frame from the agent: {e}"));
                    break;
                }
            }
        }
        if let Some(b) = bad {
            break b;
        }
    };
    let mut r = routes.lock().unwrap();
    r.closed = Some(reason);
    r.channels.clear();
    r.hello = None;
}

fn route(f: frame::Frame, routes: &Mutex<Routes>) {
    let mut r = routes.lock().unwrap();
    match f.kind {
        FrameKind::HelloOk | FrameKind::HelloErr => {
            let msg = if f.kind == FrameKind::HelloOk {
                decode_msg::<HelloOk>("hello_ok", &f.body).map(Ok)
            } else {
                decode_msg::<HelloErr>("hello_err", &f.body).map(Err)
            };
            if let (Some(tx), Ok(msg)) = (r.hello.take(), msg) {
                let _ = tx.send(msg);
            }
        }
        FrameKind::Data | FrameKind::DataEnd => {
            if let Some(tx) = r.channels.get(&f.channel) {
                let _ = tx.send(if f.kind == FrameKind::Data { Incoming::Data(f.body) } else { Incoming::DataEnd });
            }
        }
        FrameKind::Reply => {
            if let Some(tx) = r.channels.remove(&f.channel) {
                let reply = decode_msg::<Reply>("reply", &f.body).unwrap_or_else(|e| {
                    Err(OpError { kind: provium_protocol::OpErrorKind::Internal, errno: None, message: e.to_string() })
                });
                let _ = tx.send(Incoming::Reply(reply));
            }
        }
        _ => {}
    }
}
