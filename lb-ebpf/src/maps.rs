//! Every map lb pins (shapes and names in `lb_common::layout`, checked against this
//! object by lb-userspace's `elf_contract` test), and the small reads and counters
//! every program shares.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash, SockMap},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_map_lookup_elem,
        bpf_sk_release,
    },
    macros::btf_map,
};
use lb_common::{
    ClientKey, EndpointChunk, EndpointKey, Habit, HabitKey, OriginSlot, PortSlot, Sender, Service,
    Settings, Slot, SlotChunk, SlotKey, SockAddr4, SockKey, StatKey, Stats, capacity as cap,
    chunk_of, counters, habit, proxy_listener,
    xdp::{Flow, FlowKey, NatKey, SnatBack, SnatKey},
};

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
const MMAPABLE: usize = BPF_F_MMAPABLE as usize;

#[btf_map(pin_by_name)]
pub static LB_SERVICES: HashMap<SockAddr4, Service, { cap::SERVICES as usize }, NO_PREALLOC> =
    HashMap::new();
#[btf_map(pin_by_name)]
pub static LB_SLOTS: HashMap<SlotKey, SlotChunk, { cap::SLOTS as usize }, NO_PREALLOC> =
    HashMap::new();
#[btf_map(pin_by_name)]
pub static LB_ENDPOINTS: HashMap<
    EndpointKey,
    EndpointChunk,
    { cap::ENDPOINTS as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Weight slot `i` of one revision of a service (in its chunk's entry).
#[inline(always)]
pub fn slot_at(service: SockAddr4, revision: u32, i: u32) -> Option<Slot> {
    let (chunk, at) = chunk_of(i);
    let key = SlotKey {
        service,
        revision,
        chunk,
    };
    // SAFETY: copied out at once.
    let entry = unsafe { LB_SLOTS.get(&key) }?;
    entry.slots.get(at).copied()
}

/// Endpoint `i` of a subset in one revision of a service (in its chunk's entry).
#[inline(always)]
pub fn endpoint_at(service: SockAddr4, revision: u32, subset: u32, i: u32) -> Option<SockAddr4> {
    let (chunk, at) = chunk_of(i);
    let key = EndpointKey {
        service,
        revision,
        subset,
        chunk,
    };
    // SAFETY: copied out at once.
    let entry = unsafe { LB_ENDPOINTS.get(&key) }?;
    entry.endpoints.get(at).copied()
}
#[btf_map(pin_by_name)]
pub static LB_ORIGINS: Array<OriginSlot, { cap::ORIGINS as usize }> = Array::new();
#[btf_map(pin_by_name)]
pub static LB_ORIG_DST: LruHashMap<ClientKey, SockAddr4, { cap::ORIG_DST as usize }> =
    LruHashMap::new();
/// The fast path of `LB_ORIG_DST`, by client port (see `lb_common::PortSlot`):
/// mmap-able, so the proxy reads it without a syscall.
#[btf_map(pin_by_name)]
pub static LB_ORIG_DST_BY_PORT: Array<PortSlot, { cap::PORTS as usize }, MMAPABLE> = Array::new();
#[btf_map(pin_by_name)]
pub static LB_SOCKETS: SockHash<SockKey, { cap::SOCKETS as usize }> = SockHash::new();
/// Addresses that sockets inside the cgroup listen on (learned at TCP_LISTEN_CB, seeded
/// by the daemon for listeners older than the attach): the endpoints whose accepted
/// sockets will join the socket map, so the only connects worth a shortcut. An
/// address listened on by a process outside the cgroup never joins: a connect to it
/// pays for no socket map. Never removed (LRU): a stale entry costs a socket map
/// membership that finds no peer, never a wrong delivery.
#[btf_map(pin_by_name)]
pub static LB_LOCAL_LISTENERS: LruHashMap<SockAddr4, u32, { cap::LOCAL_LISTENERS as usize }> =
    LruHashMap::new();
/// Sending sockets by their own tuple: those kept on TCP (their peer was not in the
/// socket map at their first message), and joined client sockets whose first two
/// messages teach their process's habit (see `lb_sk_msg`).
#[btf_map(pin_by_name)]
pub static LB_SENDERS: LruHashMap<SockKey, Sender, { cap::SOCKETS as usize }> = LruHashMap::new();
/// The tuple the accepting side's socket will have, for each connect that joined the
/// socket map (a client handed to the proxy, lb's upstream connects, kernel-path
/// clients of local backends): that socket joins too at PASSIVE_ESTABLISHED (when its
/// listener runs inside the cgroup, as lb and local pods do on a node). A connect
/// that did not join leaves no mark, so its peer pays for no psock either.
#[btf_map(pin_by_name)]
pub static LB_PEERS_TO_JOIN: LruHashMap<SockKey, u32, { cap::PEERS_TO_JOIN as usize }> =
    LruHashMap::new();
/// Per client process and service: do its connections carry more than one message?
/// (`lb_common::habit`; LRU, a forgotten process starts again at "join").
#[btf_map(pin_by_name)]
pub static LB_HABITS: LruHashMap<HabitKey, Habit, { cap::HABITS as usize }> = LruHashMap::new();
#[btf_map(pin_by_name)]
pub static LB_STATS: PerCpuHashMap<StatKey, Stats, { cap::STATS as usize }> = PerCpuHashMap::new();
/// The proxy's listening sockets (`lb_common::proxy_listener`), put there by the daemon;
/// a closed socket leaves the map by itself (no entry for a dead proxy).
#[btf_map(pin_by_name)]
pub static LB_PROXY_LISTENERS: SockMap<{ proxy_listener::COUNT as usize }> = SockMap::new();
#[btf_map(pin_by_name)]
pub static LB_SETTINGS: Array<Settings, 1> = Array::new();
#[btf_map(pin_by_name)]
pub static LB_COUNTERS: PerCpuArray<u64, { counters::COUNT as usize }> = PerCpuArray::new();
// Read only by user space (`lb status`); declared here so they are created, typed and
// pinned with the others.
#[btf_map(pin_by_name)]
pub static LB_SERVICE_META: HashMap<
    SockAddr4,
    lb_common::ServiceMeta,
    { cap::SERVICES as usize },
    NO_PREALLOC,
> = HashMap::new();
#[btf_map(pin_by_name)]
pub static LB_SUBSET_META: HashMap<
    lb_common::SubsetMetaKey,
    lb_common::SubsetMeta,
    { cap::STATS as usize },
    NO_PREALLOC,
> = HashMap::new();
#[btf_map(pin_by_name)]
pub static LB_STATE: Array<lb_common::State, 1> = Array::new();
/// How tracked connects to each endpoint of a kernel-path service with outlier
/// detection ended (`sock_ops`); the daemon reads it and ejects failing endpoints.
#[btf_map(pin_by_name)]
pub static LB_HEALTH: LruHashMap<
    lb_common::HealthKey,
    lb_common::Health,
    { cap::HEALTH as usize },
> = LruHashMap::new();
/// North-south flows (`lb_xdp`): where each goes for its life.
#[btf_map(pin_by_name)]
pub static LB_XDP_FLOWS: LruHashMap<FlowKey, Flow, { cap::XDP_FLOWS as usize }> = LruHashMap::new();
/// Their replies' way back (`lb_tc_egress`): endpoint → client to the service address.
#[btf_map(pin_by_name)]
pub static LB_XDP_NAT: LruHashMap<NatKey, SockAddr4, { cap::XDP_FLOWS as usize }> =
    LruHashMap::new();
/// Flows forwarded to another node's endpoint, by the SNAT port their replies come
/// back to (`lb_xdp` both ways).
#[btf_map(pin_by_name)]
pub static LB_XDP_SNAT: LruHashMap<SnatKey, SnatBack, { cap::XDP_FLOWS as usize }> =
    LruHashMap::new();
/// The `--xdp-iface` interfaces' addresses by interface index (the daemon's): a flow
/// leaving by one of them for another node takes its address as source.
#[btf_map(pin_by_name)]
pub static LB_XDP_IFACES: HashMap<u32, [u8; 4], { cap::XDP_IFACES as usize }> = HashMap::new();
/// Next hops found without a link-layer address, with their interface: the daemon
/// resolves them (XDP cannot) and removes them.
#[btf_map(pin_by_name)]
pub static LB_XDP_NEIGH: LruHashMap<[u8; 4], u32, { cap::XDP_NEIGH as usize }> = LruHashMap::new();
#[btf_map(pin_by_name)]
pub static LB_HOSTS: HashMap<lb_common::HostKey, u64, { cap::HOSTS as usize }, NO_PREALLOC> =
    HashMap::new();

/// Whether a socket inside the cgroup listens on `addr` (or on every address at its
/// port): a local backend, whose accepted socket will join the socket map.
#[inline(always)]
pub fn is_local_listener(addr: SockAddr4) -> bool {
    // SAFETY: only tested for presence.
    unsafe {
        LB_LOCAL_LISTENERS.get(&addr).is_some()
            || LB_LOCAL_LISTENERS
                .get(&SockAddr4::new([0; 4], addr.port))
                .is_some()
    }
}

/// Counts into the per-CPU stats of a service's subset (made on first use).
#[inline(always)]
pub fn count(key: &StatKey, f: impl FnOnce(&mut Stats)) {
    match LB_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        Some(p) => f(unsafe { &mut *p }),
        None => {
            let mut s = Stats::default();
            f(&mut s);
            // BPF_NOEXIST: another CPU's concurrent insert wins; one count may be lost.
            let _ = LB_STATS.insert(key, &s, BPF_NOEXIST as u64);
        }
    }
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(p) = LB_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

/// lb's own sockets (its proxy's upstream connects, the daemon's checks) are never
/// steered, also when lb runs inside the attached cgroup.
#[inline(always)]
pub fn is_own_socket() -> bool {
    match LB_SETTINGS.get(0) {
        Some(s) => s.self_tgid != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 == s.self_tgid,
        None => false,
    }
}

/// Whether a client process's new connection to a service joins the socket map:
/// unless its connections have been carrying one message each (`lb_common::habit`).
#[inline(always)]
pub fn client_joins(habit: &HabitKey) -> bool {
    let Some(h) = LB_HABITS.get_ptr_mut(habit) else {
        return true;
    };
    // SAFETY: a map value pointer, valid for the program's run; a lost update between
    // CPUs only blurs a heuristic.
    if unsafe { &mut *h }.admits(now) {
        return true;
    }
    bump(counters::SK_MSG_SKIPPED);
    false
}

/// Whether the daemon asked for the sk_msg shortcut of `hop` (a settings flag).
#[inline(always)]
pub fn shortcut(hop: u32) -> bool {
    LB_SETTINGS.get(0).is_some_and(|s| s.flags & hop != 0)
}

/// The habits' clock (`lb_common::habit::clock`).
#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: no preconditions.
    habit::clock(unsafe { bpf_ktime_get_ns() })
}

#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_prandom_u32() }
}

/// The proxy listener for a client that joins the socket map or not (see
/// `Settings::proxy_deferred`), if its socket accepts right now: it is in
/// `LB_PROXY_LISTENERS` (a closed socket leaves the map, so a killed daemon's is gone
/// at once and no connect is sent to a dead proxy). A socket map holds the socket
/// itself, so this answers for clients in any network namespace (a pod's), where a
/// lookup by address (`bpf_sk_lookup_tcp`) would search the client's own.
#[inline(always)]
pub fn live_proxy(join: bool) -> Option<SockAddr4> {
    let settings = LB_SETTINGS.get(0)?;
    let (proxy, index) = if join || settings.proxy_deferred.port == 0 {
        (settings.proxy, proxy_listener::MAIN)
    } else {
        (settings.proxy_deferred, proxy_listener::DEFERRED)
    };
    if proxy.port == 0 {
        return None;
    }
    let map = core::ptr::from_ref(&LB_PROXY_LISTENERS).cast_mut().cast();
    // SAFETY: a socket map lookup from a program returns a referenced socket (or
    // null), released below.
    let sk = unsafe { bpf_map_lookup_elem(map, core::ptr::from_ref(&index).cast()) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` came from the socket map lookup and is released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    Some(proxy)
}
