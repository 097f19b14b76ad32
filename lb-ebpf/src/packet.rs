//! Packet headers as `lb_xdp` and `lb_tc_egress` read them (Ethernet II, IPv4), and
//! `lb_xdp`'s rewrites of a TCP or UDP packet's addresses.

use lb_common::SockAddr4;
use lb_common::xdp::{csum_replace2, csum_replace4};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Offset of the checksum in a TCP header.
pub const L4_CHECK_TCP: usize = 16;
/// Offset of the checksum in a UDP header.
pub const L4_CHECK_UDP: usize = 6;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    /// An IPv4 packet (`eth_type` as it lies in the frame) that is not a fragment:
    /// only whole packets and first fragments carry ports, and a first fragment
    /// translated without the rest would not reassemble, so fragments pass.
    #[inline(always)]
    pub fn is_plain_v4(&self, eth_type: u16) -> bool {
        u16::from_be(eth_type) == ETH_P_IP
            && self.ver_ihl >> 4 == 4
            && self.header_len() >= 20
            && u16::from_be(self.frag_off) & 0x3fff == 0
    }

    /// Header length in bytes (20–60: bounded for the verifier).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.ver_ihl & 0x0f) as usize) * 4
    }
}

/// The ports at the start of a TCP (or UDP) header.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// The offset of the checksum in the header of IP protocol `proto` (TCP or UDP).
#[inline(always)]
pub fn l4_check(proto: u8) -> usize {
    if proto == lb_common::xdp::IPPROTO_UDP {
        L4_CHECK_UDP
    } else {
        L4_CHECK_TCP
    }
}

/// A TCP or UDP packet in place: its IPv4 header, ports and checksum.
pub struct L4<'a> {
    pub ip: &'a mut Ipv4Hdr,
    pub ports: &'a mut Ports,
    pub check: &'a mut u16,
}

impl L4<'_> {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.ip.protocol
    }

    #[inline(always)]
    pub fn udp(&self) -> bool {
        self.ip.protocol == lb_common::xdp::IPPROTO_UDP
    }

    #[inline(always)]
    pub fn src(&self) -> SockAddr4 {
        SockAddr4::new(self.ip.saddr, u16::from_be(self.ports.src))
    }

    #[inline(always)]
    pub fn dst(&self) -> SockAddr4 {
        SockAddr4::new(self.ip.daddr, u16::from_be(self.ports.dst))
    }

    /// Rewrites the destination, both checksums updated (RFC 1624).
    #[inline(always)]
    pub fn set_dst(&mut self, to: SockAddr4) {
        let (old_ip, old_port) = (self.ip.daddr, self.ports.dst);
        self.ip.daddr = to.addr;
        self.ports.dst = to.port.to_be();
        self.update(old_ip, to.addr, old_port, self.ports.dst);
    }

    /// Rewrites the source, both checksums updated.
    #[inline(always)]
    pub fn set_src(&mut self, to: SockAddr4) {
        let (old_ip, old_port) = (self.ip.saddr, self.ports.src);
        self.ip.saddr = to.addr;
        self.ports.src = to.port.to_be();
        self.update(old_ip, to.addr, old_port, self.ports.src);
    }

    /// Takes one off the TTL, as a router must (a routing loop ends), the header's
    /// checksum updated; false: the packet has no hop left (then it is dropped).
    #[inline(always)]
    pub fn hop(&mut self) -> bool {
        if self.ip.ttl <= 1 {
            return false;
        }
        // The 16-bit word the TTL shares with the protocol, as it lies in memory.
        let old = u16::from_ne_bytes([self.ip.ttl, self.ip.protocol]);
        self.ip.ttl -= 1;
        let new = u16::from_ne_bytes([self.ip.ttl, self.ip.protocol]);
        self.ip.check = csum_replace2(self.ip.check, old, new);
        true
    }

    #[inline(always)]
    fn update(&mut self, old_ip: [u8; 4], new_ip: [u8; 4], old_port: u16, new_port: u16) {
        let (old_ip, new_ip) = (u32::from_ne_bytes(old_ip), u32::from_ne_bytes(new_ip));
        self.ip.check = csum_replace4(self.ip.check, old_ip, new_ip);
        // A UDP datagram sent without a checksum (0) stays without one.
        let udp = self.udp();
        if udp && *self.check == 0 {
            return;
        }
        // The TCP and UDP checksums cover the addresses through the pseudo-header.
        let check = csum_replace2(
            csum_replace4(*self.check, old_ip, new_ip),
            old_port,
            new_port,
        );
        // UDP sends a checksum that computes to 0 as 0xffff (0 means none).
        *self.check = if udp && check == 0 { 0xffff } else { check };
    }
}
