//! `NetConfig`: the guest end of provium's automatic addressing. The host
//! names an interface by its Ethernet address (it chose it), and the agent
//! finds it in `/sys/class/net`, gives it an IPv4 address and netmask and
//! brings it up — the kernel then adds the subnet's route — or brings it
//! down. Plain `ioctl`s on an `AF_INET` socket, so the guest needs no `ip`
//! or `ifconfig`.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use provium_protocol::{OpError, OpErrorKind, Response};

use crate::sys::os_error;

fn bad(message: String) -> OpError {
    OpError { kind: OpErrorKind::BadRequest, errno: None, message }
}

/// The interface whose address is `mac` (lower-case `aa:bb:…`).
fn interface_with(mac: &str) -> Result<String, OpError> {
    let dir = std::fs::read_dir("/sys/class/net").map_err(|e| os_error("net_config: /sys/class/net", e))?;
    let mut names = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim().eq_ignore_ascii_case(mac) {
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

pub fn configure(mac: &str, up: bool, address: Option<&str>, prefix: u8) -> Result<Response, OpError> {
    let name = interface_with(mac)?;
    // SAFETY: socket(2) takes integers only; a non-negative result is a new
    // descriptor this function alone owns, so OwnedFd may close it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_error("net_config: socket", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_address_lists_the_interfaces() {
        let e = interface_with("02:00:00:00:00:99").unwrap_err();
        assert!(e.message.contains("no interface has address 02:00:00:00:00:99"), "{}", e.message);
        assert!(e.message.contains("lo"), "{}", e.message);
    }

    #[test]
    fn long_names_and_bad_addresses_are_refused() {
        assert!(ifreq("a-name-longer-than-ifnamsiz").is_err());
        assert_eq!(ifreq("eth0").unwrap().ifr_name[..4], [b'e', b't', b'h', b'0'].map(|b| b as libc::c_char));
        let lo = std::fs::read_to_string("/sys/class/net/lo/address").unwrap();
        let e = configure(lo.trim(), true, Some("10.0.0.300"), 24).unwrap_err();
        assert_eq!(e.message, "net_config: `10.0.0.300` is not an IPv4 address");
    }
}
