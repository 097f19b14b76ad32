//! `connect4` steers a connect to a service address (a weighted subset, then an
//! endpoint; or the proxy), records where it went in the origin ring, and
//! `getpeername4` shows the client the address it dialled.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use lb_common::{
    HabitKey, Origin, SockAddr4, StatKey, counters, mode, service_flags, settings_flags, slot_flags,
};

use crate::maps::{
    LB_ORIGINS, LB_SERVICES, LB_SETTINGS, bump, client_joins, count, endpoint_at,
    is_local_listener, is_own_socket, live_proxy, random, shortcut, slot_at,
};

const IPPROTO_TCP: u32 = 6;
const ECONNREFUSED: i32 = 111;

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
            remember_origin(ctx, dialled, dialled, mode::UPSTREAM, 0, 0);
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
        if let Some(proxy) = live_proxy(join) {
            sa.user_ip4 = proxy.user_ip4();
            sa.user_port = proxy.user_port();
            remember_origin(ctx, dialled, proxy, mode::PROXY, join as u32, 0);
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
    // Computed once, only when a source hash is asked for.
    let mut client: Option<u32> = None;
    let slot = if svc.flags & service_flags::HASH_SUBSET != 0 {
        *client.insert(client_of(ctx, sa)) % svc.slot_count
    } else {
        random() % svc.slot_count
    };
    let Some(slot) = slot_at(dialled, svc.revision, slot) else {
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
    let index = if slot.flags & slot_flags::HASH_ENDPOINT != 0 {
        let h = client.unwrap_or_else(|| client_of(ctx, sa));
        lb_common::endpoint_pick(h, slot.endpoint_count)
    } else {
        random() % slot.endpoint_count
    };
    let Some(backend) = endpoint_at(dialled, svc.revision, slot.subset, index) else {
        return Verdict::Allow;
    };
    // The verifier only accepts 32-bit stores to user_ip4 / user_port (a 16-bit store
    // to user_port: "invalid bpf_context access off=24 size=2").
    sa.user_ip4 = backend.user_ip4();
    sa.user_port = backend.user_port();
    remember_origin(ctx, dialled, backend, mode::KERNEL, 0, svc.flags);
    count(&stat_key, |s| s.connects += 1);
    Verdict::Allow
}

/// The client's hash for source hashing ([`lb_common::client_hash`]): its bound
/// address, else its network namespace.
#[inline(always)]
fn client_of(ctx: &SockAddrContext, sa: &aya_ebpf::bindings::bpf_sock_addr) -> u32 {
    // SAFETY: `sk` of a sock_addr context is always a valid socket.
    let bound = unsafe { (*sa.__bindgen_anon_1.sk).src_ip4 };
    // SAFETY: the helper accepts a sock_addr context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    lb_common::client_hash(bound, netns)
}

#[inline(always)]
pub fn remember_origin(
    ctx: &SockAddrContext,
    service: SockAddr4,
    backend: SockAddr4,
    mode: u32,
    join: u32,
    flags: u32,
) {
    // SAFETY: the cookie helper accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let origin = Origin {
        service,
        backend,
        mode,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        join,
        flags,
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
pub fn origin_of(cookie: u64) -> Option<Origin> {
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

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    // The proxy's accepted sockets (lb inside the cgroup: accept4 asks for the peer)
    // were never steered: no cookie, no origin lookup, which missed the cache there at
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
    // getpeername4 must return 1; the verifier, for 0: "At program exit the register
    // R0 has smin=0 smax=0 should have been in [1, 1]".
    1
}
