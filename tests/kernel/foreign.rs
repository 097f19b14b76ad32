//! lb beside another socket load balancer on the same cgroup (as Cilium's socket LB on a
//! node's root cgroup): a second, foreign `connect4`, loaded here from a handful of
//! instructions, that rewrites the addresses it claims. Programs of one cgroup hook run
//! in the order they were attached, each seeing the address the one before wrote; the
//! first to rewrite an address wins, and the next sees a backend, not a service.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use crate::addr;
use crate::harness::{Env, seed_config};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;

/// `bpf_sock_addr` offsets.
const USER_IP4: i16 = 4;
const USER_PORT: i16 = 24;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let regs = (src << 4) | dst;
    u64::from_le_bytes([
        code,
        regs,
        off.to_le_bytes()[0],
        off.to_le_bytes()[1],
        imm.to_le_bytes()[0],
        imm.to_le_bytes()[1],
        imm.to_le_bytes()[2],
        imm.to_le_bytes()[3],
    ])
}

/// An address as `user_ip4` / `user_port` hold it (network order), read as a u32.
fn as_ctx(a: std::net::SocketAddrV4) -> (i32, i32) {
    (
        i32::from_le_bytes(a.ip().octets()),
        i32::from(u16::from_le_bytes(a.port().to_be_bytes())),
    )
}

/// The instructions of a connect4 that sends `from` to `to` and lets everything else by.
fn rewrite_program(rules: &[(std::net::SocketAddrV4, std::net::SocketAddrV4)]) -> Vec<u64> {
    let (ldx_w, jne_k, mov32_k, stx_w) = (0x61, 0x55, 0xb4, 0x63);
    let mut out = Vec::new();
    for (from, to) in rules {
        let ((ip, port), (new_ip, new_port)) = (as_ctx(*from), as_ctx(*to));
        out.extend([
            insn(ldx_w, 2, 1, USER_IP4, 0),
            insn(jne_k, 2, 0, 6, ip),
            insn(ldx_w, 2, 1, USER_PORT, 0),
            insn(jne_k, 2, 0, 4, port),
            insn(mov32_k, 2, 0, 0, new_ip),
            insn(stx_w, 1, 2, USER_IP4, 0),
            insn(mov32_k, 2, 0, 0, new_port),
            insn(stx_w, 1, 2, USER_PORT, 0),
        ]);
    }
    out.push(insn(0xb7, 0, 0, 0, 1)); // r0 = 1: allow
    out.push(insn(0x95, 0, 0, 0, 0)); // exit
    out
}

/// A foreign connect4 attached (a link, detached when dropped) to `cgroup`.
struct Foreign {
    _link: OwnedFd,
}

fn bpf<A>(cmd: libc::c_long, attr: &A) -> i32 {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix for `cmd`; its pointers
    // outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<A>() as u32,
        )
    };
    assert!(r >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    r as i32
}

impl Foreign {
    fn attach(cgroup: &std::path::Path, rules: &[(&str, &str)]) -> Foreign {
        let rules: Vec<_> = rules
            .iter()
            .map(|(f, t)| (f.parse().expect("from"), t.parse().expect("to")))
            .collect();
        let insns = rewrite_program(&rules);
        let license = c"GPL";
        #[repr(C)]
        struct ProgLoad {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
            prog_ifindex: u32,
            expected_attach_type: u32,
            _rest: [u64; 12],
        }
        let mut name = [0u8; 16];
        name[..12].copy_from_slice(b"foreign_lb_4");
        let prog = bpf(
            BPF_PROG_LOAD,
            &ProgLoad {
                prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                insn_cnt: insns.len() as u32,
                insns: insns.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level: 0,
                log_size: 0,
                log_buf: 0,
                kern_version: 0,
                prog_flags: 0,
                prog_name: name,
                prog_ifindex: 0,
                expected_attach_type: BPF_CGROUP_INET4_CONNECT,
                _rest: [0; 12],
            },
        );
        // SAFETY: a new fd from BPF_PROG_LOAD, owned here.
        let prog = unsafe { OwnedFd::from_raw_fd(prog) };
        let cg = std::fs::File::open(cgroup).expect("cgroup");
        #[repr(C)]
        struct LinkCreate {
            prog_fd: u32,
            target_fd: u32,
            attach_type: u32,
            flags: u32,
            _rest: [u64; 8],
        }
        let link = bpf(
            BPF_LINK_CREATE,
            &LinkCreate {
                prog_fd: prog.as_raw_fd() as u32,
                target_fd: cg.as_raw_fd() as u32,
                attach_type: BPF_CGROUP_INET4_CONNECT,
                flags: 0,
                _rest: [0; 8],
            },
        );
        // SAFETY: a new fd from BPF_LINK_CREATE, owned here: the link lives while it does.
        Foreign {
            _link: unsafe { OwnedFd::from_raw_fd(link) },
        }
    }
}

/// (v0, v1, failures) over `n` connects to `to`.
fn split(env: &Env, to: &str, n: u64) -> (u64, u64, u64) {
    let s = env.probe(&["--to", to, "--count", &n.to_string()]);
    let c = |k: &str| s["by_backend"][k].as_u64().unwrap_or(0);
    (c("v0"), c("v1"), s["failures"].as_u64().unwrap_or(0))
}

/// A foreign connect4 on lb's cgroup: addresses only it claims are its own in either
/// order; an address both claim goes the way of whichever was attached first.
#[test]
fn lb_runs_beside_a_foreign_connect4_on_the_same_cgroup() {
    let mut env = Env::new("foreign");
    let (svc, port) = ("127.10.31.1", 11500u16);
    let theirs = "127.10.31.2:11500";
    let ours = format!("{svc}:{port}");
    env.backend("v0", &[addr("127.0.0.2:11500")]);
    env.backend("v1", &[addr("127.0.0.3:11500")]);
    env.write_config(
        "backend.yaml",
        &seed_config(svc, port, "127.0.0.2", "127.0.0.3", 90, 10),
    );
    // The foreign balancer was on the node first: it claims its own address and,
    // as a conflict, lb's service too (to v0 only).
    let rules = [
        (theirs, "127.0.0.3:11500"),
        (ours.as_str(), "127.0.0.2:11500"),
    ];
    let first = Foreign::attach(&env.cgroup.path, &rules);
    env.start_daemon(false);
    assert_eq!(
        split(&env, theirs, 100),
        (0, 100, 0),
        "its own address: its rewrite"
    );
    assert_eq!(
        split(&env, &ours, 200),
        (200, 0, 0),
        "attached first, it rewrites lb's address before lb's connect4 sees it"
    );
    // Attached after lb: lb's connect4 runs first on lb's services.
    drop(first);
    let _second = Foreign::attach(&env.cgroup.path, &rules);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(split(&env, theirs, 100), (0, 100, 0), "still its own");
    let (v0, v1, failures) = split(&env, &ours, 2000);
    assert_eq!(failures, 0);
    let share = v1 as f64 * 100.0 / (v0 + v1) as f64;
    assert!(
        (share - 10.0).abs() <= 2.5,
        "lb's 90/10 holds: v1 {share:.1} %"
    );
    // lb's programs are attached once, beside the foreign one.
    env.assert_one_set_attached();
    let progs = env.attached_programs();
    assert!(
        progs.iter().any(|l| l.contains("foreign_lb_4")),
        "the foreign program sits beside lb's: {progs:?}"
    );
}
