//! Types shared by the eBPF programs (lb-ebpf) and user space (lb-userspace).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding and no `bool`, so both
//! sides agree byte for byte and `bpftool map dump` prints named fields (the maps carry
//! BTF). Addresses are `[u8; 4]` in network order (bpftool prints them as four numbers,
//! readable as a dotted quad); ports are host order (bpftool prints the real port).
#![no_std]

pub mod xdp;

/// Names of the pinned maps (also the names of the statics in lb-ebpf; the
/// `elf_contract` test of lb-userspace checks the built object against [`layout`]).
pub mod map_names {
    pub const SERVICES: &str = "LB_SERVICES";
    pub const SLOTS: &str = "LB_SLOTS";
    pub const ENDPOINTS: &str = "LB_ENDPOINTS";
    pub const ORIGINS: &str = "LB_ORIGINS";
    pub const ORIG_DST: &str = "LB_ORIG_DST";
    pub const ORIG_DST_BY_PORT: &str = "LB_ORIG_DST_BY_PORT";
    pub const SOCKETS: &str = "LB_SOCKETS";
    pub const STATS: &str = "LB_STATS";
    pub const SETTINGS: &str = "LB_SETTINGS";
    pub const SERVICE_META: &str = "LB_SERVICE_META";
    pub const SUBSET_META: &str = "LB_SUBSET_META";
    pub const STATE: &str = "LB_STATE";
    pub const COUNTERS: &str = "LB_COUNTERS";
    pub const HOSTS: &str = "LB_HOSTS";
    pub const PEERS_TO_JOIN: &str = "LB_PEERS_TO_JOIN";
    pub const SENDERS: &str = "LB_SENDERS";
    pub const HABITS: &str = "LB_HABITS";
    pub const LOCAL_LISTENERS: &str = "LB_LOCAL_LISTENERS";
    pub const PROXY_LISTENERS: &str = "LB_PROXY_LISTENERS";
    pub const HEALTH: &str = "LB_HEALTH";
    pub const XDP_FLOWS: &str = "LB_XDP_FLOWS";
    pub const XDP_NAT: &str = "LB_XDP_NAT";
    pub const XDP_SNAT: &str = "LB_XDP_SNAT";
    pub const XDP_IFACES: &str = "LB_XDP_IFACES";
    pub const XDP_NEIGH: &str = "LB_XDP_NEIGH";
}

/// Indexes of `LB_PROXY_LISTENERS`: the proxy's listening sockets, as the daemon put
/// them there. A socket leaves a socket map when it closes, so a listener found there
/// is one that accepts now — whatever network namespace the connecting pod is in.
pub mod proxy_listener {
    /// `Settings::proxy`.
    pub const MAIN: u32 = 0;
    /// `Settings::proxy_deferred`.
    pub const DEFERRED: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// The kernel/user contract: every pinned map's type, key and value sizes, capacity
/// and flags, derived from the types below, and a fingerprint of all of it. Pins live
/// under `<bpffs>/layout-<fingerprint>/`, so a build whose maps differ in any of these
/// never adopts pins of another layout: it attaches beside them and removes them once
/// its own are live. A test reads the built eBPF object and checks its maps against
/// [`layout::MAPS`], and the daemon checks pinned maps against it before adopting them.
pub mod layout {
    use super::{map_names as n, *};

    /// `enum bpf_map_type` values lb uses (linux/bpf.h).
    pub mod kind {
        pub const HASH: u32 = 1;
        pub const ARRAY: u32 = 2;
        pub const PERCPU_HASH: u32 = 5;
        pub const PERCPU_ARRAY: u32 = 6;
        pub const LRU_HASH: u32 = 9;
        pub const SOCKMAP: u32 = 15;
        pub const SOCKHASH: u32 = 18;
    }

    /// Map creation flags (linux/bpf.h).
    pub mod flags {
        pub const NO_PREALLOC: u32 = 1;
        pub const MMAPABLE: u32 = 1 << 10;
    }

    /// One pinned map as the programs declare it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MapSpec {
        pub name: &'static str,
        /// One of [`kind`].
        pub kind: u32,
        pub key_size: u32,
        pub value_size: u32,
        pub max_entries: u32,
        /// [`flags`].
        pub flags: u32,
    }

    const fn spec<K, V>(name: &'static str, kind: u32, max_entries: u32, flags: u32) -> MapSpec {
        MapSpec {
            name,
            kind,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries,
            flags,
        }
    }

    use flags::{MMAPABLE, NO_PREALLOC};
    use kind::*;

    /// Every map lb pins, in the order `lb down` removes them.
    pub const MAPS: [MapSpec; 25] = [
        spec::<u32, u64>(n::COUNTERS, PERCPU_ARRAY, counters::COUNT, 0),
        spec::<SockAddr4, u32>(n::LOCAL_LISTENERS, LRU_HASH, capacity::LOCAL_LISTENERS, 0),
        spec::<SockKey, Sender>(n::SENDERS, LRU_HASH, capacity::SOCKETS, 0),
        spec::<SockKey, u32>(n::PEERS_TO_JOIN, LRU_HASH, capacity::PEERS_TO_JOIN, 0),
        spec::<HabitKey, Habit>(n::HABITS, LRU_HASH, capacity::HABITS, 0),
        spec::<HostKey, u64>(n::HOSTS, HASH, capacity::HOSTS, NO_PREALLOC),
        spec::<SockAddr4, Service>(n::SERVICES, HASH, capacity::SERVICES, NO_PREALLOC),
        spec::<SlotKey, SlotChunk>(n::SLOTS, HASH, capacity::SLOTS, NO_PREALLOC),
        spec::<EndpointKey, EndpointChunk>(n::ENDPOINTS, HASH, capacity::ENDPOINTS, NO_PREALLOC),
        spec::<u32, OriginSlot>(n::ORIGINS, ARRAY, capacity::ORIGINS, 0),
        spec::<ClientKey, SockAddr4>(n::ORIG_DST, LRU_HASH, capacity::ORIG_DST, 0),
        spec::<u32, PortSlot>(n::ORIG_DST_BY_PORT, ARRAY, capacity::PORTS, MMAPABLE),
        // A socket map's value is the socket (a u32 fd from user space).
        spec::<SockKey, u32>(n::SOCKETS, SOCKHASH, capacity::SOCKETS, 0),
        spec::<StatKey, Stats>(n::STATS, PERCPU_HASH, capacity::STATS, 0),
        spec::<u32, Settings>(n::SETTINGS, ARRAY, 1, 0),
        spec::<SockAddr4, ServiceMeta>(n::SERVICE_META, HASH, capacity::SERVICES, NO_PREALLOC),
        spec::<SubsetMetaKey, SubsetMeta>(n::SUBSET_META, HASH, capacity::STATS, NO_PREALLOC),
        spec::<u32, State>(n::STATE, ARRAY, 1, 0),
        spec::<u32, u32>(n::PROXY_LISTENERS, SOCKMAP, proxy_listener::COUNT, 0),
        spec::<HealthKey, Health>(n::HEALTH, LRU_HASH, capacity::HEALTH, 0),
        spec::<xdp::FlowKey, xdp::Flow>(n::XDP_FLOWS, LRU_HASH, capacity::XDP_FLOWS, 0),
        spec::<xdp::NatKey, SockAddr4>(n::XDP_NAT, LRU_HASH, capacity::XDP_FLOWS, 0),
        spec::<xdp::SnatKey, xdp::SnatBack>(n::XDP_SNAT, LRU_HASH, capacity::XDP_FLOWS, 0),
        spec::<u32, [u8; 4]>(n::XDP_IFACES, HASH, capacity::XDP_IFACES, 0),
        spec::<[u8; 4], u32>(n::XDP_NEIGH, LRU_HASH, capacity::XDP_NEIGH, 0),
    ];

    /// Bumped only for a change of meaning that keeps every size (a field's meaning,
    /// a key's byte order); any change of a type's size, a capacity or a flag changes
    /// the fingerprint by itself.
    pub const EPOCH: u32 = 1;

    /// FNV-1a over every field of [`MAPS`] and [`EPOCH`].
    pub const FINGERPRINT: u32 = fingerprint(&MAPS, EPOCH);

    const fn fnv(mut h: u32, bytes: &[u8]) -> u32 {
        let mut i = 0;
        while i < bytes.len() {
            h = (h ^ bytes[i] as u32).wrapping_mul(0x0100_0193);
            i += 1;
        }
        h
    }

    /// The fingerprint of a set of map specs (a pure function, so tests can show
    /// that any field changes it).
    pub const fn fingerprint(maps: &[MapSpec], epoch: u32) -> u32 {
        let mut h = fnv(0x811c_9dc5, &epoch.to_le_bytes());
        let mut i = 0;
        while i < maps.len() {
            let m = &maps[i];
            h = fnv(h, m.name.as_bytes());
            h = fnv(h, &m.kind.to_le_bytes());
            h = fnv(h, &m.key_size.to_le_bytes());
            h = fnv(h, &m.value_size.to_le_bytes());
            h = fnv(h, &m.max_entries.to_le_bytes());
            h = fnv(h, &m.flags.to_le_bytes());
            i += 1;
        }
        h
    }

    /// The map spec of `name`.
    pub fn map(name: &str) -> Option<&'static MapSpec> {
        MAPS.iter().find(|m| m.name == name)
    }
}

/// Capacities of the pinned maps. Pinned maps cannot grow: the applier refuses a plan
/// that does not fit (a clear error; the running plan stays).
pub mod capacity {
    pub const SERVICES: u32 = 65_536;
    /// `LB_SLOTS` entries ([`PER_ENTRY`](super::PER_ENTRY) slots each), counted over all
    /// services and the revisions alive at once (two).
    pub const SLOTS: u32 = 131_072;
    /// `LB_ENDPOINTS` entries ([`PER_ENTRY`](super::PER_ENTRY) endpoints each: a
    /// subset's endpoints, then its Maglev table), counted like slots.
    pub const ENDPOINTS: u32 = 262_144;
    /// Slots of one service (weights reduced by their gcd must sum to at most this).
    pub const SLOTS_PER_SERVICE: u32 = 4_096;
    /// Endpoints of one subset.
    pub const ENDPOINTS_PER_SUBSET: u32 = 65_535;
    /// Slots of the `LB_ORIGINS` ring (a power of two: a cookie's slot is its low bits).
    pub const ORIGINS: u32 = 262_144;
    pub const ORIG_DST: u32 = 65_536;
    /// One slot per client port (`LB_ORIG_DST_BY_PORT`).
    pub const PORTS: u32 = 65_536;
    pub const SOCKETS: u32 = 65_536;
    pub const PEERS_TO_JOIN: u32 = 16_384;
    /// Client processes × services whose connection habit is remembered (LRU).
    pub const HABITS: u32 = 16_384;
    /// Listening addresses inside the cgroup remembered (LRU).
    pub const LOCAL_LISTENERS: u32 = 16_384;
    pub const STATS: u32 = 65_536;
    /// Endpoints of kernel-path services with outlier detection whose connects are
    /// tracked (LRU).
    pub const HEALTH: u32 = 65_536;
    pub const NAME_LEN: usize = 64;
    /// Distinct unknown Host headers remembered (per service at most `HOSTS_PER_SERVICE`).
    pub const HOSTS: u32 = 4_096;
    /// North-south flows remembered at once (and their reverse translations): an LRU,
    /// so past this the least recently seen flow is forgotten (its next packet is
    /// picked again, its replies leave untranslated).
    pub const XDP_FLOWS: u32 = 131_072;
    /// `--xdp-iface` interfaces (their addresses, for SNAT).
    pub const XDP_IFACES: u32 = 64;
    /// Next hops `lb_xdp` found unresolved, waiting for the daemon to resolve them.
    pub const XDP_NEIGH: u32 = 256;
    pub const HOSTS_PER_SERVICE: usize = 32;
    pub const ERROR_LEN: usize = 1_024;
}

/// `Service::mode`: how connects to the service are handled.
pub mod mode {
    /// Weighted pick in `connect4`, no proxy hop.
    pub const KERNEL: u32 = 1;
    /// Handed to lb's proxy listener (the L7 path).
    pub const PROXY: u32 = 2;
    /// In `LB_ORIGINS` only: lb's own connect to a loopback endpoint (the proxy's
    /// upstream hop), a candidate for the sk_msg shortcut.
    pub const UPSTREAM: u32 = 3;
}

/// An IPv4 service or endpoint address: `[u8; 4]` in network order plus a host-order port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddr4 {
    pub addr: [u8; 4],
    pub port: u16,
    /// A service key's protocol: 0 for TCP (what `connect4` looks up), `IPPROTO_UDP`
    /// for a UDP service (served north-south only). 0 in every other address.
    pub proto: u16,
}

impl SockAddr4 {
    pub const fn new(addr: [u8; 4], port: u16) -> Self {
        Self {
            addr,
            port,
            proto: 0,
        }
    }

    /// The service key of this address and port for IP protocol `proto` (see
    /// [`proto`](Self::proto)).
    #[inline(always)]
    pub const fn service(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto: if proto == xdp::IPPROTO_UDP {
                xdp::IPPROTO_UDP as u16
            } else {
                0
            },
        }
    }

    /// A UDP service's key.
    pub const fn is_udp(&self) -> bool {
        self.proto == xdp::IPPROTO_UDP as u16
    }

    /// From the `user_ip4` / `user_port` pair of a `bpf_sock_addr` (both network order,
    /// the port in the low 16 bits of its u32).
    #[inline(always)]
    pub fn from_sock_addr(user_ip4: u32, user_port: u32) -> Self {
        Self::new(user_ip4.to_ne_bytes(), port_from_be32(user_port))
    }

    /// The address as one u64 (its 8 bytes as they lie in memory, padding zero), for
    /// the atomic claim of a [`PortSlot`]; never 0 for a client (its port is not 0).
    #[inline(always)]
    pub fn to_u64(&self) -> u64 {
        let p = self.port.to_ne_bytes();
        let a = self.addr;
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], p[0], p[1], 0, 0])
    }

    /// `user_ip4` value (network order) for this address.
    #[inline(always)]
    pub fn user_ip4(&self) -> u32 {
        u32::from_ne_bytes(self.addr)
    }

    /// `user_port` value (network order, low 16 bits) for this port.
    #[inline(always)]
    pub fn user_port(&self) -> u32 {
        port_to_be32(self.port)
    }
}

/// A port held in network order in the low 16 bits of a u32 (`bpf_sock_addr.user_port`,
/// `bpf_sock_ops.remote_port`) to host order. The one conversion used everywhere.
#[inline(always)]
pub const fn port_from_be32(v: u32) -> u16 {
    u16::from_be(v as u16)
}

/// `remote_port` of `bpf_sock_ops` and `sk_msg_md` to host order: the kernel loads the
/// network-order port and shifts it into the upper 16 bits (little-endian hosts), unlike
/// `bpf_sock_addr.user_port`, which keeps it in the low 16 bits. (`local_port` of both
/// is host order already.)
#[inline(always)]
pub const fn remote_port_from_ctx(v: u32) -> u16 {
    u16::from_be((v >> 16) as u16)
}

/// Inverse of [`port_from_be32`].
#[inline(always)]
pub const fn port_to_be32(port: u16) -> u32 {
    port.to_be() as u32
}

/// `LB_SERVICES` value: the revision of the service's slot table that connects use now.
/// The applier writes a whole new revision, then flips this entry in one update.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub revision: u32,
    /// Number of weight slots (the reduced weights' sum) in this revision.
    pub slot_count: u32,
    /// One of [`mode`].
    pub mode: u32,
    /// [`service_flags`].
    pub flags: u32,
}

/// `Service::flags`.
pub mod service_flags {
    /// The client picks the slot (so the subset) by its hash, not a draw: lb's sticky
    /// subsets keyed by the source (`lb.dev/sticky-subsets: source-ip`).
    pub const HASH_SUBSET: u32 = 1;
    /// Connects are tracked in `LB_HEALTH` (outlier detection on the kernel path).
    pub const TRACK_HEALTH: u32 = 2;
}

/// `Slot::flags`.
pub mod slot_flags {
    /// The client picks the endpoint by its hash, not a draw
    /// (`consistentHash.useSourceIp`).
    pub const HASH_ENDPOINT: u32 = 1;
}

/// Who a connect comes from, for source hashing: the address a socket is bound to,
/// or else (an unbound socket: its source is only chosen after `connect4`) its network
/// namespace, which on a node is one pod, with one address. Mixed so that keys close
/// together spread (a murmur3 finaliser).
#[inline(always)]
pub fn client_hash(bound_ip4: u32, netns_cookie: u64) -> u32 {
    mix(if bound_ip4 != 0 {
        bound_ip4 as u64
    } else {
        netns_cookie ^ 0x9e37_79b9_7f4a_7c15
    }) as u32
}

/// The endpoint index inside a subset picked by a hash (the client's for source
/// hashing, a flow's in XDP): another mix of it than the slot's, so the endpoint does
/// not follow from the subset.
#[inline(always)]
pub fn endpoint_pick(hash: u32, endpoint_count: u32) -> u32 {
    hash.rotate_left(16).wrapping_mul(0x9e37_79b1) % endpoint_count
}

/// The `LB_ENDPOINTS` index of a flow's endpoint in `slot`'s subset (which has
/// endpoints): its Maglev table's entry when it has one (the same endpoint on every
/// node, and mostly the same when another endpoint comes or goes), else the modulo
/// pick.
#[inline(always)]
pub fn flow_endpoint_index(hash: u32, slot: &Slot) -> u32 {
    if slot.table == 0 {
        endpoint_pick(hash, slot.endpoint_count)
    } else {
        slot.endpoint_count + endpoint_pick(hash, slot.table)
    }
}

/// murmur3's 64-bit finaliser: every input bit moves every output bit.
#[inline(always)]
pub fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Slots and endpoints are stored this many to a map entry (`LB_SLOTS`,
/// `LB_ENDPOINTS`): a service's weight slots and a subset's endpoints usually take one
/// map update each, not one per slot or endpoint (at 10,000 services × 10 endpoints the
/// first apply made 24 map updates per service, the largest part of the first load),
/// and a pick still takes one lookup for each.
pub const PER_ENTRY: u32 = 16;

/// Where item `i` of a chunked list is: its entry, and its place in that entry.
#[inline(always)]
pub fn chunk_of(i: u32) -> (u32, usize) {
    (i / PER_ENTRY, (i % PER_ENTRY) as usize)
}

/// How many entries `n` items take.
#[inline(always)]
pub fn chunks(n: u32) -> u32 {
    n.div_ceil(PER_ENTRY)
}

/// `LB_SLOTS` key: weight slots `chunk × PER_ENTRY ..` of one revision of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service: SockAddr4,
    pub revision: u32,
    pub chunk: u32,
}

/// `LB_SLOTS` value: [`PER_ENTRY`] slots (past the service's `slot_count`: zeroes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotChunk {
    pub slots: [Slot; PER_ENTRY as usize],
}

/// `LB_SLOTS` value: the subset a slot picks. The endpoint inside the subset is picked
/// in a second step, so exact weights never need `weight × endpoints` slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// The subset's id inside its service (see `LB_SUBSET_META` for its name).
    pub subset: u32,
    /// Endpoints in that subset; 0 fails the connect with ECONNREFUSED.
    pub endpoint_count: u32,
    /// [`slot_flags`].
    pub flags: u32,
    /// The size of the subset's Maglev table (north-south frontends; 0: none), whose
    /// entries follow its endpoints in `LB_ENDPOINTS` (indices `endpoint_count..`),
    /// each an endpoint's address: see [`flow_endpoint_index`].
    pub table: u32,
}

/// `LB_ENDPOINTS` key: endpoints `chunk × PER_ENTRY ..` of a subset in one revision
/// of a service (its endpoints, then its Maglev table's entries).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub service: SockAddr4,
    pub revision: u32,
    pub subset: u32,
    pub chunk: u32,
}

/// `LB_ENDPOINTS` value: [`PER_ENTRY`] endpoints (past the subset's: zeroes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointChunk {
    pub endpoints: [SockAddr4; PER_ENTRY as usize],
}

/// What a steered socket dialled and where it went (in an [`OriginSlot`]).
/// `getpeername4` answers with `service`; `sock_ops` re-keys proxy-bound ones by 4-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub service: SockAddr4,
    pub backend: SockAddr4,
    pub mode: u32,
    /// The connecting process (its tgid): whose habit decides whether the socket joins
    /// the socket map (see [`habit`]).
    pub tgid: u32,
    /// 1: a client handed to the proxy that joins the socket map (decided in connect4,
    /// which picks the proxy listener by it).
    pub join: u32,
    /// The service's [`service_flags`] when the connect was steered (`sock_ops` tracks
    /// the connect's outcome if they say so).
    pub flags: u32,
}

/// `LB_ORIGINS[cookie % ORIGINS]`: a ring by socket cookie. Cookies come from one
/// counter, so a slot is reused only after `ORIGINS` newer cookies — the age at which
/// an LRU hash of that size would have evicted the entry too — and an insert is two
/// stores instead of an LRU hash's list and bucket work (~1.4 % of a
/// connection-per-request client's CPU, perf). `cookie` is written last (zeroed
/// first) and read before and after `origin`, so a reader never takes a half-written
/// slot for its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginSlot {
    pub cookie: u64,
    pub origin: Origin,
}

/// The `LB_ORIGINS` slot of a socket cookie.
#[inline(always)]
pub fn origin_slot(cookie: u64) -> u32 {
    (cookie & (capacity::ORIGINS as u64 - 1)) as u32
}

/// `LB_ORIG_DST_BY_PORT[client port]` (an mmap-able array): the original destination
/// of a proxied connection, which the proxy reads from shared memory, no syscall.
/// `client` is claimed with a compare-and-swap (as one u64: [`SockAddr4::to_u64`]) and
/// the service written after it; the proxy zeroes `client` once read. A slot held by
/// another client address sends the connection to `LB_ORIG_DST` instead, so a
/// collision costs a syscall, never a wrong answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSlot {
    pub client: SockAddr4,
    pub service: SockAddr4,
}

/// `LB_ORIG_DST` key: the client end of a proxied connection as the proxy sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub client: SockAddr4,
}

/// `LB_SOCKETS` key: a local socket by its 4-tuple as seen from itself, so the
/// peer's key is the same tuple swapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub local: SockAddr4,
    pub remote: SockAddr4,
}

/// `LB_HABITS` key: a client process and a service address it dials.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HabitKey {
    pub service: SockAddr4,
    pub tgid: u32,
}

/// `LB_SENDERS` value, by the sending socket's own tuple ([`SockKey`]): what `sk_msg`
/// knows of a socket before its bytes go anywhere.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sender {
    /// Whose habit the socket's first two messages teach (joined client sockets).
    pub habit: HabitKey,
    /// One of [`sender`].
    pub state: u32,
}

/// `Sender::state`.
pub mod sender {
    /// Kept on TCP for good: its peer was not in the socket map at its first message.
    pub const ON_TCP: u32 = 0;
    /// A client socket that joined the socket map and has sent nothing yet.
    pub const JOINED: u32 = 1;
    /// ... and has sent one message (so far a one-request connection).
    pub const SENT_ONE: u32 = 2;
    /// ... and has sent a second one: what it teaches is taught.
    pub const SENT_MORE: u32 = 3;
}

/// `LB_HABITS` value: what a client process's connections to a service have been
/// like (see [`habit`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Habit {
    /// Below zero: new connections stay off the socket map.
    pub score: i32,
    /// When a process kept off last let a connection join to keep learning
    /// ([`habit::clock`] units).
    pub explored_at: u32,
}

/// Whether a client's new connection joins the socket map, learned per process and
/// service. A socket-map membership costs a psock (allocated in the handshake, torn
/// down through RCU work at close: a few µs on the client's CPU and a p99 tail) and
/// pays back on every message after the first; a connection that carries one request
/// and closes only pays. So each joined client socket teaches its process's score for
/// the service: its first message debits it by 1, a second one credits it by 5 (a
/// keep-alive connection nets +4, since it saves far more than a one-request one
/// costs). A score below zero keeps new connections off the map, except one every
/// [`EXPLORE_EVERY`](habit::EXPLORE_EVERY) (~0.1 s), which keeps learning: a process
/// that turns to keep-alive is seen again within that, and one opening thousands of
/// one-request connections a second pays for ten psocks a second, not a share of
/// its connections. Both mistakes are cheap: a wrong skip loses one connection's
/// shortcut, a wrong join costs one psock. Pure functions, shared by the kernel
/// programs and the tests.
pub mod habit {
    use super::Habit;

    pub const FLOOR: i32 = -4;
    pub const CEILING: i32 = 8;
    /// A process kept off the socket map lets one new connection join, to keep
    /// learning, once in this many [`clock`] units (~0.1 s).
    pub const EXPLORE_EVERY: u32 = 100;

    /// Kernel time (ns) in 2^20 ns (~1.05 ms) units, wrapping.
    #[inline(always)]
    pub fn clock(ktime_ns: u64) -> u32 {
        (ktime_ns >> 20) as u32
    }

    impl Habit {
        /// A process first seen at `now` (no connection has taught anything yet): if
        /// its first lesson keeps it off, the next connection still explores.
        #[inline(always)]
        pub fn new(now: u32) -> Self {
            Self {
                score: 0,
                explored_at: now.wrapping_sub(EXPLORE_EVERY),
            }
        }

        /// Whether a new connection joins; `now` is read only for a process kept off,
        /// and an exploring join is recorded.
        #[inline(always)]
        pub fn admits(&mut self, now: impl FnOnce() -> u32) -> bool {
            if self.score >= 0 {
                return true;
            }
            let now = now();
            if now.wrapping_sub(self.explored_at) < EXPLORE_EVERY {
                return false;
            }
            self.explored_at = now;
            true
        }

        /// A joined socket sent its first message.
        #[inline(always)]
        pub fn first_message(&mut self) {
            self.score = if self.score - 1 < FLOOR {
                FLOOR
            } else {
                self.score - 1
            };
        }

        /// A joined socket sent its second message.
        #[inline(always)]
        pub fn second_message(&mut self) {
            self.score = if self.score + 5 > CEILING {
                CEILING
            } else {
                self.score + 5
            };
        }
    }
}

/// `LB_STATS` key (per-CPU): counters per service and subset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatKey {
    pub service: SockAddr4,
    pub subset: u32,
}

/// `LB_STATS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connects steered to this subset.
    pub connects: u64,
    /// Connects refused because the picked subset had no endpoint.
    pub refused: u64,
    /// North-south packets (`lb_xdp`) sent to this subset.
    pub xdp_packets: u64,
    /// North-south flows whose endpoint was picked in this subset (a retransmitted
    /// SYN, which picks the same, is not one more).
    pub xdp_flows: u64,
    /// North-south packets dropped because the picked subset had no endpoint.
    pub xdp_dropped: u64,
}

impl Stats {
    /// Adds `other`'s counts (a per-CPU map's values summed).
    pub fn add(&mut self, other: &Stats) {
        self.connects += other.connects;
        self.refused += other.refused;
        self.xdp_packets += other.xdp_packets;
        self.xdp_flows += other.xdp_flows;
        self.xdp_dropped += other.xdp_dropped;
    }
}

/// `LB_HEALTH` key: an endpoint of a kernel-path service whose connects are tracked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HealthKey {
    pub service: SockAddr4,
    pub endpoint: SockAddr4,
}

/// `LB_HEALTH` value: how the endpoint's connects ended, as `sock_ops` saw them, since
/// the entry was made (the daemon deletes it when it ejects the endpoint). Read and
/// updated without atomics by every CPU: a lost count only blurs a threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Failed connects (refused, reset or given up before established) in a row;
    /// zeroed by an established one.
    pub failed_in_a_row: u32,
    pub failed: u32,
    pub established: u32,
    pub _pad: u32,
}

/// `LB_SETTINGS[0]`: knobs the daemon sets for the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Process id (tgid) of the running daemon: its own sockets are never steered.
    pub self_tgid: u32,
    /// Proxy listener for `mode::PROXY` clients that join the socket map.
    pub proxy: SockAddr4,
    /// Proxy listener for the others (`TCP_DEFER_ACCEPT`: the proxy accepts a
    /// connection once its request has arrived, and reads it at once, with no wait
    /// in epoll); port 0: none, `proxy` takes everyone.
    pub proxy_deferred: SockAddr4,
    /// [`settings_flags`].
    pub flags: u32,
}

/// `Settings::flags`.
pub mod settings_flags {
    /// Shortcut the client <-> proxy hop: proxy-bound client sockets (of processes
    /// whose connections carry more than one message, see [`habit`](crate::habit))
    /// and the proxy's sockets accepting them join the socket map for the `sk_msg`
    /// redirect.
    pub const SK_MSG_CLIENT: u32 = 1;
    /// Shortcut the proxy <-> local backend hop: lb's upstream sockets to local
    /// backends (listening inside the cgroup) and their accepted sockets join the
    /// socket map.
    pub const SK_MSG_UPSTREAM: u32 = 2;
    /// Shortcut the client <-> backend hop of the kernel path: a client steered by
    /// `connect4` to a local backend (as for the client hop, if its process's
    /// connections carry more than one message) and the backend's accepted socket
    /// join the socket map (needs both inside the cgroup, not lb).
    pub const SK_MSG_KERNEL: u32 = 4;
    /// The proxy's listeners listen on every address (`0.0.0.0`): `lb_xdp` hands a
    /// north-south client to the proxy at the address it dialled (the node's), where
    /// `proxy` holds loopback for local clients.
    pub const PROXY_ON_EVERY_ADDRESS: u32 = 8;
    /// The hops' names (`--sk-msg`, `lb status`).
    pub const HOPS: [(&str, u32); 3] = [
        ("client", SK_MSG_CLIENT),
        ("upstream", SK_MSG_UPSTREAM),
        ("kernel", SK_MSG_KERNEL),
    ];
}

/// Indexes of `LB_COUNTERS` (per-CPU u64).
pub mod counters {
    /// Messages `sk_msg` redirected straight into the peer socket.
    pub const SK_MSG_REDIRECTED: u32 = 0;
    /// Connects to proxy-path services handed to the proxy.
    pub const PROXY_HANDOFFS: u32 = 1;
    /// Connects (and north-south flows) to proxy-path services that found no proxy
    /// listening and took the kernel split of the catch-all route instead.
    pub const PROXY_FALLBACKS: u32 = 2;
    /// Sockets whose peer was not in the socket map at their first message: their bytes
    /// stay on TCP for the connection's life (order), not redirected.
    pub const SK_MSG_STAYED_ON_TCP: u32 = 3;
    /// Client connections left off the socket map because their process's recent
    /// connections to the service each carried one message (see [`habit`](crate::habit)).
    pub const SK_MSG_SKIPPED: u32 = 4;
    /// North-south packets to a proxy-path service passed to the node's stack
    /// untranslated: the proxy listens on loopback only, out of an outside client's
    /// reach.
    pub const XDP_PROXY_PASSED: u32 = 5;
    /// North-south flows handed to the proxy (their original destination in
    /// `LB_ORIG_DST`, as `sock_ops` leaves it for local clients).
    pub const XDP_PROXY_FLOWS: u32 = 6;
    /// North-south flows whose picked endpoint runs on another node the node reaches
    /// through a gateway on an interface lb does not serve (no `--xdp-iface`): passed
    /// to the stack untranslated (kube-proxy's, if any), since lb would not see their
    /// replies to translate them back.
    pub const XDP_REMOTE_PASSED: u32 = 7;
    /// North-south flows forwarded to another node's endpoint by `lb_xdp` itself (the
    /// node's address and a port of its own as their source, see `xdp::SnatKey`).
    pub const XDP_REMOTE_FLOWS: u32 = 8;
    /// North-south packets dropped because the next hop towards their endpoint (or
    /// back to their client) had no resolved link-layer address yet: the daemon
    /// resolves it (`LB_XDP_NEIGH`), TCP sends the packet again.
    pub const XDP_NO_NEIGH: u32 = 9;
    /// New north-south flows to another node dropped because every SNAT port they
    /// could take towards their endpoint was in use.
    pub const XDP_SNAT_EXHAUSTED: u32 = 10;
    pub const COUNT: u32 = 11;
}

/// `LB_SERVICE_META` value (never read by the kernel): names for `lb status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceMeta {
    pub name: [u8; capacity::NAME_LEN],
    pub namespace: [u8; capacity::NAME_LEN],
    /// Configured weights were divided by this (their gcd) to make slots.
    pub weight_scale: u32,
    /// Why the service takes its datapath (see `lb status`), a small code.
    pub reason: u32,
}

impl Default for ServiceMeta {
    fn default() -> Self {
        Self {
            name: [0; capacity::NAME_LEN],
            namespace: [0; capacity::NAME_LEN],
            weight_scale: 1,
            reason: 0,
        }
    }
}

/// `LB_HOSTS` key (never read by the kernel): a Host header that named no
/// VirtualService host, per dialled service; the value counts requests (u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub service: SockAddr4,
    pub host: [u8; capacity::NAME_LEN],
}

/// `LB_SUBSET_META` key and value (never read by the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubsetMetaKey {
    pub service: SockAddr4,
    pub subset: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubsetMeta {
    pub name: [u8; capacity::NAME_LEN],
    /// Endpoints the subset has (also for subsets with weight 0, which own no slot).
    pub endpoint_count: u32,
    pub _pad: u32,
}

/// `LB_STATE[0]` (never read by the kernel): the daemon's last apply, for `lb status`
/// after the daemon is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// Unix time in milliseconds of the last successful apply (0: never).
    pub applied_at_ms: u64,
    /// Unix time in milliseconds of the last rejected config (0: none since).
    pub error_at_ms: u64,
    pub last_error_len: u32,
    pub _pad: u32,
    pub last_error: [u8; capacity::ERROR_LEN],
}

impl Default for State {
    fn default() -> Self {
        Self {
            applied_at_ms: 0,
            error_at_ms: 0,
            last_error_len: 0,
            _pad: 0,
            last_error: [0; capacity::ERROR_LEN],
        }
    }
}

const _: () = {
    assert!(size_of::<SockAddr4>() == 8);
    assert!(size_of::<Service>() == 16);
    assert!(size_of::<SlotKey>() == 16);
    assert!(size_of::<Slot>() == 16);
    assert!(size_of::<HealthKey>() == 16);
    assert!(size_of::<Health>() == 16);
    assert!(size_of::<EndpointKey>() == 20);
    assert!(size_of::<Origin>() == 32);
    assert!(size_of::<OriginSlot>() == 40);
    assert!(capacity::ORIGINS.is_power_of_two());
    assert!(size_of::<StatKey>() == 12);
    assert!(size_of::<SockKey>() == 16);
    assert!(size_of::<HabitKey>() == 12);
    assert!(size_of::<PortSlot>() == 16);
    assert!(size_of::<Habit>() == 8);
    assert!(size_of::<Sender>() == 16);
    assert!(size_of::<Stats>() == 40);
    assert!(size_of::<xdp::FlowKey>() == 20);
    assert!(size_of::<xdp::Flow>() == 24);
    assert!(size_of::<xdp::NatKey>() == 20);
    assert!(size_of::<xdp::SnatKey>() == 20);
    assert!(size_of::<xdp::SnatBack>() == 32);
    assert!(size_of::<Settings>() == 24);
    assert!(size_of::<ServiceMeta>() == 136);
    assert!(size_of::<SubsetMetaKey>() == 12);
    assert!(size_of::<State>() == 1048);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for SockAddr4 {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Slot {}
    unsafe impl aya::Pod for SlotChunk {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EndpointChunk {}
    unsafe impl aya::Pod for Origin {}
    unsafe impl aya::Pod for OriginSlot {}
    unsafe impl aya::Pod for ClientKey {}
    unsafe impl aya::Pod for StatKey {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for HabitKey {}
    unsafe impl aya::Pod for PortSlot {}
    unsafe impl aya::Pod for Habit {}
    unsafe impl aya::Pod for Sender {}
    unsafe impl aya::Pod for HostKey {}
    unsafe impl aya::Pod for Stats {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for ServiceMeta {}
    unsafe impl aya::Pod for SubsetMetaKey {}
    unsafe impl aya::Pod for SubsetMeta {}
    unsafe impl aya::Pod for State {}
    unsafe impl aya::Pod for HealthKey {}
    unsafe impl aya::Pod for Health {}
    unsafe impl aya::Pod for crate::xdp::FlowKey {}
    unsafe impl aya::Pod for crate::xdp::Flow {}
    unsafe impl aya::Pod for crate::xdp::NatKey {}
    unsafe impl aya::Pod for crate::xdp::SnatKey {}
    unsafe impl aya::Pod for crate::xdp::SnatBack {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn the_layout_fingerprint_follows_every_field_of_every_map() {
        let base = layout::fingerprint(&layout::MAPS, layout::EPOCH);
        assert_eq!(base, layout::FINGERPRINT);
        assert_ne!(layout::fingerprint(&layout::MAPS, layout::EPOCH + 1), base);
        let names: Vec<&str> = layout::MAPS.iter().map(|m| m.name).collect();
        for (i, name) in names.iter().enumerate() {
            assert!(!names[..i].contains(name), "{name} twice");
            for change in 0..5 {
                let mut maps = layout::MAPS;
                let m = &mut maps[i];
                match change {
                    0 => m.kind += 1,
                    1 => m.key_size += 4,
                    2 => m.value_size += 4,
                    3 => m.max_entries *= 2,
                    _ => m.flags ^= layout::flags::NO_PREALLOC,
                }
                assert_ne!(
                    layout::fingerprint(&maps, layout::EPOCH),
                    base,
                    "{name}: change {change}"
                );
            }
        }
    }

    #[test]
    fn port_round_trips_through_network_order() {
        // 10000 = 0x2710; in network order its bytes are 27 10.
        let be = port_to_be32(10000);
        assert_eq!((be as u16).to_ne_bytes(), [0x27, 0x10]);
        assert_eq!(port_from_be32(be), 10000);
    }

    #[test]
    fn sock_ops_remote_port_sits_in_the_upper_half() {
        // What the kernel hands sock_ops for remote port 10000 on a little-endian host:
        // the network-order u16 (bytes 27 10) shifted left by 16.
        let raw = (u16::from_ne_bytes([0x27, 0x10]) as u32) << 16;
        assert_eq!(remote_port_from_ctx(raw), 10000);
        assert_eq!(
            port_from_be32(raw),
            0,
            "the low-half conversion would read 0"
        );
    }

    /// Plays `connections` (messages each) of one process through its habit, as the
    /// kernel programs do, one every `every` clock units from `*now` on; returns how
    /// many joined the socket map.
    fn play(h: &mut Habit, now: &mut u32, every: u32, connections: &[u32]) -> usize {
        let mut joined = 0;
        for &messages in connections {
            *now += every;
            if !h.admits(|| *now) {
                continue;
            }
            joined += 1;
            if messages >= 1 {
                h.first_message();
            }
            if messages >= 2 {
                h.second_message();
            }
        }
        joined
    }

    #[test]
    fn habit_learns_one_request_connections_and_relearns_keep_alive() {
        let (mut h, mut now) = (Habit::new(0), 0);
        // A new process opens a keep-alive pool at once: every connection joins.
        assert_eq!(play(&mut h, &mut now, 0, &[100; 50]), 50);
        assert_eq!(h.score, habit::CEILING);
        // It turns to one request per connection, 1000 a second (one per clock unit)
        // for 800 units: nine more join (8 -> -1), then one per EXPLORE_EVERY (the
        // first at once: the habit was made long before).
        let joined = play(&mut h, &mut now, 1, &[1; 800]);
        let explorers = (800 - 9) / habit::EXPLORE_EVERY as usize;
        assert!(
            (explorers + 9..=explorers + 11).contains(&joined),
            "{joined}"
        );
        assert_eq!(h.score, habit::FLOOR);
        // At 20,000 a second it still pays for about ten psocks a second.
        let joined = play(&mut h, &mut now, 0, &[1; 20_000]);
        assert!(joined <= 1, "{joined}");
        // Back to keep-alive: the first explorer turns it round.
        now += habit::EXPLORE_EVERY;
        assert_eq!(play(&mut h, &mut now, 0, &[100; 40]), 40);
        assert_eq!(h.score, habit::CEILING);
    }

    #[test]
    fn habit_follows_what_pays_for_mixed_clients() {
        let runs = |mix: &dyn Fn(u32) -> u32| {
            let connections: Vec<u32> = (0..300).map(mix).collect();
            play(&mut Habit::new(0), &mut 0, 10, &connections)
        };
        // One keep-alive connection in five pays for the four one-request ones.
        assert_eq!(runs(&|i| if i % 5 == 0 { 50 } else { 1 }), 300);
        // One in three one-request connections: the leading one keeps the next off,
        // but that one explores at once, is keep-alive, and from then on all join.
        assert_eq!(runs(&|i| if i % 3 == 0 { 1 } else { 50 }), 300);
        // One in ten keep-alive: mostly skipped.
        assert!(runs(&|i| if i % 10 == 0 { 50 } else { 1 }) < 60);
    }

    #[test]
    fn an_address_as_u64_is_its_bytes_in_memory() {
        let a = SockAddr4::new([127, 0, 0, 1], 40000);
        // SAFETY: SockAddr4 is 8 bytes of plain data, its padding zeroed by `new`.
        let raw: u64 = unsafe { core::mem::transmute(a) };
        assert_eq!(a.to_u64(), raw);
        assert_ne!(a.to_u64(), 0);
        assert_ne!(a.to_u64(), SockAddr4::new([127, 0, 0, 2], 40000).to_u64());
        assert_ne!(a.to_u64(), SockAddr4::new([127, 0, 0, 1], 40001).to_u64());
    }

    #[test]
    fn a_cookie_shares_its_origin_slot_only_with_cookies_a_ring_apart() {
        let ring = capacity::ORIGINS as u64;
        assert_eq!(origin_slot(7), origin_slot(7 + ring));
        assert_ne!(origin_slot(7), origin_slot(8));
        assert!(origin_slot(u64::MAX) < capacity::ORIGINS);
    }

    #[test]
    fn user_ip4_keeps_network_byte_order() {
        let a = SockAddr4::new([127, 10, 0, 1], 10000);
        let back = SockAddr4::from_sock_addr(a.user_ip4(), a.user_port());
        assert_eq!(a, back);
        assert_eq!(a.user_ip4().to_ne_bytes(), [127, 10, 0, 1]);
    }
}
