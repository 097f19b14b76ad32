//! `lb_xdp`, on the node's ingress interfaces: a TCP or UDP packet to a service address (a
//! NodePort, an external address) gets its flow's endpoint — for a new flow,
//! a pick by the flow's hash from the same weighted slots `connect4` draws from — and
//! its destination rewritten to it before the stack sees it (DNAT); the reply's way
//! back is remembered for `lb_tc_egress`. A flow to another node's endpoint is
//! forwarded there by this program itself, from a SNAT source of the node's, and its
//! replies translated back and sent to the client the same way (`snat`, `route`). A
//! flow to a proxy-path service goes to lb's proxy, its original destination left in
//! `LB_ORIG_DST` where the proxy reads a local client's. Anything else passes
//! untouched at once.

use aya_ebpf::{bindings::xdp_action::XDP_DROP, macros::xdp, programs::XdpContext};
use lb_common::flow_endpoint_index;
use lb_common::xdp::{
    Flow, FlowKey, IPPROTO_TCP, IPPROTO_UDP, NatKey, PASSED, TO_PROXY, flow_hash,
};
use lb_common::{ClientKey, Service, SockAddr4, StatKey, counters, mode, settings_flags};

use crate::maps::{
    LB_ORIG_DST, LB_SERVICES, LB_SETTINGS, LB_XDP_FLOWS, LB_XDP_NAT, bump, endpoint_at, live_proxy,
    slot_at,
};
use crate::packet::{ETH_HLEN, Ipv4Hdr, L4, Ports, TCP_ACK, TCP_SYN, l4_check};
use crate::route::{self, Way};
use crate::snat;

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
    let proto = ip.protocol;
    if !ip.is_plain_v4(eth_type) || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return None;
    }
    let l4 = ETH_HLEN + ip.header_len();
    let ports: *mut Ports = at(ctx, l4)?;
    let check: *mut u16 = at(ctx, l4 + l4_check(proto))?;
    // TCP's flags; UDP has none (its flows start with any datagram).
    let flags = if proto == IPPROTO_TCP {
        let flags: *const u8 = at(ctx, l4 + 13)?;
        // SAFETY: bounds checked by `at`.
        unsafe { *flags }
    } else {
        0
    };
    // SAFETY: bounds checked by `at`.
    let mut l4 = unsafe {
        L4 {
            ip,
            ports: &mut *ports,
            check: &mut *check,
        }
    };
    // Another node's endpoint answering a flow this node forwarded there.
    if snat::reply(&mut l4, flags).is_some() {
        if !l4.hop() {
            return Some(XDP_DROP);
        }
        return Some(route::send(ctx, l4.ip.saddr, l4.ip.daddr));
    }
    let dst = l4.dst();
    let service = SockAddr4::service(dst.addr, dst.port, proto);
    // SAFETY: copied out at once.
    let svc = (unsafe { LB_SERVICES.get(&service) }).copied()?;
    let key = FlowKey {
        client: l4.src(),
        service,
        proto: proto as u32,
    };
    // A SYN picks anew (a client reusing its port after a close may meet new
    // weights); a retransmitted one picks what the first did (by the hash), which is
    // not counted as a new flow but written again all the same: the flow's entries
    // live in LRUs that evict on their own, and a flow whose pick stayed while its
    // way back went would leave its endpoint's answers untranslated for good. A UDP
    // flow, which never starts anew, picks anew in a new revision (its endpoint may
    // be gone).
    let udp = proto == IPPROTO_UDP;
    let syn = !udp && flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // A whole value, never an `Option`: a None's payload is undefined, LLVM may carry
    // it in a register across a call anyway, and the verifier refuses that read
    // ("R2 !read_ok"). No flow has the default (0.0.0.0:0) backend.
    // SAFETY: copied out at once.
    let known = (unsafe { LB_XDP_FLOWS.get(&key) })
        .copied()
        .unwrap_or_default();
    let flow = if known != Flow::default() && !syn && !(udp && known.revision != svc.revision) {
        known
    } else {
        match new_flow(ctx, &key, &svc)? {
            Ok(flow) => {
                remember(&key, &flow)?;
                if known != flow {
                    match flow.subset {
                        TO_PROXY => bump(counters::XDP_PROXY_FLOWS),
                        PASSED => bump(counters::XDP_REMOTE_PASSED),
                        subset => {
                            count(service, subset, |s| s.xdp_flows += 1);
                            if flow.snat.port != 0 {
                                bump(counters::XDP_REMOTE_FLOWS);
                            }
                        }
                    }
                }
                flow
            }
            Err(refused) => {
                match refused {
                    Refused::NoEndpoint(subset) => count(service, subset, |s| s.xdp_dropped += 1),
                    Refused::SnatExhausted => bump(counters::XDP_SNAT_EXHAUSTED),
                    // Counted by `route`.
                    Refused::Unresolved => {}
                }
                return Some(XDP_DROP);
            }
        }
    };
    match flow.subset {
        PASSED => return None,
        TO_PROXY => {}
        subset => count(service, subset, |s| s.xdp_packets += 1),
    }
    if flow.snat.port != 0 {
        if !l4.hop() {
            return Some(XDP_DROP);
        }
        if snat::forward(&mut l4, &key, &flow, flags).is_none() {
            // The port went to another flow while this one was idle: a UDP flow is
            // picked anew at its next datagram (a TCP one cannot go on anyway).
            if udp {
                let _ = LB_XDP_FLOWS.remove(&key);
            }
            return Some(XDP_DROP);
        }
        return Some(route::send(ctx, flow.snat.addr, flow.backend.addr));
    }
    l4.set_dst(flow.backend);
    Some(XDP_PASS)
}

/// Why a new flow's packet is dropped.
enum Refused {
    /// The picked subset has no endpoint (its id).
    NoEndpoint(u32),
    /// The way to the endpoint's node is not resolved yet.
    Unresolved,
    /// Every SNAT port the flow could take is in use.
    SnatExhausted,
}

/// Where a new flow goes: lb's proxy for a proxy-path service (while it listens;
/// else the kernel split, as `connect4` falls back), else [`pick`]'s endpoint, by the
/// way the node reaches it (see [`Way`]). None: not lb's (passed untouched).
#[inline(always)]
fn new_flow(ctx: &XdpContext, key: &FlowKey, svc: &Service) -> Option<Result<Flow, Refused>> {
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
                    ..Flow::default()
                }));
            }
            None => bump(counters::PROXY_FALLBACKS),
        }
    }
    let hash = flow_hash(key);
    let mut flow = match pick(key, hash, svc)? {
        Ok(flow) => flow,
        Err(subset) => return Some(Err(Refused::NoEndpoint(subset))),
    };
    match route::way(ctx, key.client.addr, flow.backend.addr) {
        Way::Local => {}
        Way::Elsewhere => flow.subset = PASSED,
        Way::Unresolved => return Some(Err(Refused::Unresolved)),
        Way::Snat(node) => match snat::allocate(key, hash, flow.backend, node) {
            Some(source) => flow.snat = source,
            None => return Some(Err(Refused::SnatExhausted)),
        },
    }
    Some(Ok(flow))
}

/// Records a new flow, its replies' way back, and for the proxy what the client
/// dialled (a passed flow only itself). None: a map refused it (then nothing is
/// translated).
#[inline(always)]
fn remember(key: &FlowKey, flow: &Flow) -> Option<()> {
    // A passed flow is not translated; a SNAT flow's way back is its SNAT port's.
    if flow.subset == PASSED || flow.snat.port != 0 {
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
fn pick(key: &FlowKey, hash: u32, svc: &Service) -> Option<Result<Flow, u32>> {
    if svc.slot_count == 0 {
        return None;
    }
    let slot = slot_at(key.service, svc.revision, hash % svc.slot_count)?;
    if slot.endpoint_count == 0 {
        return Some(Err(slot.subset));
    }
    let index = flow_endpoint_index(hash, &slot);
    let backend = endpoint_at(key.service, svc.revision, slot.subset, index)?;
    Some(Ok(Flow {
        backend,
        subset: slot.subset,
        revision: svc.revision,
        ..Flow::default()
    }))
}

#[inline(always)]
fn count(service: SockAddr4, subset: u32, f: impl FnOnce(&mut lb_common::Stats)) {
    crate::maps::count(&StatKey { service, subset }, f);
}
