//! The gateways of the kernel's routes out of the interfaces `lb_xdp` serves, read
//! from the routing table over netlink. `lb_xdp` forwards a flow to another node's pod
//! by the neighbour table, which XDP cannot fill: a node's first SYN towards a node it
//! never spoke to was dropped while the daemon asked for that node's link-layer
//! address, and the client's retransmit went through a second later (or timed out, for
//! a client that waits less). The daemon asks for each gateway as its route appears,
//! before any flow needs it (`north_south::Neighbours`).

use std::io;
use std::net::Ipv4Addr;

/// Netlink's and rtnetlink's numbers (linux/netlink.h, linux/rtnetlink.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTMSG_LEN: usize = 12;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
/// `struct rtnexthop`: length, flags, hops, interface index.
const RTNH_LEN: usize = 8;

/// The IPv4 gateways of every routing table's routes whose way out is one of
/// `ifaces` (interface indexes), each once, sorted (a cluster's nodes can be
/// thousands).
pub fn of(ifaces: &[u32]) -> io::Result<Vec<Ipv4Addr>> {
    let sock = Netlink::open()?;
    sock.request_dump()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.recv(&mut buf)?;
        if n == 0 || parse(&buf[..n], ifaces, &mut out)? {
            out.sort_unstable();
            out.dedup();
            return Ok(out);
        }
    }
}

/// Reads one datagram of a route dump into `out`. Returns whether the dump is done.
fn parse(mut buf: &[u8], ifaces: &[u32], out: &mut Vec<Ipv4Addr>) -> io::Result<bool> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a truncated netlink message",
            ));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = (buf.get(16..20))
                    .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                // 0: an acknowledgement, the end.
                if code == 0 {
                    return Ok(true);
                }
                return Err(io::Error::from_raw_os_error(-code));
            }
            RTM_NEWROUTE if len >= NLMSG_HDRLEN + RTMSG_LEN => {
                let family = buf[NLMSG_HDRLEN];
                if family == libc::AF_INET as u8 {
                    route(&buf[NLMSG_HDRLEN + RTMSG_LEN..len], ifaces, out);
                }
            }
            _ => {}
        }
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(false)
}

/// One route's attributes: its gateway if it leaves by one of `ifaces`, and each of
/// its multipath next hops' that does.
fn route(attrs: &[u8], ifaces: &[u32], out: &mut Vec<Ipv4Addr>) {
    let (mut oif, mut gateway) = (None, None);
    for (kind, value) in attributes(attrs) {
        match kind {
            RTA_OIF if value.len() == 4 => {
                oif = Some(u32::from_ne_bytes(value.try_into().expect("4")))
            }
            RTA_GATEWAY if value.len() == 4 => {
                gateway = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]))
            }
            RTA_MULTIPATH => {
                let mut hops = value;
                while hops.len() >= RTNH_LEN {
                    let len = u16::from_ne_bytes([hops[0], hops[1]]) as usize;
                    if len < RTNH_LEN || len > hops.len() {
                        break;
                    }
                    let index = u32::from_ne_bytes(hops[4..8].try_into().expect("4 bytes"));
                    let gateway = attributes(&hops[RTNH_LEN..len])
                        .find(|(k, v)| *k == RTA_GATEWAY && v.len() == 4)
                        .map(|(_, v)| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
                    add(gateway, Some(index), ifaces, out);
                    hops = &hops[align(len).min(hops.len())..];
                }
            }
            _ => {}
        }
    }
    add(gateway, oif, ifaces, out);
}

fn add(gateway: Option<Ipv4Addr>, oif: Option<u32>, ifaces: &[u32], out: &mut Vec<Ipv4Addr>) {
    if let (Some(g), Some(i)) = (gateway, oif)
        && ifaces.contains(&i)
    {
        out.push(g);
    }
}

/// A run of `struct rtattr`s: (type, value).
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]);
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((kind, value))
    })
}

/// Netlink's 4-byte alignment.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A NETLINK_ROUTE socket, closed when dropped.
struct Netlink(std::os::fd::OwnedFd);

impl Netlink {
    fn open() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: a plain socket call; the descriptor is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just opened and owned by nobody else.
        let sock = Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        // The daemon's thread reads the answer: never wait on it for long.
        let limit = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: `limit` is a timeval, valid for its size.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const limit).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    /// Asks for every IPv4 route (an `nlmsghdr` and an `rtmsg` of family AF_INET).
    fn request_dump(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut req = [0u8; NLMSG_HDRLEN + RTMSG_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDRLEN + RTMSG_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        req[NLMSG_HDRLEN] = libc::AF_INET as u8;
        // SAFETY: `req` is valid for its length; the kernel is the destination.
        let n = unsafe { libc::send(self.0.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of `kind` whose body is `body`, padded.
    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m.resize(align(len), 0);
        m
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut a = (len as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align(len), 0);
        a
    }

    fn route_msg(family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; RTMSG_LEN];
        body[0] = family;
        for a in attrs {
            body.extend_from_slice(a);
        }
        message(RTM_NEWROUTE, &body)
    }

    #[test]
    fn gateways_out_of_the_served_interfaces_only() {
        let oif = |i: u32| attr(RTA_OIF, &i.to_ne_bytes());
        let gw = |a: [u8; 4]| attr(RTA_GATEWAY, &a);
        // Two next hops of an ECMP route: one out of interface 3, one out of 9.
        let mut hops = Vec::new();
        for (index, g) in [(3u32, [10, 0, 0, 7]), (9, [10, 0, 9, 1])] {
            let a = gw(g);
            let len = RTNH_LEN + a.len();
            hops.extend_from_slice(&(len as u16).to_ne_bytes());
            hops.extend_from_slice(&[0, 0]);
            hops.extend_from_slice(&index.to_ne_bytes());
            hops.extend_from_slice(&a);
        }
        let mut dump = Vec::new();
        dump.extend(route_msg(2, &[oif(3), gw([10, 251, 0, 2])]));
        dump.extend(route_msg(2, &[oif(3), gw([10, 251, 0, 2])]));
        // A route out of another interface, one without a gateway (on-link), an IPv6
        // one out of a served interface.
        dump.extend(route_msg(2, &[oif(9), gw([192, 168, 1, 1])]));
        dump.extend(route_msg(2, &[oif(3)]));
        dump.extend(route_msg(10, &[oif(3), attr(RTA_GATEWAY, &[0xfe; 16])]));
        dump.extend(route_msg(2, &[attr(RTA_MULTIPATH, &hops)]));
        let mut out = Vec::new();
        assert!(
            !parse(&dump, &[3, 4], &mut out).unwrap(),
            "no NLMSG_DONE yet"
        );
        assert_eq!(
            out,
            [
                Ipv4Addr::new(10, 251, 0, 2),
                Ipv4Addr::new(10, 251, 0, 2),
                Ipv4Addr::new(10, 0, 0, 7)
            ]
        );
        assert!(parse(&message(NLMSG_DONE, &[0; 4]), &[3], &mut out).unwrap());
        let refused = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        let err = parse(&refused, &[3], &mut out).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // A length past the datagram is an error, not a read out of bounds.
        let mut cut = route_msg(2, &[oif(3), gw([10, 251, 0, 3])]);
        cut.truncate(20);
        assert!(parse(&cut, &[3], &mut out).is_err());
    }

    #[test]
    fn the_kernel_answers_a_route_dump() {
        // Loopback's index is 1; its routes (local table) have no gateway.
        assert_eq!(of(&[1]).unwrap(), Vec::<Ipv4Addr>::new());
    }
}
