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
//! * `lb_xdp` — on the node's ingress interfaces (`--xdp-iface`): packets to a service
//!   address from outside the node get their flow's endpoint (the same weighted
//!   slots) and are translated to it; `lb_tc_egress` translates the replies back. A
//!   flow to another node's endpoint is forwarded by `lb_xdp` both ways (SNAT).
//!
//! Every program fails open: on any unexpected error the socket proceeds untouched.
//! Map types and names are shared with user space through lb-common. One file per
//! hook: `connect` (connect4, getpeername4 and the origin ring), `sock_ops`,
//! `sk_msg`, `xdp` (with `snat` and `route`), `tc_egress` (with `packet`'s headers);
//! the maps and what they all share in `maps`.
#![no_std]
#![no_main]
// BPF inline assembly (`compare_and_swap`); the crate is built with RUSTC_BOOTSTRAP
// already, for `-Z build-std`.
#![feature(asm_experimental_arch)]

mod connect;
mod maps;
mod packet;
mod route;
mod sk_msg;
mod snat;
mod sock_ops;
mod tc_egress;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
