//! `NetConfig`: the guest end of provium's automatic addressing. The host
//! names an interface by its permanent Ethernet address (the device's, which
//! provium chose), and the agent finds it among `/sys/class/net`, may give
//! it another address (two VMs restored from one snapshot share their
//! devices' addresses, so each takes its own), gives it an IPv4 address and
//! netmask and brings it up — the kernel then adds the subnet's route — or
//! brings it down. Plain `ioctl`s on an `AF_INET` socket, so the guest needs
//! no `ip` or `ifconfig`.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use provium_protocol::{OpError, OpErrorKind, Response};

use crate::sys::os_error;

fn bad(message: String) -> OpError {
    OpError { kind: OpErrorKind::BadRequest, errno: None, message }
}

fn parse_mac(mac: &str) -> Result<[u8; 6], OpError> {
    let bytes: Vec<u8> = mac.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
    <[u8; 6]>::try_from(bytes).map_err(|_| bad(format!("net_config: `{mac}` is not an Ethernet address")))
}

/// `struct ethtool_perm_addr` with room for an Ethernet address.
#[repr(C)]
struct PermAddr {
    cmd: u32,
    size: u32,
    data: [u8; 32],
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GPERMADDR: u32 = 0x20;

/// The device's own Ethernet address of interface `name`.
fn permanent_address(sock: &OwnedFd, name: &str) -> Option<[u8; 6]> {
    let mut perm = PermAddr { cmd: ETHTOOL_GPERMADDR, size: 32, data: [0; 32] };
    let mut req = ifreq(name).ok()?;
    req.ifr_ifru.ifru_data = (&mut perm as *mut PermAddr).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GPERMADDR reads `cmd`/`size` of the
    // struct ifr_data points to and writes at most `size` (32) bytes into
    // its `data`; `perm` is a live local that outlives the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req as *mut libc::ifreq) };
    (r == 0 && perm.size == 6).then(|| perm.data[..6].try_into().expect("6 bytes"))
}

/// The interface whose permanent address (or, failing that, current
/// address) is `mac`.
fn interface_with(sock: &OwnedFd, mac: &str) -> Result<String, OpError> {
    let want = parse_mac(mac)?;
    let dir = std::fs::read_dir("/sys/class/net").map_err(|e| os_error("net_config: /sys/class/net", e))?;
    let mut names = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let current = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        let current = parse_mac(current.trim()).ok();
        if permanent_address(sock, &name).or(current) == Some(want) {
            return Ok(name);
        }
        names.push(name);
    }
    names.sort();
    Err(OpError {
        kind: OpErrorKind::Os,
        errno: Some(libc::ENODEV),
        message: format!("net_config: no interface has address {mac} (interfaces: {})", names.join(", ")),
    })
}

/// An `ifreq` naming `name`.
fn ifreq(name: &str) -> Result<libc::ifreq, OpError> {
    // SAFETY: ifreq is plain old data (a name array and a union of integers
    // and sockaddrs), for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(bad(format!("net_config: interface name `{name}` is too long")));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain structs; the
    // kernel reads an AF_INET sockaddr as a sockaddr_in, which is what the
    // SIOCSIF* ioctls expect in ifr_addr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq, what: &str) -> Result<(), OpError> {
    // SAFETY: every request passed here (SIOCGIFFLAGS, SIOCSIFFLAGS,
    // SIOCSIFADDR, SIOCSIFNETMASK) reads and/or writes exactly one ifreq at
    // the pointer, which is a live, exclusively borrowed ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) } != 0 {
        return Err(os_error(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_up(sock: &OwnedFd, name: &str, up: bool) -> Result<(), OpError> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req, &format!("net_config: flags of {name}"))?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags member just above.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let iff_up = libc::IFF_UP as libc::c_short;
    req.ifr_ifru.ifru_flags = if up { flags | iff_up } else { flags & !iff_up };
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req, &format!("net_config: bring {name} {}", if up { "up" } else { "down" }))
}

fn set_hardware_address(sock: &OwnedFd, name: &str, mac: &str) -> Result<(), OpError> {
    let bytes = parse_mac(mac)?;
    let mut req = ifreq(name)?;
    // SAFETY: sockaddr is plain old data; zeroes are a valid value.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in sa.sa_data.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = sa;
    ioctl(sock, libc::SIOCSIFHWADDR, &mut req, &format!("net_config: set {name}'s address to {mac}"))
}

pub fn configure(
    mac: &str,
    set_mac: Option<&str>,
    up: bool,
    address: Option<&str>,
    prefix: u8,
) -> Result<Response, OpError> {
    // SAFETY: socket(2) takes integers only; a non-negative result is a new
    // descriptor this function alone owns, so OwnedFd may close it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_error("net_config: socket", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = interface_with(&sock, mac)?;
    if let Some(new) = set_mac {
        set_hardware_address(&sock, &name, new)?;
    }
    if let (true, Some(address)) = (up, address) {
        let ip: Ipv4Addr =
            address.parse().map_err(|_| bad(format!("net_config: `{address}` is not an IPv4 address")))?;
        if prefix > 32 {
            return Err(bad(format!("net_config: prefix /{prefix} is out of range")));
        }
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        let mut req = ifreq(&name)?;
        req.ifr_ifru.ifru_addr = sockaddr(ip);
        ioctl(&sock, libc::SIOCSIFADDR, &mut req, &format!("net_config: address {ip} on {name}"))?;
        let mut req = ifreq(&name)?;
        req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
        ioctl(&sock, libc::SIOCSIFNETMASK, &mut req, &format!("net_config: netmask /{prefix} on {name}"))?;
    }
    set_up(&sock, &name, up)?;
    Ok(Response::Interface(name))
}

fn inet_socket() -> Result<OwnedFd, OpError> {
    // SAFETY: socket(2) takes integers only; a non-negative result is a new
    // descriptor this function alone owns, so OwnedFd may close it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_error("net_config: socket", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds or removes the default route via `gateway` (an uplink). Adding one
/// that exists, or removing one that does not, is fine.
pub fn default_route(gateway: &str, present: bool) -> Result<Response, OpError> {
    let gw: Ipv4Addr =
        gateway.parse().map_err(|_| bad(format!("default_route: `{gateway}` is not an IPv4 address")))?;
    let sock = inet_socket()?;
    // SAFETY: rtentry is plain old data (integers, sockaddrs, pointers that
    // may be null); all-zero bytes are a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gw);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    let request = if present { libc::SIOCADDRT } else { libc::SIOCDELRT };
    // SAFETY: SIOCADDRT/SIOCDELRT read one rtentry at the pointer, a live
    // local; its rt_dev is null (the kernel picks the interface).
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &mut rt as *mut libc::rtentry) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let fine = matches!(e.raw_os_error(), Some(libc::EEXIST) if present)
            || matches!(e.raw_os_error(), Some(libc::ESRCH) if !present);
        if !fine {
            let verb = if present { "add" } else { "remove" };
            return Err(os_error(&format!("default_route: {verb} the route via {gw}"), e));
        }
    }
    Ok(Response::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_address_lists_the_interfaces() {
        // SAFETY: socket(2) takes integers; the result is checked below and
        // owned by this test alone.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor no one else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let e = interface_with(&sock, "02:00:00:00:00:99").unwrap_err();
        assert!(e.message.contains("no interface has address 02:00:00:00:00:99"), "{}", e.message);
        assert!(e.message.contains("lo"), "{}", e.message);
    }

    #[test]
    fn long_names_and_bad_addresses_are_refused() {
        assert!(ifreq("a-name-longer-than-ifnamsiz").is_err());
        assert_eq!(ifreq("eth0").unwrap().ifr_name[..4], [b'e', b't', b'h', b'0'].map(|b| b as libc::c_char));
        let lo = std::fs::read_to_string("/sys/class/net/lo/address").unwrap();
        let e = configure(lo.trim(), None, true, Some("10.0.0.300"), 24).unwrap_err();
        assert_eq!(e.message, "net_config: `10.0.0.300` is not an IPv4 address");
    }
}
