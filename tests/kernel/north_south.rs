//! The north-south path: a client outside the node (its own namespace, linked to the
//! node by a veth as a router is to a NIC) dials the node's address at a NodePort;
//! `lb_xdp` on the node's side of that link splits its flows by the seed's weights to
//! pods, and `lb_tc_egress` translates the replies back (tests/kernel/node.rs has the
//! topology; nothing is routed off the machine).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::harness::{Env, seed_config, stop_probe, wait_for};
use crate::node::{NODE_EXT_IFACE, NODE_EXT_IP, Node, OUTSIDE_IP, enter};

const NODE_PORT: u16 = 30785;

/// The seed's objects served at the node's outside address and NodePort, the pods'
/// port 11400 behind it, weights `w0`/`w1`.
fn node_port_config(w0: u32, w1: u32) -> String {
    node_port_config_with(w0, w1, "")
}

/// The same with `rules` before the weighted route (VirtualService `http` items).
fn node_port_config_with(w0: u32, w1: u32, rules: &str) -> String {
    let pods = ["10.244.0.3", "10.244.0.4"];
    let mut text = seed_config(NODE_EXT_IP, NODE_PORT, pods[0], pods[1], w0, w1)
        .replace("  http:\n", &format!("  http:{rules}\n"));
    for pod in pods {
        text = text.replace(
            &format!("{{address: {pod},"),
            &format!("{{address: {pod}, ports: {{http: 11400}},"),
        );
    }
    text
}

/// A node with pods v0 (10.244.0.3) and v1 (.4), their backends on port 11400 for
/// the `serving` ones, and the outside client; lb started in the node's namespace.
fn node_with_outside(env: &mut Env, serving: &[&str]) -> Node {
    let id = format!("{}", std::process::id() % 100_000);
    let mut node = Node::new(&id, &env.cgroup.path, &[("v0", 3), ("v1", 4)]);
    node.outside(&id);
    for pod in serving {
        node.backend(pod, 11400);
    }
    env.daemon_prefix = std::iter::once("nsenter".to_string())
        .chain(enter(&node.ns))
        .collect();
    node
}

/// The seed at the node's NodePort (90/10, pods v0 and v1 serving), lb with XDP on
/// the outside link; the address to dial.
fn seed_on_node(env: &mut Env) -> (Node, String) {
    let node = node_with_outside(env, &["v0", "v1"]);
    env.write_config("backend.yaml", &node_port_config(90, 10));
    env.start_daemon_with(true, &["--xdp-iface", NODE_EXT_IFACE]);
    (node, format!("{NODE_EXT_IP}:{NODE_PORT}"))
}

/// The seed's header rule (c) for a NodePort: `hellotest: true` goes to v1 through lb's
/// proxy, reached from outside the node by XDP (the proxy listening on every address
/// of the node), which leaves the original destination where the proxy reads it: a
/// Host that names no VirtualService still gets the dialled service's routes.
#[test]
fn outside_clients_reach_the_proxy_for_the_header_rule() {
    let mut env = Env::new("xdp-l7");
    let node = node_with_outside(&mut env, &["v0", "v1"]);
    let header_rule = r#"
  - name: hello
    match: [{headers: {hellotest: {exact: "true"}}}]
    route: [{destination: {host: backend-service, subset: v1}}]"#;
    env.write_config("backend.yaml", &node_port_config_with(90, 10, header_rule));
    env.listen_args = [
        "--proxy-listen",
        "0.0.0.0:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    env.start_daemon_with(true, &["--xdp-iface", NODE_EXT_IFACE]);
    assert_eq!(env.status()["services"][0]["datapath"], "proxy");
    let to = format!("{NODE_EXT_IP}:{NODE_PORT}");

    let s = node.probe_outside(&[
        "--to",
        &to,
        "--count",
        "100",
        "--host",
        "unknown.example",
        "--header",
        "hellotest: true",
    ]);
    assert_eq!(
        (
            s["by_backend"]["v1"].as_u64(),
            s["failures"].as_u64(),
            s["peer_mismatches"].as_u64()
        ),
        (Some(100), Some(0), Some(0)),
        "{s}"
    );
    let s = node.probe_outside(&["--to", &to, "--count", "400"]);
    assert_eq!(s["failures"].as_u64(), Some(0), "{s}");
    let v1 = s["by_backend"]["v1"].as_u64().unwrap_or(0) as f64;
    assert!(
        (v1 / 4.0 - 10.0).abs() <= 5.0,
        "v1 got {:.1} %: {s}",
        v1 / 4.0
    );
    let counters = env.status()["counters"].clone();
    assert!(
        counters["xdp_proxy_flows"].as_u64().unwrap_or(0) >= 500,
        "{counters}"
    );
    assert_eq!(counters["proxy_handoffs"].as_u64(), Some(0), "{counters}");
}

/// A Kubernetes LoadBalancer Service (the seed's, from the fake API server) from
/// outside the node: its NodePort at the node's address of the `--xdp-iface` link and
/// its load-balancer IP (routed to the node by the client, as an upstream router
/// would) are split 90/10 in XDP like its ClusterIP is at connect.
#[test]
fn a_clusters_node_port_and_load_balancer_ip_are_split_in_xdp() {
    use crate::apiserver::FakeApi;
    let mut env = Env::new("xdp-kube");
    let node = node_with_outside(&mut env, &["v0", "v1"]);
    let outside = node.outside.clone().expect("the outside namespace");
    const LB_IP: &str = "10.250.0.100";
    let out = Command::new("ip")
        .args(["-n", &outside, "route", "add", LB_IP, "via", NODE_EXT_IP])
        .output()
        .expect("ip route");
    assert!(out.status.success(), "{out:?}");
    let mut objects = crate::kubernetes::seed_objects_on_node();
    for o in objects.iter_mut().filter(|o| o["kind"] == "Service") {
        o["spec"]["type"] = "LoadBalancer".into();
        o["spec"]["ports"][0]["nodePort"] = NODE_PORT.into();
        o["status"] = serde_json::json!({"loadBalancer": {"ingress": [{"ip": LB_IP}]}});
    }
    let listener = node.run_inside(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let api = FakeApi::start_on(listener, &objects);
    let kubeconfig = env.work.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");
    env.source_args = vec!["--kubeconfig".into(), kubeconfig.display().to_string()];
    env.start_daemon_with(true, &["--xdp-iface", NODE_EXT_IFACE]);

    let mut tuples = 0;
    for to in [
        format!("{NODE_EXT_IP}:{NODE_PORT}"),
        format!("{LB_IP}:11400"),
    ] {
        tuples += new_tuples(&outside_split(&node, &to, 1000, 3.5), "");
    }
    // Only the client outside dialled these: the flows are XDP's, one per connection
    // (a tuple used again is not a new one).
    let status = env.status();
    let flows = subset_total(&status, &[NODE_EXT_IP, LB_IP], "xdp_flows_total");
    assert_eq!(flows, tuples, "{status}");
}

/// A flow whose picked endpoint runs on another node behind an interface lb does not
/// serve (here the pods' bridge, through a gateway) is left to the stack untranslated
/// (lb would not see its replies): here nothing else serves the NodePort, so it is
/// refused, never half-translated.
#[test]
fn a_flow_picked_for_a_pod_behind_an_unserved_interface_is_left_to_the_stack() {
    let mut env = Env::new("xdp-remote");
    let node = node_with_outside(&mut env, &["v0"]);
    // "Another node's" pod behind a gateway on the bridge (the v1 pod stands in for
    // the node).
    let out = Command::new("ip")
        .args([
            "-n",
            &node.ns,
            "route",
            "add",
            "10.99.0.0/24",
            "via",
            "10.244.0.4",
        ])
        .output()
        .expect("ip route");
    assert!(out.status.success(), "{out:?}");
    let config = node_port_config(50, 50)
        .replace("{address: 10.244.0.4, ports", "{address: 10.99.0.5, ports");
    assert!(config.contains("10.99.0.5"), "{config}");
    env.write_config("backend.yaml", &config);
    env.start_daemon_with(true, &["--xdp-iface", NODE_EXT_IFACE]);
    let to = format!("{NODE_EXT_IP}:{NODE_PORT}");

    let s = node.probe_outside(&["--to", &to, "--count", "400"]);
    let served = s["by_backend"]["v0"].as_u64().unwrap_or(0);
    let refused = s["refused"].as_u64().unwrap_or(0);
    assert_eq!(s["failures"].as_u64(), Some(refused), "only refusals: {s}");
    assert_eq!(served + refused, 400, "{s}");
    assert!((120..=280).contains(&refused), "about half were v1's: {s}");
    let status = env.status();
    assert_eq!(
        status["counters"]["xdp_remote_passed"].as_u64(),
        Some(refused),
        "{status}"
    );
    let v0 = &status["services"][0]["subsets"][0];
    assert_eq!(v0["xdp_flows_total"].as_u64(), Some(served), "{status}");
}

/// The node with pod v0, the outside client, and v1's pods on two other nodes: one
/// behind the node's second link (`peer0`, served too), one behind the upstream
/// router the clients come from; the client's link made NIC-like for native XDP.
struct RemotePods {
    node: Node,
    outside: String,
    peer: String,
    routed: String,
    /// The XDP_PASS program on the client's link (held for the test's life).
    _pass: std::os::fd::OwnedFd,
}

/// The interfaces lb serves in [`RemotePods`]' topology.
const REMOTE_IFACES: [&str; 4] = ["--xdp-iface", NODE_EXT_IFACE, "--xdp-iface", "peer0"];

impl RemotePods {
    fn new(env: &mut Env) -> Self {
        let mut node = node_with_outside(env, &["v0"]);
        let (node_ns, outside) = (node.ns.clone(), node.outside.clone().expect("outside"));
        let peer = node.other_node("v1-peer", 1, (&node_ns, "peer0", ""), &[], 11400);
        let routed = node.other_node(
            "v1-router",
            2,
            (&outside, "eth1", crate::node::OUTSIDE_IP),
            &["10.250.0.0/24"],
            11400,
        );
        crate::node::nic_like(&outside, "eth0");
        let _pass = crate::node::xdp_pass(&outside, "eth0");
        RemotePods {
            node,
            outside,
            peer,
            routed,
            _pass,
        }
    }

    /// The seed at the NodePort, weights `w0`/`w1`, v1 on the other nodes' pods.
    fn config(&self, w0: u32, w1: u32) -> String {
        let (peer, routed) = (&self.peer, &self.routed);
        let config = node_port_config(w0, w1).replace(
            "  - {address: 10.244.0.4, ports: {http: 11400}, labels: {app: backend, version: v1}}",
            &format!(
                "  - {{address: {peer}, ports: {{http: 11400}}, labels: {{app: backend, version: v1}}}}\n  - {{address: {routed}, ports: {{http: 11400}}, labels: {{app: backend, version: v1}}}}"
            ),
        );
        assert!(config.contains(routed.as_str()));
        config
    }
}

/// Flows whose endpoint runs on another node reached through a served interface are
/// forwarded there by XDP itself, with the node's address and a port of its own as
/// their source, and the replies translated back and sent to the client by XDP: one
/// other node behind a second served link (redirected out of it), one behind the
/// upstream router the clients come from (sent back out of the interface they came
/// in by). Neither other node, nor its pod, has a route to the clients: only the
/// translated flows can be answered. Each keep-alive connection stays on its pod
/// (remote ones included) through a SYN flood that takes every SNAT port and across a
/// weight change. Native XDP (the veths made NIC-like: see `node::nic_like` and
/// `node::xdp_pass`), then generic.
#[test]
fn flows_picked_for_other_nodes_pods_are_forwarded_by_xdp_with_snat() {
    let mut env = Env::new("xdp-snat");
    let pods = RemotePods::new(&mut env);
    let (node, outside) = (&pods.node, &pods.outside);
    env.write_config("backend.yaml", &pods.config(50, 50));
    let ifaces = REMOTE_IFACES;
    env.start_daemon_with(true, &ifaces);
    let to = format!("{NODE_EXT_IP}:{NODE_PORT}");

    let s = node.probe_outside(&["--to", &to, "--count", "2000"]);
    assert_eq!(
        (s["failures"].as_u64(), s["peer_mismatches"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    let got = |name: &str| s["by_backend"][name].as_u64().unwrap_or(0);
    let remote = got("v1-peer") + got("v1-router");
    assert_eq!(got("v0") + remote, 2000, "{s}");
    assert!((950..=1050).contains(&remote), "50/50: {s}");
    for name in ["v1-peer", "v1-router"] {
        assert!((350..=650).contains(&got(name)), "{name}: {s}");
    }
    let status = env.status();
    let c = &status["counters"];
    let flows = subset_total(&status, &[NODE_EXT_IP], "xdp_flows_total");
    assert_eq!(flows, new_tuples(&s, ""), "{s} {status}");
    let remote = new_tuples(&s, "v1-peer") + new_tuples(&s, "v1-router");
    assert_eq!(c["xdp_remote_flows"].as_u64(), Some(remote), "{s} {status}");
    assert_eq!(
        (
            c["xdp_remote_passed"].as_u64(),
            c["xdp_snat_exhausted"].as_u64()
        ),
        (Some(0), Some(0)),
        "{status}"
    );
    // The node had never spoken to the other node behind peer0, the gateway of the
    // pods' route: the daemon asked for its address when it started, and no flow met
    // it unresolved (the first one's SYN was dropped before, and sent again by the
    // client a second later).
    assert_eq!(c["xdp_no_neigh"].as_u64(), Some(0), "{status}");
    let modes: Vec<_> = (status["xdp"].as_array().into_iter().flatten())
        .map(|x| x["mode"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(modes, ["native", "native"], "{status}");

    // Generic XDP forwards the same way.
    env.kill_daemons();
    env.start_daemon_with(true, &[&ifaces[..], &["--xdp-mode", "generic"]].concat());
    let s = node.probe_outside(&["--to", &to, "--count", "500"]);
    assert_eq!(s["failures"].as_u64(), Some(0), "{s}");
    for name in ["v1-peer", "v1-router"] {
        assert!(s["by_backend"][name].as_u64() >= Some(60), "{name}: {s}");
    }

    // Keep-alive connections opened at 50/50 keep their pods through a SYN flood,
    // whose flows take every SNAT port towards the other nodes' pods and never
    // complete; new connections right after it find ports (taken from the flood's
    // unanswered flows, none refused for want of one). Then v1 goes to 0.
    let clients = keep_alive_clients(&env, node, &to, 20);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(syn_flood(outside, 300_000), 300_000);
    let s = node.probe_outside(&["--to", &to, "--count", "200"]);
    assert_eq!(s["failures"].as_u64(), Some(0), "{s} {}", env.status());
    let c = env.status()["counters"].clone();
    assert!(
        c["xdp_remote_flows"].as_u64() > Some(2 * 28_976 + 2000),
        "the flood's flows took more ports than there are: {c}"
    );
    assert_eq!(c["xdp_snat_exhausted"].as_u64(), Some(0), "{c}");
    env.write_config("backend.yaml", &pods.config(100, 0));
    new_flows_all_go_to(&env, node, &to, "v0");
    std::thread::sleep(Duration::from_millis(500));
    assert!(each_stayed_on_its_pod(clients) >= 8 * 20);
}

/// SYNs from `count` spoofed clients (10.248.x.y, every port) to the NodePort, sent
/// from the outside namespace by a raw socket: more new flows than `LB_XDP_FLOWS`
/// holds. Their TCP checksums are not filled in, so no pod answers them (nor could
/// the answer find its way: the node has no route to 10.248/16).
fn syn_flood(outside: &str, count: u32) -> u32 {
    crate::node::run_in(outside, move || {
        // SAFETY: a raw IPv4 socket (IP_HDRINCL implied by IPPROTO_RAW); closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([10, 250, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let mut sent = 0;
        for i in 0..count {
            let src = [10, 248, (i >> 24) as u8 ^ (i >> 16) as u8, (i >> 8) as u8];
            let sport = (1024 + (i & 0xff) * 251 % 64_000) as u16;
            let mut p = [0u8; 40];
            p[0] = 0x45; // IPv4, 20-byte header; length and checksum filled by the kernel
            p[8] = 64;
            p[9] = 6; // TCP
            p[12..16].copy_from_slice(&src);
            p[16..20].copy_from_slice(&[10, 250, 0, 1]);
            p[20..22].copy_from_slice(&sport.to_be_bytes());
            p[22..24].copy_from_slice(&NODE_PORT.to_be_bytes());
            p[24..28].copy_from_slice(&i.to_be_bytes()); // sequence number
            p[32] = 0x50; // data offset: 5 words
            p[33] = 0x02; // SYN
            p[34..36].copy_from_slice(&64_240u16.to_be_bytes());
            // SAFETY: `p` and `dst` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    fd,
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&raw const dst).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n == p.len() as isize {
                sent += 1;
            }
        }
        // SAFETY: the socket opened above.
        unsafe { libc::close(fd) };
        sent
    })
}

/// A flood of spoofed SYNs at the NodePort — 300,000 new flows sent, more than the
/// flow table holds arriving — while eight keep-alive clients from outside go on: every
/// one of their requests is answered by the pod its connection started on. The LRU
/// evicts the flood's flows, not the live ones, which are used every few ms (a build
/// that re-picks an evicted flow at random still passes: none was evicted; were one,
/// its hash would pick the same endpoint again while the weights stand).
#[test]
fn a_syn_flood_at_the_node_port_does_not_break_live_flows() {
    let mut env = Env::new("xdp-flood");
    let (node, to) = seed_on_node(&mut env);
    let clients = keep_alive_clients(&env, &node, &to, 5);
    std::thread::sleep(Duration::from_millis(300));
    let outside = node.outside.clone().expect("the outside namespace");
    let sent = syn_flood(&outside, 300_000);
    assert_eq!(sent, 300_000);
    std::thread::sleep(Duration::from_millis(300));
    let requests = each_stayed_on_its_pod(clients);
    let status = env.status();
    let flows = subset_total(&status, &[NODE_EXT_IP], "xdp_flows_total");
    // The veth drops what the sender outruns; enough reach XDP to overflow the table.
    assert!(
        flows > u64::from(lb_common::capacity::XDP_FLOWS),
        "the flood overflowed the flow table: {status}"
    );
    assert!(requests >= 8 * 50, "{requests} requests");
}

/// A flow's way back lives in `LB_XDP_NAT`, its pick in `LB_XDP_FLOWS`: two LRUs that
/// evict on their own (a flood fills both). A client dialling again from the same
/// port while the flow's pick stood but its way back was gone got the same pick,
/// which wrote nothing — the pod's SYN-ACK left untranslated, and so did the
/// retransmit's (connects timed out after the flood in 3 of ~120 runs of the SNAT
/// test). Every SYN now writes its flow's entries again.
#[test]
fn a_syn_restores_its_flows_way_back_when_only_that_was_evicted() {
    let mut env = Env::new("xdp-heal");
    let node = node_with_outside(&mut env, &["v0", "v1"]);
    env.write_config("backend.yaml", &node_port_config(100, 0));
    env.start_daemon_with(true, &["--xdp-iface", NODE_EXT_IFACE]);
    let outside = node.outside.clone().expect("the outside namespace");
    let to: std::net::SocketAddr = format!("{NODE_EXT_IP}:{NODE_PORT}").parse().unwrap();
    // One connection from a fixed port: connected, then reset (no TIME_WAIT on
    // either side, so the port can dial again at once).
    let dial = move || {
        crate::node::run_in(&outside, move || {
            use socket2::{Domain, Socket, Type};
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            sock.set_reuse_address(true).expect("SO_REUSEADDR");
            let from: std::net::SocketAddr = format!("{OUTSIDE_IP}:40321").parse().unwrap();
            sock.bind(&from.into()).expect("bind");
            let done = sock.connect_timeout(&to.into(), Duration::from_secs(2));
            sock.set_linger(Some(Duration::ZERO)).expect("linger");
            done.map_err(|e| e.to_string())
        })
    };
    assert_eq!(dial(), Ok(()), "the first connection");
    let path = lb::datapath::Pins::new(&env.bpffs).map(lb_common::map_names::XDP_NAT);
    let map = aya::maps::MapData::from_pin(&path).expect("pinned LB_XDP_NAT");
    let mut nat: aya::maps::HashMap<_, lb_common::xdp::NatKey, lb_common::SockAddr4> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("an LRU hash");
    let keys: Vec<_> = nat.keys().map(|k| k.expect("key")).collect();
    assert_eq!(keys.len(), 1, "the first connection's way back");
    nat.remove(&keys[0]).expect("evicted");
    assert_eq!(dial(), Ok(()), "the same tuple again: {}", env.status());
    assert_eq!(nat.keys().count(), 1, "its way back written again");
}

/// Eight keep-alive clients from outside to `to`, a request every `every_ms` (for
/// at most a minute), until [`each_stayed_on_its_pod`] stops them.
fn keep_alive_clients(env: &Env, node: &Node, to: &str, every_ms: u32) -> Vec<(Child, PathBuf)> {
    (0..8)
        .map(|i| {
            let stop = env.work.join(format!("stop-{i}"));
            let child = node.spawn_probe_outside(&[
                "--to",
                to,
                "--keep-alive",
                "--count",
                "100000",
                "--every-ms",
                &every_ms.to_string(),
                "--for-ms",
                "60000",
                "--until-file",
                stop.to_str().expect("utf-8"),
            ]);
            (child, stop)
        })
        .collect()
}

/// Stops the clients and checks that each connection got every answer from one pod;
/// the requests they sent together.
fn each_stayed_on_its_pod(clients: Vec<(Child, PathBuf)>) -> u64 {
    let mut requests = 0;
    for (child, stop) in clients {
        let s = stop_probe(child, &stop);
        assert_eq!(
            s["by_backend"].as_object().map(|b| b.len()),
            Some(1),
            "one connection, one pod: {s}"
        );
        assert_eq!(
            (s["failures"].as_u64(), s["retried"].as_u64()),
            (Some(0), Some(0)),
            "{s}"
        );
        requests += s["attempts"].as_u64().unwrap_or(0);
    }
    requests
}

/// Once the weights written last are live (all of it to `subset`), 200 new
/// connections from outside to `to` all reach `subset`'s pod.
fn new_flows_all_go_to(env: &Env, node: &Node, to: &str, subset: &str) {
    wait_for(Duration::from_secs(10), "the new weights", || {
        let w = env.weights(NODE_EXT_IP);
        !w.is_empty()
            && w.iter()
                .all(|(name, weight)| (name == subset) == (*weight > 0))
    });
    let s = node.probe_outside(&["--to", to, "--count", "200"]);
    assert_eq!(
        (s["by_backend"][subset].as_u64(), s["failures"].as_u64()),
        (Some(200), Some(0)),
        "{s}"
    );
}

/// The seed's 90/10 from outside: `count` new connections to `to`, none failing,
/// getpeername the address dialled, v1's share 10 % within `within` points.
fn outside_split(node: &Node, to: &str, count: u64, within: f64) -> serde_json::Value {
    let s = node.probe_outside(&["--to", to, "--count", &count.to_string()]);
    assert_eq!(
        (s["failures"].as_u64(), s["peer_mismatches"].as_u64()),
        (Some(0), Some(0)),
        "{to}: {s}"
    );
    let v1 = s["by_backend"]["v1"].as_u64().unwrap_or(0) as f64 * 100.0 / count as f64;
    assert!((v1 - 10.0).abs() <= within, "{to}: v1 got {v1:.1} %: {s}");
    s
}

/// How many of a probe's answered connections (summary `s`) were new 4-tuples, by
/// backend (all backends: ""). A client port freed at once (HTTP/1.0: the server
/// closes first) comes back once the kernel's choice of ports wraps, and a SYN on a
/// tuple XDP already has picks by the same hash, lands where the earlier one did and
/// is not counted as a new flow.
fn new_tuples(s: &serde_json::Value, backend: &str) -> u64 {
    let of = |field: &str| -> u64 {
        let map = s[field].as_object().into_iter().flatten();
        (map.filter(|(b, _)| backend.is_empty() || *b == backend))
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum()
    };
    of("by_backend") - of("reused_ports")
}

/// A subset counter of `lb status` summed over the subsets of the services at
/// `addresses`.
fn subset_total(status: &serde_json::Value, addresses: &[&str], field: &str) -> u64 {
    (status["services"].as_array().into_iter().flatten())
        .filter(|svc| addresses.iter().any(|a| svc["address"] == *a))
        .flat_map(|svc| svc["subsets"].as_array().cloned().unwrap_or_default())
        .map(|x| x[field].as_u64().unwrap_or(0))
        .sum()
}

/// Whether an XDP program is attached to the node's outside link (`ip link` says
/// `xdp`, `xdpgeneric`, ...).
fn xdp_on_link(node: &Node) -> bool {
    let out = Command::new("nsenter")
        .args(enter(&node.ns))
        .args(["ip", "link", "show", NODE_EXT_IFACE])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// The seed's 90/10 over 2000 new connections from outside the node to NodeIP:30785,
/// split in XDP (native on the veth) with the replies translated back; each of a
/// set of keep-alive connections stays on its pod across a weight change while new
/// connections take the new weights; `lb status` shows the mode and the per-subset
/// north-south counters; `lb down` detaches the programs from the interface.
#[test]
fn outside_clients_get_the_seeds_split_in_xdp() {
    let mut env = Env::new("xdp");
    let (node, to) = seed_on_node(&mut env);

    let s = outside_split(&node, &to, 2000, 2.5);

    let status = env.status();
    assert_eq!(
        status["xdp"],
        serde_json::json!([{"iface": NODE_EXT_IFACE, "mode": "native", "egress": true}]),
        "{status}"
    );
    let total = |field: &str| subset_total(&status, &[NODE_EXT_IP], field);
    // Each connection is a new flow (but a tuple used again); each carries its
    // handshake, request and close.
    assert_eq!(total("xdp_flows_total"), new_tuples(&s, ""), "{s} {status}");
    assert!(total("xdp_packets_total") >= 4 * 2000, "{status}");
    assert_eq!(
        total("connects_total"),
        0,
        "connect4 never saw them: {status}"
    );

    // Keep-alive connections opened at 90/10, then the weights go to 0/100: each
    // connection keeps its pod for its life; new connections all go to v1.
    let clients = keep_alive_clients(&env, &node, &to, 20);
    std::thread::sleep(Duration::from_millis(500));
    env.write_config("backend.yaml", &node_port_config(0, 100));
    new_flows_all_go_to(&env, &node, &to, "v1");
    std::thread::sleep(Duration::from_millis(500));
    assert!(each_stayed_on_its_pod(clients) >= 8 * 20);

    // The pinned links keep XDP running without the daemon; a daemon asked for another
    // mode attaches anew in it; one asked for no interface detaches; `lb down` takes
    // everything off.
    assert!(xdp_on_link(&node), "XDP attached while lb runs");
    env.kill_daemons();
    assert!(
        xdp_on_link(&node),
        "the pinned link keeps XDP running without the daemon"
    );
    env.start_daemon_with(
        true,
        &["--xdp-iface", NODE_EXT_IFACE, "--xdp-mode", "generic"],
    );
    assert_eq!(env.status()["xdp"][0]["mode"], "generic");
    let s = node.probe_outside(&["--to", &to, "--count", "100"]);
    assert_eq!(
        (s["by_backend"]["v1"].as_u64(), s["failures"].as_u64()),
        (Some(100), Some(0)),
        "generic XDP splits as native did: {s}"
    );
    env.kill_daemons();
    env.start_daemon(true);
    assert_eq!(env.status()["xdp"], serde_json::json!([]));
    assert!(!xdp_on_link(&node), "no interface asked for: detached");
    env.start_daemon_with(true, &["--xdp-iface", NODE_EXT_IFACE]);
    assert!(xdp_on_link(&node));
    env.kill_daemons();
    let down = Command::new(crate::harness::lb_bin())
        .args(["down", "--bpffs"])
        .arg(&env.bpffs)
        .arg("--cgroup")
        .arg(&env.cgroup.path)
        .output()
        .expect("lb down");
    assert!(down.status.success(), "{down:?}");
    assert!(!xdp_on_link(&node), "lb down detached XDP");
}

/// Maglev from outside: one subset of four endpoints (one pod, four ports) at the
/// node's NodePort. Every new flow lands on the endpoint the userspace table names
/// for its tuple (so does another node's with the same endpoints); when an endpoint
/// goes, then another comes, the same connections dialled again (the same source
/// ports: new flows, picked anew) keep their endpoints but for a few percent —
/// the modulo pick would move about two thirds of them.
#[test]
fn new_flows_pick_from_maglev_tables_that_hold_when_endpoints_change() {
    let mut env = Env::new("xdp-maglev");
    let mut node = node_with_outside(&mut env, &[]);
    let names = ["a", "b", "c", "d", "e"];
    let port_of = |name: &str| 11400 + names.iter().position(|n| *n == name).unwrap() as u16;
    for name in names {
        node.backend_named("v0", name, port_of(name));
    }
    let config = |serving: &[&str]| {
        let endpoints: String = (serving.iter())
            .map(|n| {
                format!(
                    "  - {{address: 10.244.0.3, ports: {{http: {}}}}}\n",
                    port_of(n)
                )
            })
            .collect();
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web}}
spec:
  hosts: [web]
  addresses: [{NODE_EXT_IP}]
  ports: [{{number: {NODE_PORT}, name: http}}]
  resolution: STATIC
  endpoints:
{endpoints}"
        )
    };
    let to = format!("{NODE_EXT_IP}:{NODE_PORT}");
    // The endpoint of the flow from `port` by the tables lb compiles for `serving`.
    let expected = |serving: &[&str], port: u16| -> String {
        use lb::compile::maglev;
        use lb_common::{SockAddr4, xdp};
        let octets = |a: &str| a.parse::<std::net::Ipv4Addr>().unwrap().octets();
        let mut eps: Vec<SockAddr4> = (serving.iter())
            .map(|n| SockAddr4::new([10, 244, 0, 3], port_of(n)))
            .collect();
        eps.sort();
        let size = maglev::table_size(eps.len());
        let slot = lb_common::Slot {
            endpoint_count: eps.len() as u32,
            table: size,
            ..Default::default()
        };
        let hash = xdp::flow_hash(&xdp::FlowKey {
            client: SockAddr4::new(octets(OUTSIDE_IP), port),
            service: SockAddr4::new(octets(NODE_EXT_IP), NODE_PORT),
            proto: xdp::IPPROTO_TCP as u32,
        });
        let entry = lb_common::flow_endpoint_index(hash, &slot) - slot.endpoint_count;
        let ep = eps[maglev::table(&eps, size)[entry as usize] as usize];
        names[usize::from(ep.port - 11400)].to_string()
    };
    env.write_config("web.yaml", &config(&names[..4]));
    env.start_daemon_with(true, &["--xdp-iface", NODE_EXT_IFACE]);
    let mut round = 0;
    let mut dial = |serving: &[&str]| -> BTreeMap<u16, String> {
        wait_for(Duration::from_secs(10), "the endpoints applied", || {
            let s = env.status();
            s["services"][0]["subsets"][0]["backends"]
                .as_array()
                .map(Vec::len)
                == Some(serving.len())
        });
        round += 1;
        let log = env.work.join(format!("maglev-{round}.log"));
        let s = node.probe_outside(&[
            "--to",
            &to,
            "--count",
            "400",
            "--from-port",
            "21000",
            "--log",
            log.to_str().unwrap(),
        ]);
        assert_eq!(s["failures"].as_u64(), Some(0), "{s}");
        let picks: BTreeMap<u16, String> = std::fs::read_to_string(&log)
            .expect("probe log")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a log line"))
            .map(|l| {
                (
                    l["port"].as_u64().unwrap() as u16,
                    l["backend"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(picks.len(), 400);
        let off: Vec<_> = (picks.iter())
            .filter(|(port, b)| **b != expected(serving, **port))
            .collect();
        assert!(off.is_empty(), "picked against the table: {off:?}");
        picks
    };
    // How many of the flows whose endpoint is in both sets changed endpoint.
    let moved = |a: &BTreeMap<u16, String>, b: &BTreeMap<u16, String>, both: &[&str]| {
        let staying: Vec<_> = (a.iter())
            .filter(|(_, e)| both.contains(&e.as_str()))
            .collect();
        let moved = (staying.iter())
            .filter(|(p, e)| b[p] != **e && both.contains(&b[p].as_str()))
            .count();
        (moved, staying.len())
    };

    let subset = env.status()["services"][0]["subsets"][0].clone();
    assert_eq!(subset["maglev_table"], 251, "{subset}");
    let first = dial(&names[..4]);
    let per: Vec<usize> = (names[..4].iter())
        .map(|n| first.values().filter(|b| b == n).count())
        .collect();
    assert!(per.iter().all(|n| (60..=140).contains(n)), "{per:?}");

    env.write_config("web.yaml", &config(&names[..3]));
    let second = dial(&names[..3]);
    let (n, of) = moved(&first, &second, &names[..3]);
    assert!(
        of >= 250 && n * 100 <= of * 8,
        "d went: {n} of {of} others moved"
    );

    let mut with_e = names[..3].to_vec();
    with_e.push("e");
    env.write_config("web.yaml", &config(&with_e));
    let third = dial(&with_e);
    let (n, of) = moved(&second, &third, &names[..3]);
    assert!(n * 100 <= of * 8, "e came: {n} of {of} others moved");
    assert!(third.values().filter(|b| *b == "e").count() >= 60);
}

/// UDP from outside: the NodePort's service on a UDP port too (as kube-dns is, TCP and
/// UDP at one number), 50/50 between a pod on the node and two on other nodes (one
/// behind the node's second link, one behind the upstream router): 1000 datagrams,
/// each from a socket of its own — a new flow — all answered from the address
/// dialled (DNAT with the reply translated back by `lb_tc_egress`, or SNAT both ways
/// in XDP). UDP flows have no start: the same source ports after a weight change are
/// picked anew (all to the node's pod at 100/0). TCP on the same number is untouched.
#[test]
fn outside_udp_flows_are_split_and_forwarded_in_xdp() {
    let mut env = Env::new("xdp-udp");
    let remote = RemotePods::new(&mut env);
    let node = &remote.node;
    // The same port number on UDP too, the pods' backends answering it at 11400.
    let config = |w0, w1| {
        let config = (remote.config(w0, w1))
            .replace("ports: {http: 11400}", "ports: {http: 11400, dns: 11400}")
            .replace(
                "name: http, protocol: HTTP}]",
                "name: http, protocol: HTTP}, {number: 30785, name: dns, protocol: UDP}]",
            );
        assert!(config.contains("protocol: UDP"));
        config
    };
    env.write_config("backend.yaml", &config(50, 50));
    env.start_daemon_with(true, &REMOTE_IFACES);
    let to = format!("{NODE_EXT_IP}:{NODE_PORT}");
    let udp = |from_port: &str| {
        let s = node.probe_outside(&[
            "--udp",
            "--to",
            &to,
            "--count",
            "1000",
            "--from-port",
            from_port,
        ]);
        assert_eq!(
            (s["failures"].as_u64(), s["peer_mismatches"].as_u64()),
            (Some(0), Some(0)),
            "{s}"
        );
        s
    };

    let s = udp("22000");
    // Only a datagram that met an unresolved next hop is sent again.
    assert!(s["retried"].as_u64() <= Some(4), "{s}");
    let got = |name: &str| s["by_backend"][name].as_u64().unwrap_or(0);
    let remote = got("v1-peer") + got("v1-router");
    assert_eq!(got("v0") + remote, 1000, "{s}");
    assert!((430..=570).contains(&remote), "50/50: {s}");
    for name in ["v1-peer", "v1-router"] {
        assert!((150..=350).contains(&got(name)), "{name}: {s}");
    }
    let status = env.status();
    let udp_service = (status["services"].as_array().into_iter().flatten())
        .find(|svc| svc["protocol"] == "udp")
        .cloned()
        .unwrap_or_default();
    assert_eq!(udp_service["datapath"], "kernel", "{status}");
    let flows: u64 = (udp_service["subsets"].as_array().into_iter().flatten())
        .map(|x| x["xdp_flows_total"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(flows, 1000, "{status}");
    assert_eq!(
        status["counters"]["xdp_remote_flows"].as_u64(),
        Some(remote),
        "{status}"
    );

    // TCP at the same number is its own service.
    let s = node.probe_outside(&["--to", &to, "--count", "200"]);
    assert_eq!(s["failures"].as_u64(), Some(0), "{s}");

    // The same flows after 100/0: picked anew, all on the node's pod.
    env.write_config("backend.yaml", &config(100, 0));
    new_flows_all_go_to(&env, node, &to, "v0");
    let s = udp("22000");
    assert_eq!(s["by_backend"]["v0"].as_u64(), Some(1000), "{s}");
}
