//! [`Switch`]: a learning Ethernet switch on one thread, with one Unix
//! datagram socket per port (a VM NIC; see `vmm::argv::nic_args`).
//!
//! The thread sleeps in `poll(2)` on the port sockets, a wake-up socket that
//! commands arrive through, and — when frames are held back by latency or
//! bandwidth — the time the next one is due. A frame goes to the port its
//! destination address was learned on, or to every other port (broadcast,
//! multicast, unknown). Each delivery passes [`Rules::verdict`]; one that
//! needs no delay is sent at once, the others wait in a time-ordered queue
//! (bandwidth is a per-direction serialisation queue: a frame leaves when the
//! previous one of that direction has finished, and is dropped past
//! [`super::rules::queue_bound`]). Sends never block. Each port socket is
//! connected to its guest's, so when the guest's socket is full (the kernel
//! queues only ten datagrams) the frame waits in the port's backlog and
//! leaves when `poll` says there is room, as a NIC's ring would; a guest
//! that takes nothing for [`BACKLOG_FRAMES`] frames (paused, gone) loses
//! the rest, counted in its `errors`.
//!
//! Loss draws come from one seeded stream per direction and EtherType: the
//! same seed and the same frames of a kind drop the same ones, whatever
//! else crosses the bridge.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::capture::{Capture, CaptureScope, Sink};
use super::rules::{self, Rng, Rules};
use crate::sync::lock;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot start a switch thread")]
    Thread(#[source] std::io::Error),
    #[error("the switch of bridge `{0}` has stopped")]
    Stopped(String),
    #[error("port `{0}` is already on the switch")]
    DuplicatePort(String),
}

/// A port's counters, as its guest sees them: `tx` is what the guest sent
/// (the switch received), `rx` what was delivered to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Frames the guest could not take (a full or closed socket).
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    tx_packets: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn read(&self) -> PortCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PortCounters {
            rx_bytes: g(&self.rx_bytes),
            tx_bytes: g(&self.tx_bytes),
            rx_packets: g(&self.rx_packets),
            tx_packets: g(&self.tx_packets),
            errors: g(&self.errors),
        }
    }
}

/// The whole switch's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchStats {
    pub received: u64,
    pub received_bytes: u64,
    pub delivered: u64,
    pub dropped_rule: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub runt: u64,
}

enum Cmd {
    AddPort { id: String, socket: UnixDatagram, peer: PathBuf, done: Sender<Result<(), NetError>> },
    RemovePort(String),
    SetLink(String, bool),
    Rules(Rules),
    Capture(CaptureScope, Sink),
    Stop,
}

struct Shared {
    name: String,
    cmds: Mutex<Option<Sender<Cmd>>>,
    wake: UnixDatagram,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    stats: Mutex<SwitchStats>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A switch handle; clones share the switch, which stops when the last
/// handle goes (or on [`Switch::stop`]).
#[derive(Clone)]
pub struct Switch(Arc<Shared>);

impl Switch {
    /// Starts the switch of bridge `name`; loss draws from `seed`.
    pub fn start(name: &str, seed: u64) -> Result<Switch, NetError> {
        let (wake, wake_rx) = UnixDatagram::pair().map_err(NetError::Thread)?;
        wake.set_nonblocking(true).map_err(NetError::Thread)?;
        wake_rx.set_nonblocking(true).map_err(NetError::Thread)?;
        let (tx, rx) = channel();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            cmds: Mutex::new(Some(tx)),
            wake,
            counters: Mutex::default(),
            stats: Mutex::default(),
            thread: Mutex::default(),
        });
        let mut fabric = Fabric {
            shared: Arc::downgrade(&shared),
            ports: Vec::new(),
            macs: HashMap::new(),
            rules: Rules::default(),
            seed,
            rngs: HashMap::new(),
            queue: BinaryHeap::new(),
            pairs: HashMap::new(),
            captures: Vec::new(),
            stats: SwitchStats::default(),
            seq: 0,
        };
        let thread = std::thread::Builder::new()
            .name(format!("provium-switch-{name}"))
            .spawn(move || fabric.run(&wake_rx, &rx))
            .map_err(NetError::Thread)?;
        *lock(&shared.thread) = Some(thread);
        Ok(Switch(shared))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    fn send(&self, cmd: Cmd) -> Result<(), NetError> {
        let sent = lock(&self.0.cmds).as_ref().map(|tx| tx.send(cmd).is_ok()).unwrap_or(false);
        if !sent {
            return Err(NetError::Stopped(self.0.name.clone()));
        }
        let _ = self.0.wake.send(&[1]);
        Ok(())
    }

    /// Adds port `id`: frames arrive on `socket` (bound by the caller) and
    /// frames for it are sent to `peer`.
    pub fn add_port(&self, id: &str, socket: UnixDatagram, peer: PathBuf) -> Result<(), NetError> {
        socket.set_nonblocking(true).map_err(NetError::Thread)?;
        let (done, answer) = channel();
        self.send(Cmd::AddPort { id: id.to_string(), socket, peer, done })?;
        answer.recv().unwrap_or_else(|_| Err(NetError::Stopped(self.0.name.clone())))
    }

    /// Removes port `id` and what was learned about it; ends its captures.
    pub fn remove_port(&self, id: &str) {
        let _ = self.send(Cmd::RemovePort(id.to_string()));
    }

    /// Cable pull (`up: false`): frames from and to the port are dropped.
    pub fn set_link(&self, id: &str, up: bool) {
        let _ = self.send(Cmd::SetLink(id.to_string(), up));
    }

    pub fn set_rules(&self, rules: Rules) {
        let _ = self.send(Cmd::Rules(rules));
    }

    /// Port `id`'s counters, if it is on the switch.
    pub fn counters(&self, id: &str) -> Option<PortCounters> {
        lock(&self.0.counters).get(id).map(|c| c.read())
    }

    pub fn stats(&self) -> SwitchStats {
        *lock(&self.0.stats)
    }

    /// A new capture of `scope` (see [`CaptureScope`]).
    pub fn capture(&self, scope: CaptureScope) -> Capture {
        let (capture, sink) = Capture::new();
        if self.send(Cmd::Capture(scope, sink.clone())).is_err() {
            sink.end();
        }
        capture
    }

    /// Stops the thread and closes every port socket; idempotent.
    pub fn stop(&self) {
        let _ = self.send(Cmd::Stop);
        lock(&self.0.cmds).take();
        let thread = lock(&self.0.thread).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(tx) = lock(&self.cmds).take() {
            let _ = tx.send(Cmd::Stop);
            let _ = self.wake.send(&[1]);
        }
        // The switch thread itself may hold the last reference for a moment
        // (publishing its counts): it must not wait for itself.
        if let Some(t) = lock(&self.thread).take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

struct Port {
    id: String,
    socket: UnixDatagram,
    peer: PathBuf,
    /// Connected to `peer`: then `poll` says when the peer has room again,
    /// and frames that do not fit wait in `backlog` instead of being lost.
    connected: bool,
    backlog: VecDeque<Vec<u8>>,
    link: bool,
    counters: Arc<Counters>,
}

impl Port {
    fn new(id: String, socket: UnixDatagram, peer: PathBuf, counters: Arc<Counters>) -> Port {
        let connected = socket.connect(&peer).is_ok();
        Port { id, socket, peer, connected, backlog: VecDeque::new(), link: true, counters }
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<usize> {
        if self.connected {
            self.socket.send(frame)
        } else {
            self.socket.send_to(frame, &self.peer)
        }
    }
}

/// Frames a port holds while its guest's socket is full (the kernel queues
/// only `net.unix.max_dgram_qlen`, 10 by default, datagrams per socket).
const BACKLOG_FRAMES: usize = 512;

/// A frame held back until `due`.
struct Held {
    due: Instant,
    seq: u64,
    to: String,
    frame: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Held) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Held) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    // Reversed: BinaryHeap pops the earliest first.
    fn cmp(&self, o: &Held) -> std::cmp::Ordering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

/// Per direction: when its wire is free again, and when its last held frame
/// is due (frames of one direction leave in order).
#[derive(Clone, Copy)]
struct Lane {
    free_at: Instant,
    last_due: Instant,
}

/// The switch's state, owned by its thread.
struct Fabric {
    shared: std::sync::Weak<Shared>,
    ports: Vec<Port>,
    macs: HashMap<[u8; 6], String>,
    rules: Rules,
    seed: u64,
    /// One loss stream per direction and EtherType, so traffic of one kind
    /// (IPv6 neighbour discovery, say) does not shift which frames of
    /// another (the test's IPv4) are dropped.
    rngs: HashMap<(String, String, u16), Rng>,
    queue: BinaryHeap<Held>,
    pairs: HashMap<(String, String), Lane>,
    captures: Vec<(CaptureScope, Sink)>,
    stats: SwitchStats,
    seq: u64,
}

const MAX_FRAME: usize = 65536;
/// Frames read from one port before the others get a turn.
const BURST: usize = 64;

impl Fabric {
    fn run(&mut self, wake: &UnixDatagram, cmds: &Receiver<Cmd>) {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let wake_fd = libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let mut fds: Vec<libc::pollfd> = std::iter::once(wake_fd)
                .chain(self.ports.iter().map(|p| {
                    let out = if p.backlog.is_empty() { 0 } else { libc::POLLOUT };
                    libc::pollfd { fd: p.socket.as_raw_fd(), events: libc::POLLIN | out, revents: 0 }
                }))
                .collect();
            let timeout = match self.queue.peek() {
                None => -1,
                Some(h) => {
                    let left = h.due.saturating_duration_since(Instant::now());
                    // Round up: waking early would spin.
                    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
                }
            };
            // SAFETY: `fds` is a live, exclusively borrowed array of
            // `fds.len()` pollfd structs, which poll(2) reads and writes
            // (revents) only within that length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(switch = %self.name(), "poll failed: {}", std::io::Error::last_os_error());
                break;
            }
            if fds[0].revents != 0 {
                while wake.recv(&mut buf).is_ok() {}
                let mut stop = false;
                while let Ok(cmd) = cmds.try_recv() {
                    stop |= self.command(cmd);
                }
                if stop {
                    break;
                }
            }
            let writable: Vec<usize> =
                (1..fds.len()).filter(|&i| fds[i].revents & libc::POLLOUT != 0).map(|i| i - 1).collect();
            for i in writable {
                self.flush_backlog(i);
            }
            let ready: Vec<usize> =
                (1..fds.len()).filter(|&i| fds[i].revents & !libc::POLLOUT != 0).map(|i| i - 1).collect();
            for i in ready {
                self.read_port(i, &mut buf);
            }
            self.release_due();
            self.publish();
        }
        for (_, sink) in self.captures.drain(..) {
            sink.end();
        }
        self.publish();
    }

    fn name(&self) -> String {
        self.shared.upgrade().map(|s| s.name.clone()).unwrap_or_default()
    }

    fn publish(&self) {
        if let Some(s) = self.shared.upgrade() {
            *lock(&s.stats) = self.stats;
        }
    }

    /// Carries out a command; true for stop.
    fn command(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::AddPort { id, socket, peer, done } => {
                let r = if self.ports.iter().any(|p| p.id == id) {
                    Err(NetError::DuplicatePort(id))
                } else {
                    let counters = Arc::new(Counters::default());
                    if let Some(s) = self.shared.upgrade() {
                        lock(&s.counters).insert(id.clone(), counters.clone());
                    }
                    self.ports.push(Port::new(id, socket, peer, counters));
                    Ok(())
                };
                let _ = done.send(r);
            }
            Cmd::RemovePort(id) => {
                self.ports.retain(|p| p.id != id);
                self.macs.retain(|_, port| *port != id);
                self.queue.retain(|h| h.to != id);
                self.pairs.retain(|(a, b), _| *a != id && *b != id);
                if let Some(s) = self.shared.upgrade() {
                    lock(&s.counters).remove(&id);
                }
                self.captures.retain(|(scope, sink)| {
                    let ends = *scope == CaptureScope::Port(id.clone());
                    if ends {
                        sink.end();
                    }
                    !ends
                });
            }
            Cmd::SetLink(id, up) => {
                if let Some(p) = self.ports.iter_mut().find(|p| p.id == id) {
                    p.link = up;
                }
            }
            Cmd::Rules(r) => self.rules = r,
            Cmd::Capture(scope, sink) => self.captures.push((scope, sink)),
            Cmd::Stop => return true,
        }
        false
    }

    fn capture(&mut self, port: Option<&str>, frame: &[u8]) {
        if self.captures.is_empty() {
            return;
        }
        let now = SystemTime::now();
        self.captures.retain(|(scope, sink)| {
            let wanted = match (scope, port) {
                (CaptureScope::Bridge, None) => true,
                (CaptureScope::Port(p), Some(q)) => p == q,
                _ => false,
            };
            !wanted || sink.push(now, frame)
        });
    }

    fn read_port(&mut self, i: usize, buf: &mut [u8]) {
        for _ in 0..BURST {
            let Some(port) = self.ports.get(i) else { return };
            let n = match port.socket.recv(buf) {
                Ok(n) => n,
                Err(_) => return,
            };
            let c = &port.counters;
            c.tx_packets.fetch_add(1, Ordering::Relaxed);
            c.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.stats.received += 1;
            self.stats.received_bytes += n as u64;
            if !port.link {
                continue;
            }
            let from = port.id.clone();
            let frame = &buf[..n];
            self.capture(None, frame);
            self.capture(Some(&from), frame);
            self.forward(&from, frame);
        }
    }

    fn forward(&mut self, from: &str, frame: &[u8]) {
        if frame.len() < 14 {
            self.stats.runt += 1;
            return;
        }
        let dst: [u8; 6] = frame[0..6].try_into().expect("6 bytes");
        let src: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
        if src[0] & 1 == 0 && self.macs.get(&src).map(String::as_str) != Some(from) {
            self.macs.insert(src, from.to_string());
        }
        let known = if dst[0] & 1 == 0 { self.macs.get(&dst).cloned() } else { None };
        let targets: Vec<String> = match known {
            Some(to) if to == from => return,
            Some(to) => vec![to],
            None => self.ports.iter().filter(|p| p.id != from).map(|p| p.id.clone()).collect(),
        };
        for to in targets {
            self.deliver(from, &to, frame);
        }
    }

    fn deliver(&mut self, from: &str, to: &str, frame: &[u8]) {
        if !self.ports.iter().any(|p| p.id == to && p.link) {
            return;
        }
        let d = if self.rules.is_empty() {
            rules::Delivery { delay: Duration::ZERO, rate_bps: None }
        } else {
            let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
            let key = (from.to_string(), to.to_string(), ethertype);
            let seed = self.seed;
            let rng = self
                .rngs
                .entry(key)
                .or_insert_with(|| Rng::new(rules::derive_seed(seed, &format!("{from}>{to}#{ethertype:04x}"))));
            match self.rules.verdict(from, to, rng) {
                Ok(d) => d,
                Err(rules::Drop::Rule) => return self.stats.dropped_rule += 1,
                Err(rules::Drop::Loss) => return self.stats.dropped_loss += 1,
            }
        };
        let now = Instant::now();
        // The fast path (nothing to delay, nothing held for any direction)
        // builds no lane key.
        if d.delay.is_zero() && d.rate_bps.is_none() && self.pairs.is_empty() {
            return self.send_to(to, frame);
        }
        let key = (from.to_string(), to.to_string());
        let lane = self.pairs.get(&key).copied();
        if d.delay.is_zero() && d.rate_bps.is_none() && lane.is_none_or(|l| l.last_due <= now) {
            return self.send_to(to, frame);
        }
        let mut lane = lane.unwrap_or(Lane { free_at: now, last_due: now });
        let mut leaves = now;
        if let Some(rate) = d.rate_bps {
            let start = lane.free_at.max(now);
            if start.saturating_duration_since(now) > rules::queue_bound(rate) {
                return self.stats.dropped_queue += 1;
            }
            lane.free_at = start + rules::wire_time(frame.len(), rate);
            leaves = lane.free_at;
        }
        let due = (leaves + d.delay).max(lane.last_due);
        lane.last_due = due;
        self.pairs.insert(key, lane);
        self.seq += 1;
        self.queue.push(Held { due, seq: self.seq, to: to.to_string(), frame: frame.to_vec() });
    }

    fn release_due(&mut self) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|h| h.due <= now) {
            let h = self.queue.pop().expect("peeked");
            self.send_to(&h.to, &h.frame);
        }
        if self.queue.is_empty() {
            self.pairs.retain(|_, l| l.free_at > now);
        }
    }

    fn send_to(&mut self, to: &str, frame: &[u8]) {
        let Some(i) = self.ports.iter().position(|p| p.id == to) else { return };
        let port = &mut self.ports[i];
        if !port.link {
            return;
        }
        if !port.backlog.is_empty() {
            return self.hold(i, frame.to_vec());
        }
        match port.send(frame) {
            Ok(_) => self.delivered(i, frame),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && port.connected => self.hold(i, frame.to_vec()),
            Err(_) => {
                port.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Keeps a frame for a full guest socket, or loses it past the bound.
    fn hold(&mut self, i: usize, frame: Vec<u8>) {
        let port = &mut self.ports[i];
        if port.backlog.len() >= BACKLOG_FRAMES {
            port.counters.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        port.backlog.push_back(frame);
    }

    /// Sends what port `i` holds, until its guest's socket is full again.
    fn flush_backlog(&mut self, i: usize) {
        while let Some(frame) = self.ports.get_mut(i).and_then(|p| p.backlog.pop_front()) {
            let port = &mut self.ports[i];
            match port.send(&frame) {
                Ok(_) => self.delivered(i, &frame),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    port.backlog.push_front(frame);
                    return;
                }
                Err(_) => {
                    port.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn delivered(&mut self, i: usize, frame: &[u8]) {
        let c = &self.ports[i].counters;
        c.rx_packets.fetch_add(1, Ordering::Relaxed);
        c.rx_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        self.stats.delivered += 1;
        let id = self.ports[i].id.clone();
        self.capture(Some(&id), frame);
    }
}
