//! North-south flows to another node's endpoint: `lb_xdp` gives each a source of the
//! node's (its address on the way there, a port of `SNAT_PORTS`), so the endpoint's
//! replies come back here, where `lb_xdp` translates them back to the client and
//! sends them on itself. The port is taken per endpoint in `LB_XDP_SNAT`, which also
//! leads the replies back.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use lb_common::SockAddr4;
use lb_common::xdp::{
    Flow, FlowKey, IPPROTO_UDP, SNAT_PORTS, SNAT_PROBES, SnatBack, SnatKey, snat_displaceable,
    snat_flags, snat_port, snat_reusable,
};

use crate::maps::LB_XDP_SNAT;
use crate::packet::L4;

/// The flags a SNAT port of a flow of IP protocol `proto` starts with.
#[inline(always)]
fn proto_flags(proto: u32) -> u32 {
    if proto == IPPROTO_UDP as u32 {
        snat_flags::UDP
    } else {
        0
    }
}

/// A SNAT source for a new flow `key` to `backend` leaving by the node's address
/// `node`: the first of its ports (by its hash) that is free, already its own, or
/// free again (see `snat_reusable`); if none, the one of them held longest by a
/// flow its endpoint never answered (`snat_displaceable`: a SYN flood takes every
/// port, and must not keep them from the clients that complete). None: all held by
/// answered flows.
#[inline(always)]
pub fn allocate(key: &FlowKey, hash: u32, backend: SockAddr4, node: [u8; 4]) -> Option<SockAddr4> {
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let want = SnatBack {
        client: key.client,
        service: key.service,
        seen_ns: now,
        flags: proto_flags(key.proto),
        _pad: 0,
    };
    let at = |probe| SnatKey {
        node: SockAddr4::new(node, snat_port(hash, probe)),
        backend,
        proto: key.proto,
    };
    // The displaceable probe held longest: (taken at, probe); u64::MAX: none.
    let mut oldest = (u64::MAX, 0);
    for probe in 0..SNAT_PROBES {
        let snat = at(probe);
        // A whole value, never an `Option` (see `lb_xdp`'s flow lookup).
        // SAFETY: copied out at once.
        let held = (unsafe { LB_XDP_SNAT.get(&snat) })
            .copied()
            .unwrap_or_default();
        let taken = if held == SnatBack::default() {
            // Another CPU's flow may take it first.
            LB_XDP_SNAT.insert(&snat, &want, BPF_NOEXIST as u64).is_ok()
        } else if snat_reusable(&held, &want, now) {
            LB_XDP_SNAT.insert(&snat, &want, 0).is_ok()
        } else {
            if snat_displaceable(&held) && held.seen_ns < oldest.0 {
                oldest = (held.seen_ns, probe);
            }
            false
        };
        if taken {
            return Some(snat.node);
        }
    }
    if oldest.0 == u64::MAX {
        return None;
    }
    let snat = at(oldest.1);
    LB_XDP_SNAT.insert(&snat, &want, 0).ok()?;
    Some(snat.node)
}

/// An endpoint's reply to a SNAT port: translated back (from the service address the
/// client dialled, to the client), the flow's entry refreshed. None: not one.
#[inline(always)]
pub fn reply(l4: &mut L4, flags: u8) -> Option<()> {
    if !SNAT_PORTS.contains(&u16::from_be(l4.ports.dst)) {
        return None;
    }
    let key = SnatKey {
        node: l4.dst(),
        backend: l4.src(),
        proto: l4.proto() as u32,
    };
    let back = LB_XDP_SNAT.get_ptr_mut(&key)?;
    // SAFETY: the map's value, shared by the CPUs that see this flow's packets: plain
    // stores of a timestamp and a flag, a lost one harmless.
    let (client, service) = unsafe {
        (*back).seen_ns = bpf_ktime_get_ns();
        (*back).flags |= snat_flags::bits(flags, false);
        ((*back).client, (*back).service)
    };
    l4.set_src(service);
    l4.set_dst(client);
    Some(())
}

/// A SNAT flow's packet from its client (`key`): translated to the endpoint from the
/// flow's SNAT source; its FIN or RST is noted on the port's flow (see
/// `snat_flags`). The port must still be this flow's: one taken by another flow since
/// (this one idle for ten minutes, or closed) is not written into — None, the packet
/// is dropped. One the LRU forgot is taken back if still free.
#[inline(always)]
pub fn forward(l4: &mut L4, key: &FlowKey, flow: &Flow, flags: u8) -> Option<()> {
    let snat = SnatKey {
        node: flow.snat,
        backend: flow.backend,
        proto: key.proto,
    };
    let bits = snat_flags::bits(flags, true);
    match LB_XDP_SNAT.get_ptr_mut(&snat) {
        // SAFETY: as in `reply`.
        Some(back) => unsafe {
            if (*back).client != key.client || (*back).service != key.service {
                return None;
            }
            (*back).flags |= bits;
        },
        None => {
            let back = SnatBack {
                client: key.client,
                service: key.service,
                // SAFETY: a helper call without arguments.
                seen_ns: unsafe { bpf_ktime_get_ns() },
                flags: bits | snat_flags::ANSWERED | proto_flags(key.proto),
                _pad: 0,
            };
            LB_XDP_SNAT.insert(&snat, &back, BPF_NOEXIST as u64).ok()?;
        }
    }
    l4.set_dst(flow.backend);
    l4.set_src(flow.snat);
    Some(())
}
