//! A Kubernetes node with pods, on one machine: network namespaces the test creates —
//! a "node" and its pods, each pod wired to the node's bridge by a veth pair — and a
//! child cgroup of the test's cgroup per pod (the test's cgroup is the node's root,
//! where lb attaches). Nothing is routed off the machine: the node has no interface
//! to the host, pods only their on-link subnet, and every namespace a blackhole route
//! for the ClusterIP range. Everything is removed when the value drops, also after a
//! failed assertion.

use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lb::datapath::cgroup::{ChildCgroup, spawn_into};
use serde_json::Value;

use crate::harness::{lb_bin, run_probe, spawn_probe, wait_for};

/// The pods' subnet on the node's bridge, and the node's address on it.
pub const NODE_IP: &str = "10.244.0.1";
/// The ClusterIP range: blackholed everywhere (an unsteered connect fails locally).
pub const SERVICE_RANGE: &str = "10.96.0.0/16";

pub struct Pod {
    pub name: &'static str,
    pub ns: String,
    pub ip: String,
    cgroup: ChildCgroup,
}

pub struct Node {
    pub ns: String,
    pub pods: Vec<Pod>,
    /// The outside client's namespace, if [`Node::outside`] made one.
    pub outside: Option<String>,
    /// Other nodes' namespaces and their pods' ([`Node::other_node`]).
    others: Vec<String>,
    processes: Vec<Child>,
}

/// The node's address on its link to the outside client ([`Node::outside`]), the
/// client's, and the link's name on the node.
pub const NODE_EXT_IP: &str = "10.250.0.1";
pub const OUTSIDE_IP: &str = "10.250.0.2";
pub const NODE_EXT_IFACE: &str = "ext0";

/// `nsenter` arguments that run a command in network namespace `ns` and nothing else
/// (`ip netns exec` also remounts /sys, which hides the host's bpffs and cgroup2).
pub fn enter(ns: &str) -> [String; 2] {
    [format!("--net=/var/run/netns/{ns}"), "--".into()]
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Node {
    /// A node namespace and one pod per `(name, last octet)`, each pod's cgroup under
    /// `node_cgroup`.
    pub fn new(id: &str, node_cgroup: &Path, pods: &[(&'static str, u8)]) -> Node {
        let ns = format!("lbt-{id}-node");
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        let mut node = Node {
            ns: ns.clone(),
            pods: Vec::new(),
            outside: None,
            others: Vec::new(),
            processes: Vec::new(),
        };
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        ip(&["-n", &ns, "route", "add", "blackhole", SERVICE_RANGE]);
        for (i, (name, octet)) in pods.iter().enumerate() {
            let pod_ns = format!("lbt-{id}-{name}");
            let _ = Command::new("ip").args(["netns", "del", &pod_ns]).output();
            ip(&["netns", "add", &pod_ns]);
            // Unique in the host's namespace until moved: short (15 bytes at most).
            let (outer, inner) = (
                format!("lbn{}{i}", std::process::id() % 100_000),
                format!("lbp{}{i}", std::process::id() % 100_000),
            );
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &outer, "netns", &ns]);
            ip(&["link", "set", &inner, "netns", &pod_ns]);
            ip(&["-n", &ns, "link", "set", &outer, "master", "br0", "up"]);
            let pod_ip = format!("10.244.0.{octet}");
            ip(&["-n", &pod_ns, "link", "set", &inner, "name", "eth0"]);
            ip(&[
                "-n",
                &pod_ns,
                "addr",
                "add",
                &format!("{pod_ip}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &pod_ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &pod_ns, "link", "set", "lo", "up"]);
            ip(&["-n", &pod_ns, "route", "add", "blackhole", SERVICE_RANGE]);
            let cgroup = ChildCgroup::create_in(node_cgroup, &format!("pod-{name}"))
                .expect("the pod's cgroup");
            node.pods.push(Pod {
                name,
                ns: pod_ns,
                ip: pod_ip,
                cgroup,
            });
        }
        node
    }

    /// A client outside the node: its own namespace, linked to the node by a veth pair
    /// ([`NODE_EXT_IFACE`] on the node, [`NODE_EXT_IP`]; the client [`OUTSIDE_IP`]),
    /// as a router's link to a node's NIC. The node forwards between that link and its
    /// pods, which reach the client's subnet through it; the client's namespace has
    /// only its on-link subnet and the blackhole for the ClusterIP range. Not in any
    /// cgroup lb attaches to: only XDP sees its packets.
    pub fn outside(&mut self, id: &str) -> &str {
        let ns = format!("lbt-{id}-out");
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        self.outside = Some(ns.clone());
        let (outer, inner) = (
            format!("lbx{}", std::process::id() % 100_000),
            format!("lby{}", std::process::id() % 100_000),
        );
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &outer, "netns", &self.ns]);
        ip(&["link", "set", &inner, "netns", &ns]);
        ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            &outer,
            "name",
            NODE_EXT_IFACE,
        ]);
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{NODE_EXT_IP}/24"),
            "dev",
            NODE_EXT_IFACE,
        ]);
        ip(&["-n", &self.ns, "link", "set", NODE_EXT_IFACE, "up"]);
        ip(&["-n", &ns, "link", "set", &inner, "name", "eth0"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "blackhole", SERVICE_RANGE]);
        for pod in &self.pods {
            ip(&[
                "-n",
                &pod.ns,
                "route",
                "add",
                "10.250.0.0/24",
                "via",
                NODE_IP,
            ]);
        }
        let out = Command::new("nsenter")
            .args(enter(&self.ns))
            .args(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .output()
            .expect("sysctl");
        assert!(out.status.success(), "ip_forward: {out:?}");
        self.outside.as_deref().expect("just set")
    }

    /// Another node, `name`, with one pod at `10.244.{n}.3` serving as `name` on
    /// `port`, linked by a veth to namespace `gateway` (this node, or the outside
    /// client's as the upstream router): `10.{250 + n}.0.1` on `gateway`'s side
    /// (interface `iface`), `.2` on the other node's. `gateway` routes the pod's subnet
    /// there; the other node routes only `back` (subnets) through the link, the pod
    /// the clients' and links' subnets through its node. This node reaches the pod
    /// subnet through `via` (the link's far side when it is the gateway). Removed
    /// with the node.
    pub fn other_node(
        &mut self,
        name: &'static str,
        n: u8,
        (gateway, iface, via): (&str, &str, &str),
        back: &[&str],
        port: u16,
    ) -> String {
        let id = format!("{}", std::process::id() % 100_000);
        let (node_ns, pod_ns) = (format!("lbt-{id}-{name}-node"), format!("lbt-{id}-{name}"));
        let (link, pods) = (format!("10.{}.0", 250 + n as u32), format!("10.244.{n}"));
        for ns in [&node_ns, &pod_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            self.others.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "route", "add", "blackhole", SERVICE_RANGE]);
        }
        // Two veth pairs: gateway <-> other node, other node <-> its pod.
        let tag = format!("{}{n}", std::process::id() % 100_000);
        for (a, a_ns, a_name, a_ip, b_ns, b_ip) in [
            (
                format!("lbg{tag}"),
                gateway,
                iface,
                format!("{link}.1"),
                &node_ns,
                format!("{link}.2"),
            ),
            (
                format!("lbq{tag}"),
                &node_ns,
                "pod0",
                format!("{pods}.1"),
                &pod_ns,
                format!("{pods}.3"),
            ),
        ] {
            let b = format!("{a}b");
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", a_ns]);
            ip(&["link", "set", &b, "netns", b_ns]);
            ip(&["-n", a_ns, "link", "set", &a, "name", a_name]);
            ip(&["-n", b_ns, "link", "set", &b, "name", "eth0"]);
            ip(&[
                "-n",
                a_ns,
                "addr",
                "add",
                &format!("{a_ip}/24"),
                "dev",
                a_name,
            ]);
            ip(&[
                "-n",
                b_ns,
                "addr",
                "add",
                &format!("{b_ip}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", a_ns, "link", "set", a_name, "up"]);
            ip(&["-n", b_ns, "link", "set", "eth0", "up"]);
        }
        nic_like(&node_ns, "eth0");
        nic_like(&pod_ns, "eth0");
        let subnet = format!("{pods}.0/24");
        ip(&[
            "-n",
            gateway,
            "route",
            "add",
            &subnet,
            "via",
            &format!("{link}.2"),
        ]);
        if gateway != self.ns {
            ip(&["-n", &self.ns, "route", "add", &subnet, "via", via]);
        }
        for net in back {
            ip(&[
                "-n",
                &node_ns,
                "route",
                "add",
                net,
                "via",
                &format!("{link}.1"),
            ]);
        }
        // The clients' and the links' subnets (10.248/13) through its node.
        ip(&[
            "-n",
            &pod_ns,
            "route",
            "add",
            "10.248.0.0/13",
            "via",
            &format!("{pods}.1"),
        ]);
        for ns in [gateway, node_ns.as_str()] {
            let out = Command::new("nsenter")
                .args(enter(ns))
                .args(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
                .output()
                .expect("sysctl");
            assert!(out.status.success(), "ip_forward: {out:?}");
        }
        let pod_ip = format!("{pods}.3");
        let listen = format!("{pod_ip}:{port}");
        let child = Command::new("nsenter")
            .args(enter(&pod_ns))
            .arg(lb_bin())
            .args(["backend", "--name", name, "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backend");
        self.processes.push(child);
        wait_for(Duration::from_secs(5), "the other node's backend", || {
            Command::new("nsenter")
                .args(enter(&pod_ns))
                .args(["bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{pod_ip}/{port}"))
                .output()
                .is_ok_and(|o| o.status.success())
        });
        pod_ip
    }

    /// The test client (`lb probe --json`) in the outside namespace, to completion.
    pub fn probe_outside(&self, args: &[&str]) -> Value {
        run_probe(self.outside_probe(args))
    }

    /// The same in the background; its summary comes from
    /// [`crate::harness::stop_probe`].
    pub fn spawn_probe_outside(&self, args: &[&str]) -> Child {
        spawn_probe(self.outside_probe(args))
    }

    fn outside_probe(&self, args: &[&str]) -> Command {
        let ns = self.outside.as_deref().expect("Node::outside first");
        let mut cmd = Command::new("nsenter");
        cmd.args(enter(ns))
            .arg(lb_bin())
            .arg("probe")
            .args(args)
            .arg("--json");
        cmd
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// `lb <args>` in pod `name`: its network namespace and cgroup.
    fn in_pod(&self, name: &str, args: &[&str]) -> Command {
        let pod = self.pod(name);
        let mut cmd = Command::new("nsenter");
        cmd.args(enter(&pod.ns)).arg(lb_bin()).args(args);
        spawn_into(&mut cmd, &pod.cgroup.path);
        cmd
    }

    /// A test backend in pod `name`, answering as `name` on the pod's IP at `port`.
    pub fn backend(&mut self, name: &str, port: u16) {
        self.backend_named(name, name, port);
    }

    /// A backend in pod `pod` on `port` that answers as `name` (several per pod).
    pub fn backend_named(&mut self, pod: &str, name: &str, port: u16) {
        let listen = format!("{}:{port}", self.pod(pod).ip);
        let child = self
            .in_pod(pod, &["backend", "--name", name, "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backend");
        self.processes.push(child);
        let ns = self.ns.clone();
        wait_for(Duration::from_secs(5), "the backend to listen", || {
            Command::new("nsenter")
                .args(enter(&ns))
                .args(["bash", "-c"])
                .arg(format!(
                    "exec 3<>/dev/tcp/{}/{port}",
                    listen.split(':').next().unwrap_or("")
                ))
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    /// The test client (`lb probe --json`) in pod `name`, to completion.
    pub fn probe(&self, name: &str, args: &[&str]) -> Value {
        let mut all = vec!["probe"];
        all.extend_from_slice(args);
        all.push("--json");
        run_probe(self.in_pod(name, &all))
    }

    /// The test client in pod `name` in the background; the summary comes from
    /// [`crate::harness::stop_probe`] with `stop`.
    pub fn spawn_probe(&self, name: &str, args: &[&str]) -> Child {
        let mut all = vec!["probe"];
        all.extend_from_slice(args);
        all.push("--json");
        spawn_probe(self.in_pod(name, &all))
    }

    /// `f` on a thread inside the node's network namespace (binding a socket there:
    /// it stays the namespace's whatever thread uses it later).
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.ns, f)
    }
}

/// Veth `iface` of namespace `ns` made to behave as a NIC for native XDP on its
/// peer: GRO on, so it receives the peer's XDP redirects and XDP_TX (a veth needs
/// NAPI for them: GRO or an XDP program of its own); transmit checksums computed in
/// software, so what it sends carries whole checksums as a packet off a wire does (a
/// veth's locally sent TCP packet carries only the pseudo-header's sum, to be
/// completed later: XDP rewrites it in place and, redirected, it arrives as a
/// finished packet with a wrong checksum).
pub fn nic_like(ns: &str, iface: &str) {
    let out = Command::new("nsenter")
        .args(enter(ns))
        .args(["ethtool", "-K", iface, "gro", "on", "tx", "off"])
        .output()
        .expect("ethtool (scripts/setup.sh installs it)");
    assert!(out.status.success(), "ethtool -K {iface}: {out:?}");
}

/// An XDP program that passes every packet, attached (native) to `iface` of
/// namespace `ns` for as long as the returned link is open. A veth flushes the frames
/// its peer's XDP sends back with XDP_TX only when it runs an XDP program of its own
/// (veth_xdp_flush; redirects are flushed either way): the outside client's link
/// needs one for the node's XDP_TX to reach it at once. Loaded by hand (two
/// instructions) rather than from an object file the tests would have to build.
pub fn xdp_pass(ns: &str, iface: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    let iface = std::ffi::CString::new(iface).expect("a name");
    run_in(ns, move || {
        // mov r0, XDP_PASS (2); exit.
        let insns: [u64; 2] = [0x0000_0002_0000_00b7, 0x95];
        let license = c"GPL";
        let mut attr = [0u8; 144];
        attr[0..4].copy_from_slice(&6u32.to_ne_bytes()); // BPF_PROG_TYPE_XDP
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        let bpf = |cmd: i64, attr: &[u8]| {
            // SAFETY: bpf(2) with an attribute buffer of the size given, whose
            // pointers (instructions, license) outlive the call.
            let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len()) };
            assert!(fd >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
            // SAFETY: a new file descriptor the call returned, owned from here on.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
        };
        let prog = bpf(5, &attr); // BPF_PROG_LOAD
        // SAFETY: a NUL-terminated name; 0 when there is no such interface.
        let index = unsafe { libc::if_nametoindex(iface.as_ptr()) };
        assert_ne!(index, 0, "no interface {iface:?}");
        let mut link = [0u8; 64];
        use std::os::fd::AsRawFd as _;
        link[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        link[4..8].copy_from_slice(&index.to_ne_bytes());
        link[8..12].copy_from_slice(&37u32.to_ne_bytes()); // BPF_XDP
        link[12..16].copy_from_slice(&4u32.to_ne_bytes()); // XDP_FLAGS_DRV_MODE
        bpf(28, &link) // BPF_LINK_CREATE
    })
}

/// `f` on a thread inside network namespace `ns`.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("the namespace");
        // SAFETY: setns of this fresh thread only (it exits after `f`).
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the thread in the namespace")
}

impl Drop for Node {
    fn drop(&mut self) {
        for mut p in self.processes.drain(..) {
            let _ = p.kill();
            let _ = p.wait();
        }
        // Pod cgroups go with the pods (their guards kill what is left).
        for pod in self.pods.drain(..) {
            drop(pod.cgroup);
            let _ = Command::new("ip").args(["netns", "del", &pod.ns]).output();
        }
        for ns in self.others.drain(..).chain(self.outside.take()) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}
