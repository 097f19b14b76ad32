//! A DestinationRule's traffic policy on the kernel path (issue 15, item 3): weight-only
//! services stay in `connect4`, with no proxy hop, and still follow
//! `consistentHash.useSourceIp` (and lb's sticky subsets keyed by the source) and
//! `outlierDetection` (connects refused in a row eject an endpoint for its time).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{Env, read_log};

fn at(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// `hashed` (127.10.33.1:33000): three endpoints, the endpoint by the source;
/// `sticky` (127.10.33.2:33000): 50/50 over two subsets, the subset by the source.
const HASHED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hashed}
spec:
  hosts: [hashed]
  addresses: [127.10.33.1]
  ports: [{number: 33000, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.2}
  - {address: 127.0.0.3}
  - {address: 127.0.0.4}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hashed}
spec:
  host: hashed
  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sticky}
spec:
  hosts: [sticky]
  addresses: [127.10.33.2]
  ports: [{number: 33000, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.2, labels: {version: v0}}
  - {address: 127.0.0.3, labels: {version: v1}}
  - {address: 127.0.0.4, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky}
spec:
  host: sticky
  subsets:
  - {name: v0, labels: {version: v0}}
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: sticky
  annotations: {lb.dev/sticky-subsets: source-ip}
spec:
  hosts: [sticky]
  http:
  - route:
    - {destination: {host: sticky, subset: v0}, weight: 50}
    - {destination: {host: sticky, subset: v1}, weight: 50}
"#;

/// The backends a client's connects reached.
fn reached(s: &serde_json::Value) -> BTreeSet<String> {
    s["by_backend"]
        .as_object()
        .expect("by_backend")
        .keys()
        .cloned()
        .collect()
}

/// Source hashing in `connect4`: each client address stays on one endpoint (or one
/// subset) over all its connects, clients spread over them, and both services stay on
/// the kernel path.
#[test]
fn source_hashing_keeps_each_client_on_one_endpoint_without_the_proxy() {
    let mut env = Env::new("srchash");
    for (name, ip) in [("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")] {
        env.backend(name, &[at(&format!("{ip}:33000"))]);
    }
    env.write_config("config.yaml", HASHED);
    env.start_daemon(false);
    let status = env.status();
    for svc in status["services"].as_array().expect("services") {
        assert_eq!(svc["datapath"], "kernel", "{svc}");
    }
    // 1000 connects from one unbound client (its network namespace is its key).
    let s = env.probe(&["--to", "127.10.33.1:33000", "--count", "1000"]);
    assert_eq!(s["failures"], 0, "{s}");
    assert_eq!(reached(&s).len(), 1, "one endpoint over 1000 connects: {s}");
    // Eight client addresses × 125 connects: each on one endpoint, not all on one.
    let mut endpoints = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for i in 0..8 {
        let from = format!("127.0.0.{}", 20 + i);
        // The backends 125 connects from `from` to `to` reached, none failing.
        let reached_from = |to: &str| {
            let s = env.probe(&["--to", to, "--count", "125", "--from", &from]);
            assert_eq!(s["failures"], 0, "{s}");
            reached(&s)
        };
        let r = reached_from("127.10.33.1:33000");
        assert_eq!(r.len(), 1, "{from} moved between endpoints: {r:?}");
        endpoints.extend(r);
        // The sticky service: the subset (v0 is a, v1 is b or c) by the source too.
        let r = reached_from("127.10.33.2:33000");
        let group = if r.contains("a") { "v0" } else { "v1" };
        assert!(
            r.iter().all(|b| (b == "a") == (group == "v0")),
            "{from} moved between groups: {r:?}"
        );
        groups.insert(group);
    }
    assert!(
        endpoints.len() >= 2,
        "eight clients on one endpoint: {endpoints:?}"
    );
    assert_eq!(groups.len(), 2, "eight clients in one group: {groups:?}");
    assert_eq!(
        env.status()["counters"]["proxy_handoffs"],
        0,
        "nothing went through the proxy"
    );
}

const OUTLIER: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: flaky}
spec:
  hosts: [flaky]
  addresses: [127.10.34.1]
  ports: [{number: 34000, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.2}
  - {address: 127.0.0.3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky}
spec:
  host: flaky
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 100ms, baseEjectionTime: 2s}
"#;

/// Outlier detection in the kernel: an endpoint that starts refusing is out of new
/// connects within the interval after its third refusal in a row, stays out for the
/// ejection time even once it listens again, and is back after it.
#[test]
fn kernel_outlier_detection_ejects_a_refusing_endpoint_and_takes_it_back() {
    let mut env = Env::new("kernod");
    env.backend("a", &[at("127.0.0.2:34000")]);
    let b = env.backend("b", &[at("127.0.0.3:34000")]);
    env.write_config("config.yaml", OUTLIER);
    env.start_daemon(false);
    assert_eq!(env.status()["services"][0]["datapath"], "kernel");
    let s = env.probe(&["--to", "127.10.34.1:34000", "--count", "100"]);
    assert_eq!(reached(&s).len(), 2, "{s}");

    env.stop_backend(b);
    let log = env.work.join("refusing.jsonl");
    let log_arg = log.display().to_string();
    env.probe(&[
        "--to",
        "127.10.34.1:34000",
        "--count",
        "600",
        "--every-ms",
        "1",
        "--log",
        &log_arg,
    ]);
    let lines = read_log(&log);
    let t = |l: &serde_json::Value| l["t_ms"].as_u64().expect("t_ms");
    let failed: Vec<u64> = lines.iter().filter(|l| l["ok"] == false).map(t).collect();
    assert!(failed.len() >= 3, "three refusals trip it: {failed:?}");
    // The third refusal in a row ejects at the next read (every 100 ms): none later.
    let third = failed[2];
    let late: Vec<u64> = failed
        .iter()
        .copied()
        .filter(|f| *f > third + 250)
        .collect();
    assert!(
        late.is_empty(),
        "refused after the ejection: {late:?} (third at {third})"
    );
    let after: Vec<&serde_json::Value> = lines.iter().filter(|l| t(l) > third + 250).collect();
    let (first, last) = (t(&lines[0]), t(&lines[lines.len() - 1]));
    assert!(
        after.len() >= 100 && after.iter().all(|l| l["backend"] == "a"),
        "only a once b is out: {} of {} connects after, from {first} to {last} ms, third refusal at {third}",
        after.len(),
        lines.len()
    );
    assert!(env.daemon_log().contains("endpoint ejected for 2s"));

    // Listening again, but still inside its ejection time (2 s from the read after
    // the third refusal): no connect reaches it.
    env.backend("b", &[at("127.0.0.3:34000")]);
    let s = env.probe(&["--to", "127.10.34.1:34000", "--count", "100"]);
    let since_third = now_ms() - third;
    assert!(
        since_third < 1900 && !reached(&s).contains("b"),
        "{since_third} ms after the third refusal: {s}"
    );
    // Back after the ejection time.
    std::thread::sleep(Duration::from_millis(2600 - since_third));
    let s = env.probe(&["--to", "127.10.34.1:34000", "--count", "200"]);
    assert_eq!(s["failures"], 0, "{s}");
    assert_eq!(reached(&s).len(), 2, "b back: {s}");
}
