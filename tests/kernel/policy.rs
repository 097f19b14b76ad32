//! Istio's route policies through the live proxy (issue 15): `fault` aborts and
//! delays, `timeout`, `retries` (Istio's default policy and configured ones, with
//! `perTryTimeout`), on both engines — the lean HTTP/1.1 path and hyper's (an
//! HTTP/1.0 request) — against backends that refuse, hang and answer 503, with the
//! access log's flags as Envoy's and the backends' own request counts.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{Env, wait_for};

/// A ServiceEntry `backend-service` at `address:port` with `endpoints` (address,
/// labels in YAML flow style), as every configuration here starts.
fn service_entry(address: &str, port: u16, endpoints: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: backend-service}}\nspec:\n  hosts: [backend-service]\n  addresses: [{address}]\n  ports: [{{number: {port}, name: http}}]\n  resolution: STATIC\n  endpoints:\n"
    );
    for (a, labels) in endpoints {
        y.push_str(&format!("  - {{address: {a}, labels: {{{labels}}}}}\n"));
    }
    y + "---\n"
}

/// The configuration: `backend-service` at 127.10.31.1:31000, then the rules.
fn config() -> String {
    service_entry(
        "127.10.31.1",
        31000,
        &[
            ("127.0.0.2", "version: v0"),
            ("127.0.0.3", "version: v1"),
            ("127.0.0.9", "version: v1"),
        ],
    ) + r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend-dr}
spec:
  host: backend-service
  subsets:
  - {name: v0, labels: {version: v0}}
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend-vs}
spec:
  hosts: [backend-service]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: backend-service, subset: v0}}]
  - match: [{uri: {prefix: /half}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 50}}}
    route: [{destination: {host: backend-service, subset: v0}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
    route: [{destination: {host: backend-service, subset: v0}}]
  - match: [{uri: {prefix: /hang}, headers: {x-try: {exact: per-try}}}]
    timeout: 3s
    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}
    route: [{destination: {host: backend-service, subset: v0}}]
  - match: [{uri: {prefix: /hang}}]
    timeout: 500ms
    route: [{destination: {host: backend-service, subset: v0}}]
  - match: [{uri: {prefix: /status}}]
    route: [{destination: {host: backend-service, subset: v0}}]
  - match: [{uri: {prefix: /once}}]
    retries: {attempts: 0}
    route: [{destination: {host: backend-service, subset: v1}}]
  - route: [{destination: {host: backend-service, subset: v1}}]
"#
}

/// One request straight to the proxy: (the answer's status, how long it took).
fn request(env: &Env, version: &str, path: &str, extra: &str) -> (u16, Duration) {
    let (status, took, _) = answer(env, version, path, extra);
    (status, took)
}

/// [`request`], with the backend that answered (`x-backend`, empty if none).
fn answer(env: &Env, version: &str, path: &str, extra: &str) -> (u16, Duration, String) {
    let (got, took) = env.get_once(version, path, extra);
    let status = got
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let backend = got
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: ").map(|b| b.trim().to_string()))
        .unwrap_or_default();
    (status, took, backend)
}

/// How many requests the test backend at `addr` has served.
fn served(addr: &str) -> u64 {
    let mut s = TcpStream::connect(addr).expect("backend");
    s.write_all(b"GET /__requests HTTP/1.1\r\nhost: b\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.rsplit("\r\n\r\n")
        .next()
        .and_then(|b| b.trim().parse().ok())
        .expect("a count")
}

/// One of lb's counters.
fn counter(env: &Env, name: &str) -> u64 {
    env.admin_get("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// lb's counter of retried requests.
fn retries(env: &Env) -> u64 {
    counter(env, "lb_proxy_upstream_retries_total")
}

#[test]
fn faults_timeouts_and_retries_apply_on_both_engines() {
    let port = 31000;
    let (v0, v1) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    let mut env = Env::new("policy");
    let addr = |a: &str| -> SocketAddr { a.parse().expect("addr") };
    env.backend("v0", &[addr(&v0)]);
    env.backend("v1", &[addr(&v1)]);
    // 127.0.0.9 (v1's second endpoint) refuses: nothing listens there.
    env.write_config("config.yaml", &config());
    env.start_daemon(false);
    let mut wrong = Vec::new();
    let mut check = |what: String, ok: bool| {
        if !ok {
            wrong.push(what);
        }
    };
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        // An abort answers at the proxy: no backend sees the request.
        let before = served(&v0);
        let answers: Vec<u16> = (0..20)
            .map(|_| request(&env, version, "/abort", "").0)
            .collect();
        check(
            format!("{version} abort: {answers:?}"),
            answers.iter().all(|&s| s == 418),
        );
        check(format!("{version} abort reached v0"), served(&v0) == before);
        // Half aborted: 400 requests, 50 % ± 10 points (4 standard deviations).
        let aborted = (0..400)
            .filter(|_| request(&env, version, "/half", "").0 == 418)
            .count();
        check(
            format!("{version} half: {aborted} of 400 aborted"),
            (160..=240).contains(&aborted),
        );
        // A delay, then the backend's answer.
        let (status, took) = request(&env, version, "/delay", "");
        check(
            format!("{version} delay: {status} in {took:?}"),
            status == 200 && took >= Duration::from_millis(300),
        );
        // The route timeout: a backend that never answers gets 504 at 0.5 s.
        let (status, took) = request(&env, version, "/hang", "");
        check(
            format!("{version} timeout: {status} in {took:?}"),
            status == 504 && took >= Duration::from_millis(500) && took < Duration::from_secs(2),
        );
        // Istio's default policy: v1's refusing endpoint is retried on the other, so no
        // request fails; with `attempts: 0` about half get 502.
        let r0 = retries(&env);
        let failed = (0..100)
            .filter(|_| request(&env, version, "/any", "").0 != 200)
            .count();
        check(
            format!("{version} default retries: {failed} of 100 failed"),
            failed == 0,
        );
        check(
            format!("{version} default retries: counted {}", retries(&env) - r0),
            retries(&env) > r0,
        );
        let failed = (0..100)
            .filter(|_| request(&env, version, "/once", "").0 == 502)
            .count();
        check(
            format!("{version} no retries: {failed} of 100 got 502"),
            (25..=75).contains(&failed),
        );
    }
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        // A request is sent again after a 503 (Istio's default policy): v0 answers
        // 503 each time, so it sees three tries and the client the last 503.
        let before = served(&v0);
        let (status, _) = request(&env, version, "/status/503", "");
        check(format!("{version} 503 retried: {status}"), status == 503);
        let tries = served(&v0) - before;
        check(
            format!("{version} 503 retried: v0 served {tries}"),
            tries == 3,
        );
        // perTryTimeout: three tries of 200 ms each, then 504, inside the 3 s timeout.
        let before = served(&v0);
        let (status, took) = request(&env, version, "/hang", "x-try: per-try\r\n");
        check(
            format!("{version} per-try: {status} in {took:?}"),
            status == 504
                && took >= Duration::from_millis(600)
                && took < Duration::from_millis(1500),
        );
        check(
            format!("{version} per-try: v0 served {}", served(&v0) - before),
            served(&v0) - before == 3,
        );
    }
    // A request with a body on hyper's path (HTTP/1.0): the body, kept while it was
    // sent, goes again with each retry.
    let before = served(&v0);
    let mut s = TcpStream::connect(env.proxy()).expect("proxy");
    s.write_all(
        b"POST /status/503 HTTP/1.0\r\nhost: backend-service\r\ncontent-length: 5\r\n\r\nhello",
    )
    .expect("write");
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    check(
        format!("POST retried: {got:?}, v0 served {}", served(&v0) - before),
        got.starts_with("HTTP/1.0 503") && served(&v0) - before == 3,
    );
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", env.daemon_log());
    // The access log carries Envoy's flags: FI for aborts, DI for delays, UT for the
    // timeouts, URX for retries used up.
    let log_path = env.work.join("access.log");
    wait_for(Duration::from_secs(5), "the access log flushed", || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("POST /status/503 HTTP/1.0"))
    });
    let log = std::fs::read_to_string(&log_path).expect("access log");
    for (line, n) in [
        ("\"GET /abort HTTP/1.1\" 418 FI ", 20),
        ("\"GET /abort HTTP/1.0\" 418 FI ", 20),
        ("\"GET /delay HTTP/1.1\" 200 DI ", 1),
        ("\"GET /delay HTTP/1.0\" 200 DI ", 1),
        ("\"GET /hang HTTP/1.1\" 504 UT ", 2),
        ("\"GET /hang HTTP/1.0\" 504 UT ", 2),
        ("\"GET /status/503 HTTP/1.1\" 503 URX ", 1),
        ("\"GET /status/503 HTTP/1.0\" 503 URX ", 1),
        ("\"POST /status/503 HTTP/1.0\" 503 URX ", 1),
    ] {
        let got = log.lines().filter(|l| l.contains(line)).count();
        assert_eq!(got, n, "{line:?}:\n{log}");
    }
}

/// The configuration: `backend-service` at 127.10.32.1:32000, then the rules.
fn balanced() -> String {
    service_entry(
        "127.10.32.1",
        32000,
        &[
            ("127.0.0.2", "pool: rr"),
            ("127.0.0.3", "pool: rr"),
            ("127.0.0.4", "pool: od"),
            ("127.0.0.9", "pool: od"),
        ],
    ) + r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend-dr}
spec:
  host: backend-service
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s}
  subsets:
  - name: rr
    labels: {pool: rr}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  - {name: od, labels: {pool: od}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend-vs}
spec:
  hosts: [backend-service]
  http:
  - match: [{uri: {prefix: /rr}}]
    route: [{destination: {host: backend-service, subset: rr}}]
  - route: [{destination: {host: backend-service, subset: od}}]
    retries: {attempts: 0}
"#
}

/// A DestinationRule's traffic policy through the live proxy: ROUND_ROBIN alternates
/// exactly; outlier detection ejects an endpoint that refuses after 3 failures in a
/// row (on either engine), for 2 s then 4 s, and takes it back once it serves.
#[test]
fn round_robin_and_outlier_detection_follow_the_destination_rule() {
    let port = 32000;
    let at = |ip: &str| -> SocketAddr { format!("{ip}:{port}").parse().expect("addr") };
    let mut env = Env::new("balanced");
    env.backend("v2", &[at("127.0.0.2")]);
    env.backend("v3", &[at("127.0.0.3")]);
    env.backend("v4", &[at("127.0.0.4")]);
    env.write_config("config.yaml", &balanced());
    env.start_daemon(false);
    let order: Vec<String> = (0..40)
        .map(|_| answer(&env, "HTTP/1.1", "/rr", "").2)
        .collect();
    let alternates = order.windows(2).all(|w| w[0] != w[1]);
    assert!(
        alternates && order.iter().filter(|b| *b == "v2").count() == 20,
        "{order:?}"
    );
    // 127.0.0.9 refuses: its third failure in a row ejects it; the rest go to v4.
    for (round, version) in ["HTTP/1.1", "HTTP/1.0"].into_iter().enumerate() {
        let got: Vec<(u16, String)> = (0..40)
            .map(|_| {
                let (s, _, b) = answer(&env, version, "/od", "");
                (s, b)
            })
            .collect();
        let failed: Vec<usize> = (0..got.len()).filter(|&i| got[i].0 != 200).collect();
        assert_eq!(failed.len(), 3, "{version}: {got:?}");
        assert!(
            got[failed[2] + 1..]
                .iter()
                .all(|(s, b)| *s == 200 && b == "v4"),
            "{got:?}"
        );
        assert_eq!(
            counter(&env, "lb_proxy_outlier_ejections_total"),
            round as u64 + 1
        );
        // Still ejected a moment later; back (and failing again) after its time.
        std::thread::sleep(Duration::from_millis(2200 * (round as u64 + 1)));
    }
    // Ejected a second time for twice as long (4 s): it serves now, and is taken back.
    env.backend("v9", &[at("127.0.0.9")]);
    let seen: Vec<(u16, String)> = (0..60)
        .map(|_| {
            let (s, _, b) = answer(&env, "HTTP/1.1", "/od", "");
            (s, b)
        })
        .collect();
    assert!(seen.iter().all(|(s, _)| *s == 200), "{seen:?}");
    assert!(
        seen.iter().any(|(_, b)| b == "v9"),
        "v9 taken back: {seen:?}"
    );
    assert!(seen.iter().any(|(_, b)| b == "v4"), "{seen:?}");
}

/// The configuration: `backend-service` at 127.10.33.1:33000, then the rules.
fn sticky() -> String {
    service_entry(
        "127.10.33.1",
        33000,
        &[
            ("127.0.0.2", "version: v0"),
            ("127.0.0.3", "version: v0"),
            ("127.0.0.4", "version: v1"),
            ("127.0.0.5", "version: v1"),
        ],
    ) + r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend-dr}
spec:
  host: backend-service
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: user}}}
  subsets:
  - {name: v0, labels: {version: v0}}
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: backend-vs
  annotations: {lb.dev/sticky-subsets: "cookie:user"}
spec:
  hosts: [backend-service]
  http:
  - route:
    - {destination: {host: backend-service, subset: v0}, weight: 50}
    - {destination: {host: backend-service, subset: v1}, weight: 50}
"#
}

/// The sticky A/B test (issue 15): 1000 users × 10 requests, each on a new
/// connection, split 50/50 by their cookie. The annotation keeps each user in one
/// group and the DestinationRule's consistent hash on one endpoint of it; the groups
/// come out 50 % ± 4 points; `lb explain` names the group the live proxy used.
#[test]
fn sticky_ab_keeps_each_user_in_one_group() {
    let port = 33000;
    let mut env = Env::new("sticky");
    for i in 2..=5 {
        let at: SocketAddr = format!("127.0.0.{i}:{port}").parse().expect("addr");
        env.backend(&format!("b{i}"), &[at]);
    }
    env.write_config("config.yaml", &sticky());
    env.start_daemon(false);
    let group = |b: &str| if b == "b2" || b == "b3" { "v0" } else { "v1" };
    let mut in_v0 = 0;
    let mut moved = Vec::new();
    let mut first = Vec::new();
    for user in 0..1000 {
        let cookie = format!("cookie: theme=dark; user=u{user}\r\n");
        let backends: Vec<String> = (0..10)
            .map(|_| answer(&env, "HTTP/1.1", "/", &cookie).2)
            .collect();
        if backends.iter().any(|b| *b != backends[0]) || backends[0].is_empty() {
            moved.push(format!("u{user}: {backends:?}"));
        }
        in_v0 += usize::from(group(&backends[0]) == "v0");
        first.push(backends[0].clone());
    }
    eprintln!(
        "sticky A/B: {in_v0} of 1000 users in v0, {} moved",
        moved.len()
    );
    assert!(moved.is_empty(), "users that moved: {moved:?}");
    assert!((460..=540).contains(&in_v0), "v0 has {in_v0} of 1000 users");
    // Both endpoints of each group serve someone (the hash spreads inside the group).
    for b in ["b2", "b3", "b4", "b5"] {
        assert!(first.iter().any(|f| f == b), "{b} serves no user");
    }
    let model = lb::model::load_dir(&env.config).expect("valid").model;
    let plan = lb::compile::plan(model).expect("compiles");
    for (user, served) in first.iter().enumerate().take(20) {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            format!("user=u{user}").parse().expect("value"),
        );
        let q = lb::explain::Query {
            host: "backend-service".into(),
            path: "/".into(),
            method: "GET".into(),
            headers,
            to: None,
        };
        let e = lb::explain::explain(&plan, &q);
        let want = format!("lands in {}", group(served));
        assert!(
            e.notes.iter().any(|n| n.ends_with(&want)),
            "u{user}: {:?}",
            e.notes
        );
    }
}

/// The configuration: `backend-service` at 127.10.34.1:34000, then the rules.
fn mirrored() -> String {
    service_entry(
        "127.10.34.1",
        34000,
        &[
            ("127.0.0.2", "version: v0"),
            ("127.0.0.3", "version: v1"),
            ("127.0.0.9", "version: gone"),
        ],
    ) + r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend-dr}
spec:
  host: backend-service
  subsets:
  - {name: v0, labels: {version: v0}}
  - {name: v1, labels: {version: v1}}
  - {name: gone, labels: {version: gone}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend-vs}
spec:
  hosts: [backend-service]
  http:
  - match: [{uri: {prefix: /half}}]
    route: [{destination: {host: backend-service, subset: v0}}]
    mirror: {host: backend-service, subset: v1}
    mirrorPercentage: {value: 50}
  - match: [{uri: {prefix: /nowhere}}]
    route: [{destination: {host: backend-service, subset: v0}}]
    mirrors: [{destination: {host: backend-service, subset: gone}}]
  - route: [{destination: {host: backend-service, subset: v0}}]
    mirror: {host: backend-service, subset: v1}
"#
}

/// `mirror`: v1 gets a copy of every request v0 answers (bodies too, on the lean
/// path), of about half with `mirrorPercentage: 50`; a mirror that refuses never
/// touches the real requests.
#[test]
fn mirrors_get_copies_and_never_touch_the_real_request() {
    let port = 34000;
    let (v0, v1) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    let mut env = Env::new("mirror");
    env.backend("v0", &[v0.parse().expect("addr")]);
    env.backend("v1", &[v1.parse().expect("addr")]);
    env.write_config("config.yaml", &mirrored());
    env.start_daemon(false);
    let copies = |before: u64, want: u64| {
        wait_for(Duration::from_secs(5), "the copies to arrive", || {
            served(&v1) >= before + want
        });
        served(&v1) - before
    };
    let before = served(&v1);
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        for _ in 0..50 {
            let (status, _, backend) = answer(&env, version, "/all", "");
            assert_eq!((status, backend.as_str()), (200, "v0"));
        }
    }
    assert_eq!(
        copies(before, 100),
        100,
        "a copy of each of the 100 requests"
    );
    // A body goes with its copy (the lean path keeps it).
    let before = served(&v1);
    let mut s = TcpStream::connect(env.proxy()).expect("connect");
    s.write_all(b"POST /all HTTP/1.1\r\nhost: backend-service\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
        .expect("write");
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(copies(before, 1), 1);
    // Half of 400 requests copied: 200 ± 40.
    let before = served(&v1);
    for _ in 0..400 {
        assert_eq!(request(&env, "HTTP/1.1", "/half", "").0, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    let half = served(&v1) - before;
    assert!((160..=240).contains(&half), "{half} of 400 copied");
    // A mirror that refuses: every real request answered at once.
    let t = Instant::now();
    for _ in 0..100 {
        assert_eq!(request(&env, "HTTP/1.1", "/nowhere", "").0, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let m = counter(&env, "lb_proxy_mirrored_total");
    assert!(m >= 100 + 1 + 160 + 100, "copies sent: {m}");
}

/// One subset with `connectionPool` bounds: one connection in use, one request
/// waiting for it.
fn pooled() -> String {
    service_entry("127.10.35.1", 35000, &[("127.0.0.2", "version: v0")])
        + r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend-dr}
spec:
  host: backend-service
  subsets:
  - name: v0
    labels: {version: v0}
    trafficPolicy:
      connectionPool:
        tcp: {maxConnections: 1}
        http: {http1MaxPendingRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend-vs}
spec:
  hosts: [backend-service]
  http:
  - route: [{destination: {host: backend-service, subset: v0}}]
"#
}

/// `connectionPool` bounds on both engines: of four requests at once to a backend
/// that answers after 500 ms, one is served, one waits for its connection and is
/// served after it, two get 503 `UO` at once without reaching the backend.
#[test]
fn connection_pool_bounds_answer_503_uo_past_them() {
    let port = 35000;
    let v0 = format!("127.0.0.2:{port}");
    let mut env = Env::new("pooled");
    env.backend("v0", &[v0.parse().expect("addr")]);
    env.write_config("config.yaml", &pooled());
    env.start_daemon(false);
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let before = served(&v0);
        let env = &env;
        let got: Vec<(u16, Duration)> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|i| {
                    s.spawn(move || {
                        // Started 50 ms apart, so the order is known.
                        std::thread::sleep(Duration::from_millis(50 * i));
                        request(env, version, "/slow", "")
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        let statuses: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(statuses, [200, 200, 503, 503], "{version}: {got:?}");
        assert!(
            got[1].1 >= Duration::from_millis(900),
            "{version}: waited {got:?}"
        );
        assert!(
            got[2].1 < Duration::from_millis(300),
            "{version}: at once {got:?}"
        );
        assert_eq!(
            served(&v0) - before,
            2,
            "{version}: the overflow reached no backend"
        );
    }
}

/// Three endpoints hashed by a cookie lb sets when a request lacks it.
fn cookie_hashed() -> String {
    service_entry(
        "127.10.36.1",
        36000,
        &[
            ("127.0.0.2", "v: a"),
            ("127.0.0.3", "v: a"),
            ("127.0.0.4", "v: a"),
        ],
    ) + r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend-dr}
spec:
  host: backend-service
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: user, ttl: 3600s, path: /}}
"#
}

/// `httpCookie.ttl`: a request without the cookie gets one set on its answer (on
/// either engine), and the requests that carry it go to the endpoint the first went to.
#[test]
fn a_missing_hash_cookie_is_set_and_then_keeps_its_endpoint() {
    let port = 36000;
    let mut env = Env::new("cookie");
    for (name, ip) in [
        ("v2", "127.0.0.2"),
        ("v3", "127.0.0.3"),
        ("v4", "127.0.0.4"),
    ] {
        env.backend(name, &[format!("{ip}:{port}").parse().expect("addr")]);
    }
    env.write_config("config.yaml", &cookie_hashed());
    env.start_daemon(false);
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let (first, _) = env.get_once(version, "/", "");
        let set = first
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("{version}: no Set-Cookie in {first}"));
        let value = set.split(';').next().expect("name=value");
        assert!(
            set.ends_with("; Max-Age=3600; Path=/; HttpOnly") && value.starts_with("user="),
            "{set}"
        );
        let (_, _, backend) = answer(&env, version, "/", "");
        let extra = format!("cookie: other=1; {value}\r\n");
        let seen: Vec<String> = (0..30)
            .map(|_| answer(&env, version, "/", &extra).2)
            .collect();
        assert!(
            seen.iter().all(|b| *b == backend),
            "{version}: {backend} first, then {seen:?}"
        );
        let (with_cookie, _) = env.get_once(version, "/", &extra);
        assert!(!with_cookie.contains("set-cookie"), "set only when missing");
    }
}
