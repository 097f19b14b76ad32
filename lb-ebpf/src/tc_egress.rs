//! `lb_tc_egress`, on the way out of the interfaces `lb_xdp` serves: an endpoint's
//! reply to a north-south client gets its source set back to the service address the
//! client dialled (the reverse of `lb_xdp`'s translation, from `LB_XDP_NAT`). The
//! checksums are updated by the kernel's helpers, which also handle a reply whose
//! checksum is still to be computed by the device (CHECKSUM_PARTIAL: a local pod's).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    macros::classifier,
    programs::TcContext,
};
use lb_common::SockAddr4;
use lb_common::xdp::{IPPROTO_TCP, IPPROTO_UDP, NatKey};

use crate::maps::LB_XDP_NAT;
use crate::packet::{ETH_HLEN, Ipv4Hdr, Ports, l4_check};

/// TCX_NEXT: the packet goes on to the next program, or out (never ends the chain for
/// another's program).
const NEXT: i32 = -1;
/// `Ipv4Hdr` offsets.
const IP_CHECK: usize = ETH_HLEN + 10;
const IP_SADDR: usize = ETH_HLEN + 12;

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    let _ = try_egress(&ctx);
    NEXT
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Option<()> {
    let eth_type: u16 = ctx.load(12).ok()?;
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN).ok()?;
    let proto = ip.protocol;
    if !ip.is_plain_v4(eth_type) || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return None;
    }
    let l4 = ETH_HLEN + ip.header_len();
    let ports: Ports = ctx.load(l4).ok()?;
    let key = NatKey {
        backend: SockAddr4::new(ip.saddr, u16::from_be(ports.src)),
        client: SockAddr4::new(ip.daddr, u16::from_be(ports.dst)),
        proto: proto as u32,
    };
    // SAFETY: copied out at once.
    let service = (unsafe { LB_XDP_NAT.get(&key) }).copied()?;
    let (old_ip, new_ip) = (
        u32::from_ne_bytes(ip.saddr),
        u32::from_ne_bytes(service.addr),
    );
    let (old_port, new_port) = (ports.src, service.port.to_be());
    let l4_check = l4 + l4_check(proto);
    // UDP: a datagram without a checksum (0) keeps none, and one that computes to 0
    // is sent as 0xffff (the helper does both with MARK_MANGLED_0).
    let udp = if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    ctx.l4_csum_replace(
        l4_check,
        old_ip as u64,
        new_ip as u64,
        udp | BPF_F_PSEUDO_HDR as u64 | 4,
    )
    .ok()?;
    ctx.l4_csum_replace(l4_check, old_port as u64, new_port as u64, udp | 2)
        .ok()?;
    ctx.l3_csum_replace(IP_CHECK, old_ip as u64, new_ip as u64, 4)
        .ok()?;
    ctx.store(IP_SADDR, &service.addr, 0).ok()?;
    ctx.store(l4, &new_port, 0).ok()?;
    Some(())
}
