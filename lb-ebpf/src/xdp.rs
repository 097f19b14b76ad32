//! `lb_xdp`, on the node's ingress interfaces: a TCP packet to a service address (a
//! NodePort, an external address) gets its flow's endpoint — for a new flow,
//! a pick by the flow's hash from the same weighted slots `connect4` draws from — and
//! its destination rewritten to it before the stack sees it (DNAT); the reply's way
//! back is remembered for `lb_tc_egress`. A flow to a proxy-path service goes to lb's
//! proxy the same way, its original destination left in `LB_ORIG_DST` where the proxy
//! reads a local client's. Anything else passes untouched at once.

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action::XDP_DROP,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::endpoint_pick;
use lb_common::xdp::{
    Flow, FlowKey, IPPROTO_TCP, NatKey, PASSED, TO_PROXY, csum_replace2, csum_replace4, flow_hash,
};
use lb_common::{
    ClientKey, EndpointKey, Service, SlotKey, SockAddr4, StatKey, counters, mode, settings_flags,
};

use crate::maps::{
    LB_ENDPOINTS, LB_ORIG_DST, LB_SERVICES, LB_SETTINGS, LB_SLOTS, LB_XDP_FLOWS, LB_XDP_NAT, bump,
    live_proxy,
};
use crate::packet::{ETH_HLEN, Ipv4Hdr, L4_CHECK_TCP, Ports, TCP_ACK, TCP_SYN};

const XDP_PASS: u32 = aya_ebpf::bindings::xdp_action::XDP_PASS;

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    try_xdp(&ctx).unwrap_or(XDP_PASS)
}

/// A pointer to a `T` at `offset` of the packet, if the packet holds it whole.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// None: not lb's packet (passed).
#[inline(always)]
fn try_xdp(ctx: &XdpContext) -> Option<u32> {
    let ip: *mut Ipv4Hdr = at(ctx, ETH_HLEN)?;
    let eth_type: *const u16 = at(ctx, 12)?;
    // SAFETY: bounds checked by `at`.
    let (eth_type, ip) = unsafe { (*eth_type, &mut *ip) };
    // lb serves TCP only (connect4 steers TCP only, and a service is keyed by
    // address and port, not protocol), so UDP passes like anything not lb's.
    if !ip.is_plain_v4(eth_type) || ip.protocol != IPPROTO_TCP {
        return None;
    }
    let l4 = ETH_HLEN + ip.header_len();
    let ports: *mut Ports = at(ctx, l4)?;
    // SAFETY: bounds checked by `at`.
    let ports = unsafe { &mut *ports };
    let service = SockAddr4::new(ip.daddr, u16::from_be(ports.dst));
    // SAFETY: copied out at once.
    let svc = (unsafe { LB_SERVICES.get(&service) }).copied()?;
    let check: *mut u16 = at(ctx, l4 + L4_CHECK_TCP)?;
    let flags: *const u8 = at(ctx, l4 + 13)?;
    let key = FlowKey {
        client: SockAddr4::new(ip.saddr, u16::from_be(ports.src)),
        service,
        proto: IPPROTO_TCP as u32,
    };
    // A SYN picks anew (a client reusing its port after a close may meet new
    // weights); a retransmitted one picks what the first did (by the hash), which is
    // then neither written again nor counted as a new flow.
    // SAFETY: bounds checked by `at`.
    let syn = unsafe { *flags & (TCP_SYN | TCP_ACK) == TCP_SYN };
    // A whole value, never an `Option`: a None's payload is undefined, LLVM may carry
    // it in a register across a call anyway, and the verifier refuses that read
    // ("R2 !read_ok"). No flow has the default (0.0.0.0:0) backend.
    // SAFETY: copied out at once.
    let known = (unsafe { LB_XDP_FLOWS.get(&key) })
        .copied()
        .unwrap_or_default();
    let flow = if known != Flow::default() && !syn {
        known
    } else {
        match new_flow(&key, &svc)? {
            Ok(mut flow) => {
                if flow.subset != TO_PROXY && on_another_node(ctx, key.client, flow.backend) {
                    flow.subset = PASSED;
                }
                if known != flow {
                    remember(&key, &flow)?;
                    match flow.subset {
                        TO_PROXY => bump(counters::XDP_PROXY_FLOWS),
                        PASSED => bump(counters::XDP_REMOTE_PASSED),
                        subset => count(service, subset, |s| s.xdp_flows += 1),
                    }
                }
                flow
            }
            Err(subset) => {
                count(service, subset, |s| s.xdp_dropped += 1);
                return Some(XDP_DROP);
            }
        }
    };
    match flow.subset {
        PASSED => return None,
        TO_PROXY => {}
        subset => count(service, subset, |s| s.xdp_packets += 1),
    }
    let (old_ip, new_ip) = (
        u32::from_ne_bytes(ip.daddr),
        u32::from_ne_bytes(flow.backend.addr),
    );
    let (old_port, new_port) = (ports.dst, flow.backend.port.to_be());
    ip.daddr = flow.backend.addr;
    ip.check = csum_replace4(ip.check, old_ip, new_ip);
    ports.dst = new_port;
    // SAFETY: bounds checked by `at`.
    let check = unsafe { &mut *check };
    *check = csum_replace2(csum_replace4(*check, old_ip, new_ip), old_port, new_port);
    Some(XDP_PASS)
}

/// Where a new flow goes: lb's proxy for a proxy-path service (while it listens;
/// else the kernel split, as `connect4` falls back), else [`pick`]'s endpoint.
#[inline(always)]
fn new_flow(key: &FlowKey, svc: &Service) -> Option<Result<Flow, u32>> {
    if svc.mode == mode::PROXY {
        match live_proxy(false) {
            Some(proxy) => {
                let every = LB_SETTINGS
                    .get(0)
                    .is_some_and(|s| s.flags & settings_flags::PROXY_ON_EVERY_ADDRESS != 0);
                // A listener on every address is reached at the address dialled (the
                // node's); one on loopback only is out of an outside client's reach.
                let backend = if every {
                    SockAddr4::new(key.service.addr, proxy.port)
                } else if proxy.addr[0] == 127 {
                    bump(counters::XDP_PROXY_PASSED);
                    return None;
                } else {
                    proxy
                };
                return Some(Ok(Flow {
                    backend,
                    subset: TO_PROXY,
                    _pad: 0,
                }));
            }
            None => bump(counters::PROXY_FALLBACKS),
        }
    }
    pick(key, svc)
}

/// Whether the node reaches `backend` through a gateway, or out of the interface the
/// packet came in by: another node's endpoint, whose replies would go to the client
/// without passing here to be translated back.
#[inline(always)]
fn on_another_node(ctx: &XdpContext, client: SockAddr4, backend: SockAddr4) -> bool {
    // SAFETY: a plain C struct of integers and unions of integers: all zeroes is valid.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = 2; // AF_INET
    p.l4_protocol = IPPROTO_TCP;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(client.addr);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(backend.addr);
    let ingress = p.ifindex;
    // SAFETY: `p` is a bpf_fib_lookup of the size given, on this stack frame.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut p, size_of::<bpf_fib_lookup>() as i32, 0) };
    // On a route with a gateway the lookup leaves the gateway's address as the
    // destination.
    // SAFETY: the union's IPv4 member, which the lookup wrote.
    let via_gateway = unsafe { p.__bindgen_anon_4.ipv4_dst } != u32::from_ne_bytes(backend.addr);
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64)
        && (via_gateway || p.ifindex == ingress)
}

/// Records a new flow, its replies' way back, and for the proxy what the client
/// dialled (a passed flow only itself). None: a map refused it (then nothing is
/// translated).
#[inline(always)]
fn remember(key: &FlowKey, flow: &Flow) -> Option<()> {
    if flow.subset == PASSED {
        return LB_XDP_FLOWS.insert(key, flow, 0).ok();
    }
    let back = NatKey {
        backend: flow.backend,
        client: key.client,
        proto: key.proto,
    };
    LB_XDP_NAT.insert(&back, &key.service, 0).ok()?;
    if flow.subset == TO_PROXY {
        let client = ClientKey { client: key.client };
        LB_ORIG_DST.insert(&client, &key.service, 0).ok()?;
    }
    LB_XDP_FLOWS.insert(key, flow, 0).ok()
}

/// A new flow's endpoint: Ok(flow), Err(subset) when the picked subset has none;
/// None when the service has no slots (passed untouched, as `connect4` leaves it).
#[inline(always)]
fn pick(key: &FlowKey, svc: &Service) -> Option<Result<Flow, u32>> {
    if svc.slot_count == 0 {
        return None;
    }
    let hash = flow_hash(key);
    let slot_key = SlotKey {
        service: key.service,
        revision: svc.revision,
        slot: hash % svc.slot_count,
    };
    // SAFETY: copied out at once.
    let slot = (unsafe { LB_SLOTS.get(&slot_key) }).copied()?;
    if slot.endpoint_count == 0 {
        return Some(Err(slot.subset));
    }
    let ep_key = EndpointKey {
        service: key.service,
        revision: svc.revision,
        subset: slot.subset,
        index: endpoint_pick(hash, slot.endpoint_count),
    };
    // SAFETY: copied out at once.
    let backend = (unsafe { LB_ENDPOINTS.get(&ep_key) }).copied()?;
    Some(Ok(Flow {
        backend,
        subset: slot.subset,
        _pad: 0,
    }))
}

#[inline(always)]
fn count(service: SockAddr4, subset: u32, f: impl FnOnce(&mut lb_common::Stats)) {
    crate::maps::count(&StatKey { service, subset }, f);
}
