//! Where `lb_xdp` sends a packet, from the kernel's routing and neighbour tables
//! (`bpf_fib_lookup`): whether a new flow's endpoint runs on this node, and the
//! link-layer way out for a packet `lb_xdp` forwards itself.

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::counters;
use lb_common::xdp::IPPROTO_TCP;

use crate::maps::{LB_XDP_IFACES, LB_XDP_NEIGH, bump};

/// How a new flow reaches its endpoint.
pub enum Way {
    /// On this node (a pod behind a bridge or veth of its own): translated and
    /// passed to the stack, replies translated back by `lb_tc_egress`.
    Local,
    /// Another node's, out of an `--xdp-iface` interface whose address (here) is
    /// the flow's new source: forwarded by `lb_xdp` both ways.
    Snat([u8; 4]),
    /// Another node's, behind an interface lb does not serve: left to the stack.
    Elsewhere,
    /// Another node's, but its next hop has no link-layer address yet (asked for).
    Unresolved,
}

/// A lookup from `src` to `dst` as if the packet had come in on the packet's own
/// interface: the helper's answer and what it filled in.
#[inline(always)]
fn lookup(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4]) -> (i64, bpf_fib_lookup) {
    // SAFETY: a plain C struct of integers and unions of integers: all zeroes is valid.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = 2; // AF_INET
    p.l4_protocol = IPPROTO_TCP;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: `p` is a bpf_fib_lookup of the size given, on this stack frame.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut p, size_of::<bpf_fib_lookup>() as i32, 0) };
    (rc, p)
}

/// The next hop a lookup ended at (the gateway, or the destination itself on-link).
#[inline(always)]
fn next_hop(p: &bpf_fib_lookup) -> [u8; 4] {
    // SAFETY: the union's IPv4 member, which the lookup wrote.
    unsafe { p.__bindgen_anon_4.ipv4_dst }.to_ne_bytes()
}

/// Leaves an unresolved next hop for the daemon (XDP cannot resolve it), counted.
#[inline(always)]
fn want_neighbour(p: &bpf_fib_lookup) {
    let _ = LB_XDP_NEIGH.insert(&next_hop(p), &p.ifindex, 0);
    bump(counters::XDP_NO_NEIGH);
}

/// How a new flow from `client` reaches `backend`.
#[inline(always)]
pub fn way(ctx: &XdpContext, client: [u8; 4], backend: [u8; 4]) -> Way {
    let (rc, p) = lookup(ctx, client, backend);
    let resolved = rc == BPF_FIB_LKUP_RET_SUCCESS as i64;
    if !resolved && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // No route (or a blackhole, a local address): the stack's to answer.
        return Way::Local;
    }
    // A whole value, never an `Option` (see `lb_xdp`'s flow lookup).
    // SAFETY: copied out at once.
    let addr = (unsafe { LB_XDP_IFACES.get(&p.ifindex) })
        .copied()
        .unwrap_or_default();
    if addr != [0; 4] {
        if !resolved {
            want_neighbour(&p);
            return Way::Unresolved;
        }
        return Way::Snat(addr);
    }
    if next_hop(&p) != backend || p.ifindex == ctx.ingress_ifindex() as u32 {
        Way::Elsewhere
    } else {
        Way::Local
    }
}

/// Sends a packet `lb_xdp` translated from `src` to `dst` on its way: out of the
/// interface the routing table says, to the next hop's link-layer address (back out
/// of the interface it came in by: XDP_TX). No route or no link-layer address yet:
/// dropped (TCP sends it again; the daemon resolves the address meanwhile).
#[inline(always)]
pub fn send(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4]) -> u32 {
    let (rc, p) = lookup(ctx, src, dst);
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            want_neighbour(&p);
        }
        return XDP_DROP;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 12 > end {
        return XDP_DROP;
    }
    // SAFETY: the first 12 bytes of the frame (checked above): its two MAC addresses.
    let eth = unsafe { &mut *(start as *mut [[u8; 6]; 2]) };
    // SAFETY: the union's MAC member, which a successful lookup wrote.
    let macs = unsafe { p.__bindgen_anon_6.__bindgen_anon_2 };
    eth[0] = macs.dmac;
    eth[1] = macs.smac;
    if p.ifindex == ctx.ingress_ifindex() as u32 {
        return XDP_TX;
    }
    // SAFETY: a helper call with plain values; XDP_REDIRECT, or XDP_ABORTED if the
    // interface cannot be redirected to.
    unsafe { bpf_redirect(p.ifindex, 0) as u32 }
}
