//! lb's kernel datapath: cgroup socket hooks that steer connects to service addresses.
//!
//! * `lb_connect4` — weighted pick of subset then endpoint, rewrite of the destination.
//! * `lb_getpeername4` — the client sees the service address it dialled, not the backend.
//! * `lb_sockops` — on established, proxy-bound client sockets are recorded (original
//!   destination); they, lb's upstream sockets and kernel-path clients to local
//!   backends join the socket map (clients only if their process's connections carry
//!   more than one message: `lb_common::habit`), and so do the sockets accepting them;
//!   listeners inside the cgroup are recorded (local backends).
//! * `lb_sk_msg` — redirects bytes between two local sockets in the socket map, and
//!   learns from a joined client's first two messages.
//!
//! Every program fails open: on any unexpected error the socket proceeds untouched.
//! Map types and names are shared with user space through lb-common.
#![no_std]
#![no_main]
// BPF inline assembly (`compare_and_swap`); the crate is built with RUSTC_BOOTSTRAP
// already, for `-Z build-std`.
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_F_INGRESS, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB, bpf_sock_tuple, sk_action::SK_PASS,
    },
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval, bpf_sk_lookup_tcp, bpf_sk_release,
    },
    macros::{btf_map, cgroup_sock_addr, sk_msg, sock_ops},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext},
};
use lb_common::{
    ClientKey, EndpointKey, Habit, HabitKey, Origin, OriginSlot, PortSlot, Sender, Service,
    Settings, SlotKey, SockAddr4, SockKey, StatKey, Stats, capacity as cap, counters, habit, mode,
    remote_port_from_ctx, sender, settings_flags,
};

const IPPROTO_TCP: u32 = 6;
const ECONNREFUSED: i32 = 111;
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
const MMAPABLE: usize = BPF_F_MMAPABLE as usize;

#[btf_map(pin_by_name)]
static LB_SERVICES: HashMap<SockAddr4, Service, { cap::SERVICES as usize }, NO_PREALLOC> =
    HashMap::new();
#[btf_map(pin_by_name)]
static LB_SLOTS: HashMap<SlotKey, lb_common::Slot, { cap::SLOTS as usize }, NO_PREALLOC> =
    HashMap::new();
#[btf_map(pin_by_name)]
static LB_ENDPOINTS: HashMap<EndpointKey, SockAddr4, { cap::ENDPOINTS as usize }, NO_PREALLOC> =
    HashMap::new();
#[btf_map(pin_by_name)]
static LB_ORIGINS: Array<OriginSlot, { cap::ORIGINS as usize }> = Array::new();
#[btf_map(pin_by_name)]
static LB_ORIG_DST: LruHashMap<ClientKey, SockAddr4, { cap::ORIG_DST as usize }> =
    LruHashMap::new();
/// The fast path of `LB_ORIG_DST`, by client port (see `lb_common::PortSlot`):
/// mmap-able, so the proxy reads it without a syscall.
#[btf_map(pin_by_name)]
static LB_ORIG_DST_BY_PORT: Array<PortSlot, { cap::PORTS as usize }, MMAPABLE> = Array::new();
#[btf_map(pin_by_name)]
static LB_SOCKETS: SockHash<SockKey, { cap::SOCKETS as usize }> = SockHash::new();
/// Addresses that sockets inside the cgroup listen on (learned at TCP_LISTEN_CB, seeded
/// by the daemon for listeners older than the attach): the endpoints whose accepted
/// sockets will join the socket map, so the only connects worth a shortcut. An
/// address listened on by a process outside the cgroup never joins: a connect to it
/// pays for no socket map. Never removed (LRU): a stale entry costs a socket map
/// membership that finds no peer, never a wrong delivery.
#[btf_map(pin_by_name)]
static LB_LOCAL_LISTENERS: LruHashMap<SockAddr4, u32, { cap::LOCAL_LISTENERS as usize }> =
    LruHashMap::new();
/// Sending sockets by their own tuple: those kept on TCP (their peer was not in the
/// socket map at their first message), and joined client sockets whose first two
/// messages teach their process's habit (see `lb_sk_msg`).
#[btf_map(pin_by_name)]
static LB_SENDERS: LruHashMap<SockKey, Sender, { cap::SOCKETS as usize }> = LruHashMap::new();
/// The tuple the accepting side's socket will have, for each connect that joined the
/// socket map (a client handed to the proxy, lb's upstream connects, kernel-path
/// clients of local backends): that socket joins too at PASSIVE_ESTABLISHED (when its
/// listener runs inside the cgroup, as lb and local pods do on a node). A connect
/// that did not join leaves no mark, so its peer pays for no psock either.
#[btf_map(pin_by_name)]
static LB_PEERS_TO_JOIN: LruHashMap<SockKey, u32, { cap::PEERS_TO_JOIN as usize }> =
    LruHashMap::new();
/// Per client process and service: do its connections carry more than one message?
/// (`lb_common::habit`; LRU, a forgotten process starts again at "join").
#[btf_map(pin_by_name)]
static LB_HABITS: LruHashMap<HabitKey, Habit, { cap::HABITS as usize }> = LruHashMap::new();
#[btf_map(pin_by_name)]
static LB_STATS: PerCpuHashMap<StatKey, Stats, { cap::STATS as usize }> = PerCpuHashMap::new();
#[btf_map(pin_by_name)]
static LB_SETTINGS: Array<Settings, 1> = Array::new();
#[btf_map(pin_by_name)]
static LB_COUNTERS: PerCpuArray<u64, { counters::COUNT as usize }> = PerCpuArray::new();
// Read only by user space (`lb status`); declared here so they are created, typed and
// pinned with the others.
#[btf_map(pin_by_name)]
static LB_SERVICE_META: HashMap<
    SockAddr4,
    lb_common::ServiceMeta,
    { cap::SERVICES as usize },
    NO_PREALLOC,
> = HashMap::new();
#[btf_map(pin_by_name)]
static LB_SUBSET_META: HashMap<
    lb_common::SubsetMetaKey,
    lb_common::SubsetMeta,
    { cap::STATS as usize },
    NO_PREALLOC,
> = HashMap::new();
#[btf_map(pin_by_name)]
static LB_STATE: Array<lb_common::State, 1> = Array::new();
#[btf_map(pin_by_name)]
static LB_HOSTS: HashMap<lb_common::HostKey, u64, { cap::HOSTS as usize }, NO_PREALLOC> =
    HashMap::new();

/// What `connect4` decided.
enum Verdict {
    /// Let the connect proceed (rewritten or untouched).
    Allow,
    /// The picked subset has no endpoint: fail the connect at once.
    Refuse,
}

#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Verdict::Allow => 1,
        Verdict::Refuse => {
            // Returning 0 alone gives EPERM; ECONNREFUSED says what happened.
            // SAFETY: helper available to cgroup programs since 5.18.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            0
        }
    }
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Verdict {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    // connect4 also fires for UDP connect(); only TCP is steered.
    if sa.protocol != IPPROTO_TCP {
        return Verdict::Allow;
    }
    let dialled = SockAddr4::from_sock_addr(sa.user_ip4, sa.user_port);
    // SAFETY: the returned reference is read at once, before any update of the map.
    let Some(svc) = (unsafe { LB_SERVICES.get(&dialled) }) else {
        // lb's proxy connecting to a local backend (one listening inside the cgroup):
        // both ends are local sockets, so the upstream hop can be shortcut too (see
        // on_active_established).
        if shortcut(settings_flags::SK_MSG_UPSTREAM)
            && is_own_socket()
            && is_local_listener(dialled)
        {
            remember_origin(ctx, dialled, dialled, mode::UPSTREAM, 0);
        }
        return Verdict::Allow;
    };
    let svc = *svc;
    if is_own_socket() {
        return Verdict::Allow;
    }
    if svc.mode == mode::PROXY {
        // A client that joins the socket map goes to the proxy listener that accepts
        // at once (its socket must exist before the client's first write, which is
        // redirected into it); the others go to the one that accepts a connection
        // once its request is there (TCP_DEFER_ACCEPT: no wait in epoll).
        let habit = HabitKey {
            service: dialled,
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        };
        let join = shortcut(settings_flags::SK_MSG_CLIENT) && client_joins(&habit);
        if let Some(proxy) = live_proxy(ctx, join) {
            sa.user_ip4 = proxy.user_ip4();
            sa.user_port = proxy.user_port();
            remember_origin(ctx, dialled, proxy, mode::PROXY, join as u32);
            bump(counters::PROXY_HANDOFFS);
            return Verdict::Allow;
        }
        // No proxy listening (daemon stopped, killed, upgrading): the kernel split of
        // the catch-all route instead of a refused connect.
        bump(counters::PROXY_FALLBACKS);
    }
    if svc.slot_count == 0 {
        return Verdict::Allow;
    }
    let slot_key = SlotKey {
        service: dialled,
        revision: svc.revision,
        slot: random() % svc.slot_count,
    };
    // SAFETY: copied out at once.
    let Some(slot) = (unsafe { LB_SLOTS.get(&slot_key) }).copied() else {
        return Verdict::Allow;
    };
    let stat_key = StatKey {
        service: dialled,
        subset: slot.subset,
    };
    if slot.endpoint_count == 0 {
        count(&stat_key, |s| s.refused += 1);
        return Verdict::Refuse;
    }
    let ep_key = EndpointKey {
        service: dialled,
        revision: svc.revision,
        subset: slot.subset,
        index: random() % slot.endpoint_count,
    };
    // SAFETY: copied out at once.
    let Some(backend) = (unsafe { LB_ENDPOINTS.get(&ep_key) }).copied() else {
        return Verdict::Allow;
    };
    // The verifier only accepts 32-bit stores to user_ip4 / user_port.
    sa.user_ip4 = backend.user_ip4();
    sa.user_port = backend.user_port();
    remember_origin(ctx, dialled, backend, mode::KERNEL, 0);
    count(&stat_key, |s| s.connects += 1);
    Verdict::Allow
}

/// The proxy listener for a client that joins the socket map or not (see
/// `Settings::proxy_deferred`), if a socket listens on it right now. A killed
/// daemon's listener is gone at once, so no connect is ever sent to a dead proxy.
#[inline(always)]
fn live_proxy(ctx: &SockAddrContext, join: bool) -> Option<SockAddr4> {
    let settings = LB_SETTINGS.get(0)?;
    let proxy = if join || settings.proxy_deferred.port == 0 {
        settings.proxy
    } else {
        settings.proxy_deferred
    };
    if proxy.port == 0 {
        return None;
    }
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // SAFETY: writing the ipv4 member of the union we own.
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv4;
        t.daddr = proxy.user_ip4();
        t.dport = proxy.port.to_be();
    }
    let size = core::mem::size_of::<u32>() as u32 * 3;
    // SAFETY: helper available to sock_addr programs; the result is released below.
    let sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` came from bpf_sk_lookup_tcp and is released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    Some(proxy)
}

/// Whether a socket inside the cgroup listens on `addr` (or on every address at its
/// port): a local backend, whose accepted socket will join the socket map.
#[inline(always)]
fn is_local_listener(addr: SockAddr4) -> bool {
    // SAFETY: only tested for presence.
    unsafe {
        LB_LOCAL_LISTENERS.get(&addr).is_some()
            || LB_LOCAL_LISTENERS
                .get(&SockAddr4::new([0; 4], addr.port))
                .is_some()
    }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(p) = LB_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

/// lb's own sockets (its proxy's upstream connects, the daemon's checks) are never
/// steered, also when lb runs inside the attached cgroup.
#[inline(always)]
fn is_own_socket() -> bool {
    match LB_SETTINGS.get(0) {
        Some(s) => s.self_tgid != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 == s.self_tgid,
        None => false,
    }
}

/// Whether a client process's new connection to a service joins the socket map:
/// unless its connections have been carrying one message each (`lb_common::habit`).
#[inline(always)]
fn client_joins(habit: &HabitKey) -> bool {
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

#[inline(always)]
fn remember_origin(
    ctx: &SockAddrContext,
    service: SockAddr4,
    backend: SockAddr4,
    mode: u32,
    join: u32,
) {
    // SAFETY: the cookie helper accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let origin = Origin {
        service,
        backend,
        mode,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        join,
        _pad: 0,
    };
    // A ring: a slot is reused after ORIGINS newer cookies; getpeername of a socket
    // that old then shows the backend (as an evicting LRU hash would).
    if let Some(slot) = LB_ORIGINS.get_ptr_mut(lb_common::origin_slot(cookie)) {
        // SAFETY: a map value pointer, valid for the program's run. Volatile: the
        // stores stay in this order (cookie zeroed, origin, cookie), which
        // `origin_of` relies on.
        unsafe {
            core::ptr::write_volatile(&raw mut (*slot).cookie, 0);
            core::ptr::write_volatile(&raw mut (*slot).origin, origin);
            core::ptr::write_volatile(&raw mut (*slot).cookie, cookie);
        }
    }
}

/// What the socket with `cookie` dialled, if `connect4` steered it (and its slot has
/// not been reused since).
#[inline(always)]
fn origin_of(cookie: u64) -> Option<Origin> {
    let slot = LB_ORIGINS.get_ptr(lb_common::origin_slot(cookie))?;
    // SAFETY: a map value pointer, valid for the program's run; the cookie is read
    // before and after the origin, so a slot rewritten meanwhile is not taken.
    unsafe {
        if core::ptr::read_volatile(&raw const (*slot).cookie) != cookie {
            return None;
        }
        let origin = core::ptr::read_volatile(&raw const (*slot).origin);
        (core::ptr::read_volatile(&raw const (*slot).cookie) == cookie).then_some(origin)
    }
}

#[inline(always)]
fn count(key: &StatKey, f: impl FnOnce(&mut Stats)) {
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

/// The habits' clock (`lb_common::habit::clock`).
#[inline(always)]
fn now() -> u32 {
    // SAFETY: no preconditions.
    habit::clock(unsafe { bpf_ktime_get_ns() })
}

#[inline(always)]
fn random() -> u32 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_prandom_u32() }
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    // The proxy's accepted sockets (lb inside the cgroup: accept4 asks for the peer)
    // were never steered: no cookie, no LRU lookup, which missed the cache there at
    // every new connection (~1 % of the proxy's CPU, perf).
    // SAFETY: `sk` of a sock_addr context is always a valid socket; src_port is
    // host order, src_ip4 network order.
    let local = unsafe {
        let sk = &*sa.__bindgen_anon_1.sk;
        SockAddr4::new(sk.src_ip4.to_ne_bytes(), sk.src_port as u16)
    };
    if LB_SETTINGS
        .get(0)
        .is_some_and(|s| s.proxy == local || s.proxy_deferred == local)
    {
        return 1;
    }
    // SAFETY: the cookie helper accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(origin) = origin_of(cookie) {
        let peer = SockAddr4::from_sock_addr(sa.user_ip4, sa.user_port);
        if peer == origin.backend {
            sa.user_ip4 = origin.service.user_ip4();
            sa.user_port = origin.service.user_port();
        }
    }
    // getpeername4 must return 1 (the verifier rejects anything else).
    1
}

#[sock_ops]
pub fn lb_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => {
            let listener = SockAddr4::new(ctx.local_ip4().to_ne_bytes(), ctx.local_port() as u16);
            let _ = LB_LOCAL_LISTENERS.insert(&listener, &1, 0);
        }
        _ => {}
    }
    0
}

/// The socket's own tuple as the socket map keys it: (local, remote).
/// sock_ops: local_port is host order, remote_port network order.
#[inline(always)]
fn sock_key(ctx: &SockOpsContext) -> SockKey {
    SockKey {
        local: SockAddr4::new(ctx.local_ip4().to_ne_bytes(), ctx.local_port() as u16),
        remote: SockAddr4::new(
            ctx.remote_ip4().to_ne_bytes(),
            remote_port_from_ctx(ctx.remote_port()),
        ),
    }
}

/// Whether the daemon asked for the sk_msg shortcut of `hop` (a settings flag).
#[inline(always)]
fn shortcut(hop: u32) -> bool {
    LB_SETTINGS.get(0).is_some_and(|s| s.flags & hop != 0)
}

/// A socket lb cares about is established (on the connecting side):
/// * a client handed to the proxy: record what it dialled under the 4-tuple the proxy
///   will see;
/// * that client, lb's own upstream connect, or a kernel-path client steered to a
///   local backend: put it in the socket map so `lb_sk_msg` can shortcut its bytes,
///   and leave the tuple the accepting socket will have, so that one joins too.
#[inline(always)]
fn on_active_established(ctx: &SockOpsContext) {
    // SAFETY: the cookie helper accepts a sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(origin) = origin_of(cookie) else {
        return;
    };
    let mut key = sock_key(ctx);
    let hop = match origin.mode {
        mode::PROXY => {
            remember_orig_dst(key.local, origin.service);
            settings_flags::SK_MSG_CLIENT
        }
        mode::UPSTREAM => settings_flags::SK_MSG_UPSTREAM,
        // A kernel-path client steered to a local backend (one listening inside the
        // cgroup, as a local pod does), whose accepted socket joins too.
        mode::KERNEL
            if shortcut(settings_flags::SK_MSG_KERNEL) && is_local_listener(origin.backend) =>
        {
            settings_flags::SK_MSG_KERNEL
        }
        _ => return,
    };
    // SAFETY: the context pointer is valid for the program's run.
    let ops = unsafe { &mut *ctx.ops };
    // A socket that already sent bytes (TCP Fast Open data in the SYN) must stay on
    // TCP: its later bytes, redirected, would be read before those.
    if !shortcut(hop) || ops.data_segs_out != 0 {
        return;
    }
    // A client joins only if its process's connections to this service have been
    // carrying more than one message (lb's own upstream sockets are pooled: always);
    // for a proxy-bound one connect4 decided, as it picked the listener.
    if origin.mode != mode::UPSTREAM {
        let habit = HabitKey {
            service: origin.service,
            tgid: origin.tgid,
        };
        let joins = if origin.mode == mode::PROXY {
            origin.join != 0
        } else {
            client_joins(&habit)
        };
        if !joins {
            return;
        }
        let joined = Sender {
            habit,
            state: sender::JOINED,
        };
        // Replaces any mark a closed socket with the same tuple left.
        let _ = LB_SENDERS.insert(&key, &joined, 0);
    }
    let peer = SockKey {
        local: key.remote,
        remote: key.local,
    };
    let _ = LB_PEERS_TO_JOIN.insert(&peer, &1, 0);
    let _ = LB_SOCKETS.update(&mut key, ops, 0);
}

/// What a client handed to the proxy dialled, where the proxy will look for it: the
/// slot of its port if free (or left by an earlier socket with the same address and
/// port), else the LRU hash. The slot is claimed with a compare-and-swap of its
/// `client`, so two clients racing for one port never both think they hold it; the
/// service is written after the claim and read by the proxy only after accept(),
/// which this callback precedes (it runs before the handshake's last ACK is sent).
#[inline(always)]
fn remember_orig_dst(client: SockAddr4, service: SockAddr4) {
    if let Some(slot) = LB_ORIG_DST_BY_PORT.get_ptr_mut(client.port as u32) {
        let mine = client.to_u64();
        let claim = slot.cast::<u64>();
        // SAFETY: a map value pointer, valid for the program's run and 8-byte aligned
        // (array values are); `client` is its first 8 bytes.
        let held = unsafe { core::ptr::read_volatile(claim) };
        if (held == 0 || held == mine) && unsafe { compare_and_swap(claim, held, mine) } == held {
            // SAFETY: as above; the slot is this socket's now.
            unsafe { (*slot).service = service };
            return;
        }
    }
    let _ = LB_ORIG_DST.insert(&ClientKey { client }, &service, 0);
}

/// BPF's atomic compare-and-exchange (`BPF_ATOMIC | BPF_CMPXCHG`, kernel 5.12+):
/// stores `new` at `p` if it holds `old`, and returns what it held. Written as
/// assembly: Rust's BPF target spec has no `atomic-cas` (older BPF cpus lacked it),
/// and the intrinsic's bitcode is refused by bpf-linker ("Invalid record").
///
/// # Safety
/// `p` must point at 8 aligned bytes of map memory.
#[inline(always)]
unsafe fn compare_and_swap(p: *mut u64, old: u64, new: u64) -> u64 {
    let held: u64;
    // SAFETY: per the function's contract.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") old => held,
            options(nostack),
        );
    }
    held
}

/// The accepting side of a connect that joined the socket map (the mark its
/// connecting side left): the proxy accepting a client (only seen when lb runs inside
/// the attached cgroup, as on a node where the programs sit on the root cgroup), a
/// backend inside the cgroup accepting lb's upstream connect or a kernel-path client.
/// It joins here, in the handshake, before the connecting side can send a byte (its
/// ACTIVE_ESTABLISHED ran before it sent the handshake's last ACK), so both directions
/// can be shortcut.
#[inline(always)]
fn on_passive_established(ctx: &SockOpsContext) {
    let mut key = sock_key(ctx);
    // SAFETY: only tested for presence.
    if unsafe { LB_PEERS_TO_JOIN.get(&key) }.is_none() {
        return;
    }
    let _ = LB_PEERS_TO_JOIN.remove(&key);
    // SAFETY: the context pointer is valid for the program's run.
    let ops = unsafe { &mut *ctx.ops };
    // Bytes already received by TCP (Fast Open) would be read after redirected ones.
    if ops.data_segs_in == 0 {
        let _ = LB_SOCKETS.update(&mut key, ops, 0);
    }
}

#[sk_msg]
pub fn lb_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    let md = unsafe { &*ctx.msg };
    // One path per sending socket, chosen at its first message. tcp_bpf reads
    // redirected bytes before anything in the normal receive queue, so a stream that
    // went partly by TCP and then by redirect would be read out of order (seen with
    // h2c, whose preface, SETTINGS and HEADERS are separate writes). A socket whose
    // peer is in the map at its first message is redirected for good (the peer joined
    // at ESTABLISHED and stays until it closes); one whose peer is not is marked in
    // `LB_SK_MSG_TCP` and stays on TCP for good. A TCP socket receives only from its
    // peer, so the receiver never mixes the two. Nothing is allocated per connection
    // on the redirected path (socket storage cost ~3 % of the machine in close mode).
    // Bytes sent on `local -> remote` are delivered to the socket whose own tuple is
    // `remote -> local`. sk_msg_md: local_port host order, remote_port network order.
    let own = SockKey {
        local: SockAddr4::new(md.local_ip4.to_ne_bytes(), md.local_port as u16),
        remote: SockAddr4::new(
            md.remote_ip4.to_ne_bytes(),
            remote_port_from_ctx(md.remote_port),
        ),
    };
    let known = LB_SENDERS.get_ptr_mut(&own);
    if let Some(s) = known {
        // SAFETY: a map value pointer, valid for the program's run.
        if unsafe { (*s).state } == sender::ON_TCP {
            return SK_PASS;
        }
    }
    let mut peer = SockKey {
        local: own.remote,
        remote: own.local,
    };
    // On a miss the helper answers SK_DROP without choosing a target; returning SK_PASS
    // regardless sends the bytes the normal way, so a missing peer never drops data.
    if LB_SOCKETS.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == SK_PASS as i64 {
        bump(counters::SK_MSG_REDIRECTED);
        if let Some(s) = known {
            // SAFETY: as above; a lost update between CPUs only blurs a heuristic.
            learn(unsafe { &mut *s });
        }
    } else {
        // First message without a peer (or the peer has closed): TCP from now on.
        // A stale mark (a later socket with the same tuple) only keeps that socket on
        // TCP too, which is always correct.
        let on_tcp = Sender {
            habit: HabitKey::default(),
            state: sender::ON_TCP,
        };
        let _ = LB_SENDERS.insert(&own, &on_tcp, 0);
        bump(counters::SK_MSG_STAYED_ON_TCP);
    }
    SK_PASS
}

/// A joined client socket's first and second messages teach its process's habit for
/// the service (`lb_common::habit`); later ones cost only the lookup above.
#[inline(always)]
fn learn(s: &mut Sender) {
    let first = match s.state {
        sender::JOINED => true,
        sender::SENT_ONE => false,
        _ => return,
    };
    s.state = if first {
        sender::SENT_ONE
    } else {
        sender::SENT_MORE
    };
    let step = |h: &mut Habit| {
        if first {
            h.first_message();
        } else {
            h.second_message();
        }
    };
    match LB_HABITS.get_ptr_mut(&s.habit) {
        // SAFETY: a map value pointer, valid for the program's run.
        Some(h) => step(unsafe { &mut *h }),
        None => {
            let mut h = Habit::new(now());
            step(&mut h);
            let _ = LB_HABITS.insert(&s.habit, &h, 0);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
