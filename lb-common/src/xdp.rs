//! The north-south path (`lb_xdp` on the node's ingress interfaces, `lb_tc_egress`
//! on their way out): a packet to a service address arriving from outside the node is
//! given an endpoint by the same weighted slots as `connect4`, remembered per flow,
//! and translated (DNAT) before the stack sees it; the endpoint's replies are
//! translated back as they leave the node. Pure functions, shared by the programs and
//! the tests.

use crate::SockAddr4;
#[cfg(test)]
use crate::endpoint_pick;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `LB_XDP_FLOWS` key: a flow as it arrives, client → service address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: SockAddr4,
    pub service: SockAddr4,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub proto: u32,
}

/// `LB_XDP_FLOWS` value: where the flow goes for its life (a new revision of the
/// weights applies to new flows only; a UDP flow, which has no start, picks anew in
/// a new revision — with Maglev, mostly the same endpoint).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend: SockAddr4,
    /// The flow's source towards an endpoint on another node (the node's address on
    /// the way there and a port of [`SNAT_PORTS`]); port 0: none (a local endpoint,
    /// whose replies `lb_tc_egress` translates back).
    pub snat: SockAddr4,
    /// The subset's id inside its service (for the counters); [`TO_PROXY`]: the
    /// backend is lb's proxy.
    pub subset: u32,
    /// The service's revision when the flow was picked.
    pub revision: u32,
}

/// `Flow::subset` of a flow handed to the proxy.
pub const TO_PROXY: u32 = u32::MAX;
/// `Flow::subset` of a flow whose picked endpoint runs on another node behind an
/// interface lb does not serve: left to the stack untranslated for its life (lb
/// would not see its replies).
pub const PASSED: u32 = u32::MAX - 1;

/// `LB_XDP_NAT` key: a reply as it leaves the node, endpoint → client; the value is
/// the service address the client dialled (the reply's source is set back to it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub backend: SockAddr4,
    pub client: SockAddr4,
    pub proto: u32,
}

/// `LB_XDP_SNAT` key: a packet between the node and another node's endpoint, as
/// the endpoint's replies arrive (to the node's address and SNAT port, from the
/// endpoint).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnatKey {
    pub node: SockAddr4,
    pub backend: SockAddr4,
    pub proto: u32,
}

/// `LB_XDP_SNAT` value: whose flow the SNAT port carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatBack {
    pub client: SockAddr4,
    /// The address the client dialled: the replies' source.
    pub service: SockAddr4,
    /// When the endpoint last answered, or the port was taken (`bpf_ktime_get_ns`).
    pub seen_ns: u64,
    /// [`snat_flags`]: whether the endpoint answered, the FINs and RSTs seen.
    pub flags: u32,
    pub _pad: u32,
}

/// `SnatBack::flags`. A SNAT flow is closed once both sides sent a FIN (only the last
/// ACK may follow) or either sent a RST; one FIN is a half-close, after which the
/// other side may go on sending for as long as it likes.
pub mod snat_flags {
    pub const CLIENT_FIN: u32 = 1;
    pub const BACKEND_FIN: u32 = 2;
    pub const RST: u32 = 4;
    /// The endpoint sent something (its SYN-ACK, at least).
    pub const ANSWERED: u32 = 8;
    /// A UDP flow's (no FIN, no RST: free again after [`super::SNAT_UDP_IDLE_NS`]).
    pub const UDP: u32 = 16;

    /// The bits a packet with TCP `flags` adds, sent by the client or the backend.
    #[inline(always)]
    pub fn bits(flags: u8, from_client: bool) -> u32 {
        let (fin, answered) = if from_client {
            (CLIENT_FIN, 0)
        } else {
            (BACKEND_FIN, ANSWERED)
        };
        answered | if flags & 0x01 != 0 { fin } else { 0 } | if flags & 0x04 != 0 { RST } else { 0 }
    }

    #[inline(always)]
    pub fn closed(bits: u32) -> bool {
        bits & RST != 0 || bits & (CLIENT_FIN | BACKEND_FIN) == CLIENT_FIN | BACKEND_FIN
    }
}

/// SNAT ports: below the NodePort range (30000–32767, a reply must never look like a
/// new flow to a NodePort) and the kernel's default ephemeral ports (32768–60999,
/// the node's own connections), above the privileged ones.
pub const SNAT_PORTS: core::ops::Range<u16> = 1024..30000;
/// Ports a new flow tries before it is dropped as exhausted.
pub const SNAT_PROBES: u32 = 32;
/// A SNAT port of a closed flow is free again this long after its endpoint's last
/// packet (its last ACK has passed; the endpoint's TIME_WAIT, if any, accepts a new
/// SYN with a newer timestamp, as it does behind any NAT). Also how long a flow
/// waits for its endpoint's first answer before its port is free again: its client
/// sends the SYN again by then, which takes a port anew.
pub const SNAT_CLOSED_NS: u64 = 1_000_000_000;
/// A SNAT port whose endpoint said nothing for this long is free again (a flow idle
/// this long loses its way back, as it would in conntrack's tables only much later;
/// the LRU may forget it sooner under pressure anyway).
pub const SNAT_IDLE_NS: u64 = 600 * 1_000_000_000;
/// The same for a UDP flow, which never closes (conntrack's `nf_conntrack_udp_timeout`
/// is 30 s too).
pub const SNAT_UDP_IDLE_NS: u64 = 30 * 1_000_000_000;

/// The `probe`th SNAT port a flow with hash `hash` tries (0 ≤ probe < [`SNAT_PROBES`]).
#[inline(always)]
pub fn snat_port(hash: u32, probe: u32) -> u16 {
    let span = (SNAT_PORTS.end - SNAT_PORTS.start) as u32;
    // Another mix than the slot's and the endpoint's, stepped by a prime.
    let h = crate::mix(hash as u64 ^ 0x5bd1_e995) as u32;
    SNAT_PORTS.start + (h.wrapping_add(probe.wrapping_mul(7_919)) % span) as u16
}

/// Whether a new flow (`want`, at `now_ns`) may take a SNAT port held by `held`: the
/// same flow (a retransmitted SYN, a client reusing its port), one closed or left
/// unanswered a while ago, or one idle for long.
#[inline(always)]
pub fn snat_reusable(held: &SnatBack, want: &SnatBack, now_ns: u64) -> bool {
    let same = held.client == want.client && held.service == want.service;
    let quiet = now_ns.saturating_sub(held.seen_ns);
    let done = snat_flags::closed(held.flags) || held.flags & snat_flags::ANSWERED == 0;
    same || quiet
        >= if done {
            SNAT_CLOSED_NS
        } else if held.flags & snat_flags::UDP != 0 {
            SNAT_UDP_IDLE_NS
        } else {
            SNAT_IDLE_NS
        }
}

/// Whether a port all of whose probes are held may still be taken from `held`: a
/// flow its endpoint never answered — under a SYN flood, most likely one of the
/// flood's (conntrack drops its unanswered entries first too). A flow still waiting
/// for its SYN-ACK loses it only within that round trip; its client's next SYN
/// takes a port anew.
#[inline(always)]
pub fn snat_displaceable(held: &SnatBack) -> bool {
    held.flags & snat_flags::ANSWERED == 0
}

/// A flow's hash: the slot is `hash % slot_count`, the endpoint
/// [`endpoint_pick`](crate::endpoint_pick) of it.
/// A function of the flow's tuple only, so a new flow's pick is the same on every node
/// with the same plan (a flow an upstream router moves to another node keeps its
/// endpoint) and for a retransmitted SYN. A murmur3 finaliser over the tuple.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let a = u32::from_ne_bytes(key.client.addr) as u64;
    let b = u32::from_ne_bytes(key.service.addr) as u64;
    crate::mix(
        (a << 32 | b)
            ^ ((key.client.port as u64) << 48 | (key.service.port as u64) << 32 | key.proto as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    ) as u32
}

/// An Internet checksum (`check`, as it lies in the packet) after a 32-bit field it
/// covers changed from `old` to `new` (RFC 1624, eq. 3: HC' = ~(~HC + ~m + m')). The
/// words are taken as they lie in memory: one's complement sums do not depend on the
/// byte order as long as all words are read the same way.
#[inline(always)]
pub fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let mut s = (!check) as u32;
    s += (!(old as u16)) as u32 + (!((old >> 16) as u16)) as u32;
    s += (new as u16) as u32 + (new >> 16);
    fold(s)
}

/// [`csum_replace4`] for a 16-bit field.
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    fold((!check) as u32 + (!old) as u32 + new as u32)
}

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// The Internet checksum of `bytes` as it lies in a packet (words read in memory
    /// order, as the programs read them).
    fn checksum(bytes: &[u8]) -> u16 {
        let mut s: u32 = bytes
            .chunks(2)
            .map(|w| u16::from_ne_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
            .sum();
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn an_updated_checksum_equals_one_computed_anew() {
        // Pseudo-random headers: the field at 4..8 (an address) and 8..10 (a port)
        // change; the checksum lives at 10..12.
        let mut x = 0x2545_f491_u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..10_000 {
            let mut h: Vec<u8> = (0..20).map(|_| next() as u8).collect();
            h[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_ne_bytes());
            let old_ip = u32::from_ne_bytes(h[4..8].try_into().unwrap());
            let old_port = u16::from_ne_bytes(h[8..10].try_into().unwrap());
            let (new_ip, new_port) = (next(), next() as u16);
            h[4..8].copy_from_slice(&new_ip.to_ne_bytes());
            h[8..10].copy_from_slice(&new_port.to_ne_bytes());
            let updated = csum_replace2(csum_replace4(c, old_ip, new_ip), old_port, new_port);
            h[10..12].copy_from_slice(&[0, 0]);
            let anew = checksum(&h);
            // 0x0000 and 0xffff are the same one's complement number.
            assert!(
                updated == anew || (updated ^ anew) == 0xffff && (updated == 0 || anew == 0),
                "updated {updated:#06x}, computed anew {anew:#06x}"
            );
            // And the packet checks: its sum with the checksum in place folds to 0.
            h[10..12].copy_from_slice(&updated.to_ne_bytes());
            assert_eq!(checksum(&h), 0);
        }
    }

    #[test]
    fn a_flows_snat_ports_are_distinct_and_in_range() {
        for hash in [0, 1, 0xdead_beef, u32::MAX] {
            let ports: Vec<u16> = (0..SNAT_PROBES).map(|i| snat_port(hash, i)).collect();
            for (i, p) in ports.iter().enumerate() {
                assert!(SNAT_PORTS.contains(p), "{p}");
                assert!(!ports[..i].contains(p), "probes repeat: {ports:?}");
            }
        }
        // Spread: 20,000 flows' first ports over 28,976 fall in most of 100 buckets
        // evenly.
        let mut buckets = [0u32; 100];
        for port in 20_000..40_000u32 {
            let p = snat_port(port.wrapping_mul(2_654_435_761), 0) - SNAT_PORTS.start;
            buckets[p as usize * 100 / (SNAT_PORTS.end - SNAT_PORTS.start) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|n| (120..=280).contains(n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn a_snat_port_is_taken_from_a_closed_unanswered_or_long_idle_flow_only() {
        use snat_flags::{ANSWERED, bits};
        let back = |client: u16, seen_ns: u64, flags: u32| SnatBack {
            client: SockAddr4::new([10, 250, 0, 2], client),
            service: SockAddr4::new([10, 250, 0, 1], 30785),
            seen_ns,
            flags,
            _pad: 0,
        };
        let now = 1_000 * 1_000_000_000;
        let want = back(40_000, now, 0);
        // Its own port again (a retransmitted SYN).
        assert!(snat_reusable(&back(40_000, now, 0), &want, now));
        // Another client's live flow: taken after ten idle minutes only.
        let live = |seen| back(40_001, seen, ANSWERED);
        assert!(!snat_reusable(&live(now - 1), &want, now));
        assert!(!snat_reusable(&live(now - SNAT_IDLE_NS + 1), &want, now));
        assert!(snat_reusable(&live(now - SNAT_IDLE_NS), &want, now));
        // Another client's closed flow, once its last packet is a second old.
        let fins = bits(0x11, true) | bits(0x11, false);
        assert!(!snat_reusable(&back(40_001, now - 1, fins), &want, now));
        assert!(snat_reusable(
            &back(40_001, now - SNAT_CLOSED_NS, fins),
            &want,
            now
        ));
        let rst = bits(0x04, false);
        assert!(snat_reusable(
            &back(40_001, now - SNAT_CLOSED_NS, rst),
            &want,
            now
        ));
        // A half-closed one is not closed: the other side may still be sending.
        let half = bits(0x11, true) | ANSWERED;
        assert!(!snat_reusable(
            &back(40_001, now - SNAT_CLOSED_NS, half),
            &want,
            now
        ));
        // One its endpoint never answered: free a second after it was taken, and
        // displaceable before that; an answered one never is.
        assert!(!snat_reusable(&back(40_001, now - 1, 0), &want, now));
        assert!(snat_reusable(
            &back(40_001, now - SNAT_CLOSED_NS, 0),
            &want,
            now
        ));
        assert!(snat_displaceable(&back(40_001, now, bits(0x12, true))));
        assert!(!snat_displaceable(&live(now)));
        // A clock read on another CPU may be older than `seen_ns`.
        assert!(!snat_reusable(&back(40_001, now + 5, fins), &want, now));
        // An answered UDP flow's, after half a minute of silence.
        let udp = |seen| back(40_001, seen, ANSWERED | snat_flags::UDP);
        assert!(!snat_reusable(&udp(now - SNAT_UDP_IDLE_NS + 1), &want, now));
        assert!(snat_reusable(&udp(now - SNAT_UDP_IDLE_NS), &want, now));
    }

    #[test]
    fn flows_spread_over_the_slots_and_endpoints() {
        // 10 slots (90/10 reduced to 9/1), 5 endpoints: 20,000 flows from one client
        // address, its ports in a row (what a client's connections look like).
        let (mut slots, mut eps) = ([0u32; 10], [0u32; 5]);
        for port in 20_000..40_000u16 {
            let key = FlowKey {
                client: SockAddr4::new([10, 250, 0, 2], port),
                service: SockAddr4::new([10, 250, 0, 1], 30785),
                proto: IPPROTO_TCP as u32,
            };
            let h = flow_hash(&key);
            assert_eq!(
                h,
                flow_hash(&key),
                "a flow's pick is a function of its tuple"
            );
            slots[(h % 10) as usize] += 1;
            eps[endpoint_pick(h, 5) as usize] += 1;
        }
        for n in slots {
            assert!((1_800..=2_200).contains(&n), "slots {slots:?}");
        }
        for n in eps {
            assert!((3_700..=4_300).contains(&n), "endpoints {eps:?}");
        }
    }
}
