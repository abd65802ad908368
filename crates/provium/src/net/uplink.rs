//! [`Uplink`]: a bridge's route to the host's network, with no root: a
//! QEMU that runs no guest (`-machine none`), only its user-mode network
//! stack (slirp: NAT for any member of the bridge's subnet) joined through
//! a QEMU hub to a datagram socket that is one more port of the switch.
//!
//! The gateway is the bridge's `.1`; slirp forwards connections to it to the
//! host's loopback, so a guest reaches a server the test started on
//! `127.0.0.1:PORT` at `<gateway>:PORT`. Slirp's DNS answers on `.254` and
//! its (unused) DHCP pool starts at `.240`.

use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cleanup::ScratchDir;
use crate::vmm::process::{qemu_binary, QemuProcess};

/// The switch port of the uplink (not a valid VM name, so never a member's).
pub const UPLINK_PORT: &str = "(uplink)";

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("cannot prepare the uplink's scratch directory or socket")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Spawn(#[from] crate::vmm::process::SpawnError),
    #[error("the uplink's QEMU did not come up: {0}")]
    NotUp(String),
}

/// A running uplink; dropping it stops its QEMU and removes its sockets.
pub struct Uplink {
    qemu: QemuProcess,
    pub gateway: Ipv4Addr,
    _scratch: ScratchDir,
}

/// The host end the switch takes: its socket and where frames go.
pub struct UplinkPort {
    pub socket: UnixDatagram,
    pub peer: PathBuf,
}

/// The QEMU arguments of an uplink for subnet `net` (`10.a.b.0`).
pub fn uplink_args(net: Ipv4Addr, qemu_end: &std::path::Path, host_end: &std::path::Path) -> Vec<String> {
    let [a, b, c, _] = net.octets();
    let at = |d: u8| Ipv4Addr::new(a, b, c, d);
    vec![
        "-machine".into(),
        "none".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-netdev".into(),
        format!("user,id=up,net={net}/24,host={},dns={},dhcpstart={}", at(1), at(254), at(240)),
        "-netdev".into(),
        format!(
            "dgram,id=sw,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            qemu_end.display(),
            host_end.display()
        ),
        "-netdev".into(),
        "hubport,id=h0,hubid=0,netdev=up".into(),
        "-netdev".into(),
        "hubport,id=h1,hubid=0,netdev=sw".into(),
    ]
}

impl Uplink {
    /// Starts the uplink of bridge `bridge` on subnet `net`.
    pub fn start(bridge: &str, net: Ipv4Addr) -> Result<(Uplink, UplinkPort), UplinkError> {
        let scratch = ScratchDir::new(&format!("uplink-{bridge}")).map_err(UplinkError::Io)?;
        let (qemu_end, host_end) = (scratch.path().join("nic.sock"), scratch.path().join("port.sock"));
        let socket = UnixDatagram::bind(&host_end).map_err(UplinkError::Io)?;
        let argv = uplink_args(net, &qemu_end, &host_end);
        let mut qemu = QemuProcess::spawn(&qemu_binary(), &argv, &scratch.path().join("qemu.stderr"))?;
        // Its socket exists once QEMU has set up the netdevs.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !qemu_end.exists() {
            if qemu.wait_exit(Duration::from_millis(10)) || Instant::now() > deadline {
                return Err(UplinkError::NotUp(qemu.stderr()));
            }
        }
        let [a, b, c, _] = net.octets();
        let uplink = Uplink { qemu, gateway: Ipv4Addr::new(a, b, c, 1), _scratch: scratch };
        Ok((uplink, UplinkPort { socket, peer: qemu_end }))
    }

    pub fn stop(mut self) {
        self.qemu.stop(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slirp_takes_the_gateway_and_joins_the_hub() {
        let v = uplink_args(Ipv4Addr::new(10, 7, 8, 0), "/s/nic.sock".as_ref(), "/s/port.sock".as_ref());
        assert_eq!(v[7], "user,id=up,net=10.7.8.0/24,host=10.7.8.1,dns=10.7.8.254,dhcpstart=10.7.8.240");
        assert!(v[9].contains("local.path=/s/nic.sock") && v[9].contains("remote.path=/s/port.sock"));
        assert_eq!(
            &v[10..],
            ["-netdev", "hubport,id=h0,hubid=0,netdev=up", "-netdev", "hubport,id=h1,hubid=0,netdev=sw"]
        );
    }
}
