//! The switch thread over real sockets. Each port gets a fake NIC playing
//! QEMU's side: a `UnixDatagram` bound at a temp path (where the switch
//! sends the port's frames), and the port socket bound at another path,
//! handed to [`Switch::add_port`]. Frames are built by hand.
//!
//! [`Switch`] calls are asynchronous (only `add_port` is answered), so the
//! tests wait for effects with a deadline: [`Bench::settle`] polls
//! [`Switch::stats`] (published after every loop iteration) until the switch
//! has received every frame the NICs sent, by which time their immediate
//! deliveries are in the receivers' socket queues — so "nothing arrived" is
//! checked without sleeping. Timing is asserted as lower bounds only.
//!
//! A command sent while no frame is waiting is carried out before any frame
//! sent after it (the switch reads its wake-up socket first), so tests
//! settle before `set_rules`/`set_link`.

mod captures;
mod forwarding;
mod impairments;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Switch, SwitchStats};

pub const BCAST: [u8; 6] = [0xff; 6];
/// A local experimental EtherType; every test frame carries it, so loss
/// draws come from one stream per direction.
pub const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// How long to wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// A locally administered unicast MAC ending in `n`.
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

/// An Ethernet frame: destination, source, EtherType, payload.
pub fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    [&dst[..], &src[..], &ETHERTYPE[..], payload].concat()
}

/// Polls `f` until it yields a value, panicking with `what` past [`WAIT`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A switch and a directory for the sockets of its fake NICs.
pub struct Bench {
    pub sw: Switch,
    pub dir: tempfile::TempDir,
    /// Frames the NICs have handed to the switch.
    sent: Arc<AtomicU64>,
}

/// QEMU's side of one port.
pub struct Nic {
    pub id: String,
    pub mac: [u8; 6],
    sock: UnixDatagram,
    /// Where the switch reads this NIC's frames.
    pub port_path: PathBuf,
    /// Where the switch sends frames for this NIC.
    pub nic_path: PathBuf,
    sent: Arc<AtomicU64>,
}

impl Bench {
    pub fn new(seed: u64) -> Bench {
        Bench { sw: Switch::start("lan", seed).unwrap(), dir: tempfile::tempdir().unwrap(), sent: Arc::default() }
    }

    /// Binds both sockets of port `id` and adds it; its MAC ends in `n`.
    pub fn nic(&self, id: &str, n: u8) -> Nic {
        let nic = self.unattached(id, n);
        let port = UnixDatagram::bind(&nic.port_path).unwrap();
        self.sw.add_port(id, port, nic.nic_path.clone()).unwrap();
        nic
    }

    /// The QEMU side of port `id` at fresh paths, not on the switch.
    pub fn unattached(&self, id: &str, n: u8) -> Nic {
        let fresh = |what: &str| {
            (0..).map(|i| self.dir.path().join(format!("{id}-{what}-{i}.sock"))).find(|p| !p.exists()).unwrap()
        };
        let nic_path = fresh("nic");
        let sock = UnixDatagram::bind(&nic_path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let port_path = fresh("port");
        Nic { id: id.to_string(), mac: mac(n), sock, port_path, nic_path, sent: self.sent.clone() }
    }

    /// Waits until the switch has read every frame sent so far, and so
    /// forwarded (or dropped, or queued) it; its stats at that point.
    pub fn settle(&self) -> SwitchStats {
        let want = self.sent.load(Ordering::SeqCst);
        wait_for(&format!("the switch to read {want} frames"), || {
            let s = self.sw.stats();
            assert!(s.received <= want, "the switch read {} frames, {want} were sent", s.received);
            (s.received == want).then_some(s)
        })
    }
}

impl Nic {
    /// Sends a frame to the switch, waiting while its socket is full.
    pub fn send(&self, frame: &[u8]) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.sock.send_to(frame, &self.port_path) {
                Ok(_) => {
                    self.sent.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) => panic!("{}: send: {e}", self.id),
            }
        }
    }

    /// A frame from this NIC to `dst` carrying `payload`.
    pub fn to(&self, dst: [u8; 6], payload: &[u8]) -> Vec<u8> {
        frame(dst, self.mac, payload)
    }

    /// A frame already waiting, if any.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0; 65536];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{}: recv: {e}", self.id),
        }
    }

    /// The next frame, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.try_recv() {
                return Some(f);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Every frame already waiting.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.try_recv()).collect()
    }
}
