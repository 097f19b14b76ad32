//! Packet headers as `lb_xdp` and `lb_tc_egress` read them (Ethernet II, IPv4).

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Offset of the checksum in a TCP header.
pub const L4_CHECK_TCP: usize = 16;
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
