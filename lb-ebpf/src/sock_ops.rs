//! `sock_ops`: on established, a proxy-bound client's original destination is
//! recorded for the proxy; sockets worth the sk_msg shortcut join the socket map with
//! their accepting peer; listeners inside the cgroup are recorded (local backends).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE, BPF_TCP_SYN_SENT,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use lb_common::{
    ClientKey, HabitKey, Health, HealthKey, Origin, Sender, SockAddr4, SockKey, mode,
    remote_port_from_ctx, sender, service_flags, settings_flags,
};

use crate::connect::origin_of;
use crate::maps::{
    LB_HEALTH, LB_LOCAL_LISTENERS, LB_ORIG_DST, LB_ORIG_DST_BY_PORT, LB_PEERS_TO_JOIN, LB_SENDERS,
    LB_SOCKETS, client_joins, is_local_listener, shortcut,
};

#[sock_ops]
pub fn lb_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(&ctx),
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB => {
            // Only sockets `on_connect` asked state callbacks for get here.
            if ctx.arg(0) == BPF_TCP_SYN_SENT
                && ctx.arg(1) == BPF_TCP_CLOSE
                && let Some(origin) = origin_of(cookie(&ctx))
            {
                record_health(&origin, false);
            }
        }
        BPF_SOCK_OPS_TCP_LISTEN_CB => {
            let listener = SockAddr4::new(ctx.local_ip4().to_ne_bytes(), ctx.local_port() as u16);
            let _ = LB_LOCAL_LISTENERS.insert(&listener, &1, 0);
        }
        _ => {}
    }
    0
}

fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the cookie helper accepts a sock_ops context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// A kernel-path connect to a service with outlier detection: ask for state
/// callbacks, so a connect that ends before it is established (refused, reset, given
/// up by the client) is seen. Cleared again once established, so the socket's life
/// costs no more callbacks.
#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    let Some(origin) = origin_of(cookie(ctx)) else {
        return;
    };
    if origin.mode == mode::KERNEL && origin.flags & service_flags::TRACK_HEALTH != 0 {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

/// Counts how a tracked connect to an endpoint ended (`LB_HEALTH`).
#[inline(always)]
fn record_health(origin: &Origin, established: bool) {
    let key = HealthKey {
        service: origin.service,
        endpoint: origin.backend,
    };
    let count = |h: &mut Health| {
        if established {
            h.failed_in_a_row = 0;
            h.established = h.established.wrapping_add(1);
        } else {
            h.failed_in_a_row = h.failed_in_a_row.saturating_add(1);
            h.failed = h.failed.wrapping_add(1);
        }
    };
    match LB_HEALTH.get_ptr_mut(&key) {
        // SAFETY: a map value pointer, valid for the program's run; a lost update
        // between CPUs only blurs a threshold.
        Some(h) => count(unsafe { &mut *h }),
        None => {
            let mut h = Health::default();
            count(&mut h);
            let _ = LB_HEALTH.insert(&key, &h, 0);
        }
    }
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

/// A socket lb cares about is established (on the connecting side):
/// * a client handed to the proxy: record what it dialled under the 4-tuple the proxy
///   will see;
/// * that client, lb's own upstream connect, or a kernel-path client steered to a
///   local backend: put it in the socket map so `lb_sk_msg` can shortcut its bytes,
///   and leave the tuple the accepting socket will have, so that one joins too.
#[inline(always)]
fn on_active_established(ctx: &SockOpsContext) {
    let Some(origin) = origin_of(cookie(ctx)) else {
        return;
    };
    let flags = ctx.cb_flags();
    if flags & BPF_SOCK_OPS_STATE_CB_FLAG != 0 {
        record_health(&origin, true);
        let _ = ctx.set_cb_flags((flags & !BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
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
