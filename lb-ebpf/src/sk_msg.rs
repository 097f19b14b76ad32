//! `sk_msg`: bytes between two local sockets in the socket map go straight into the
//! peer's receive queue; a joined client's first two messages teach its process's
//! habit.

use aya_ebpf::{
    bindings::BPF_F_INGRESS, bindings::sk_action::SK_PASS, macros::sk_msg, programs::SkMsgContext,
};
use lb_common::{
    Habit, HabitKey, Sender, SockAddr4, SockKey, counters, remote_port_from_ctx, sender,
};

use crate::maps::{LB_HABITS, LB_SENDERS, LB_SOCKETS, bump, now};

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
    // `LB_SENDERS` and stays on TCP for good. A TCP socket receives only from its
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
