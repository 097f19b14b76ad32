//! The L7 path end to end: the kernel hands connects to lb's proxy, which routes each
//! request. Backends echo what they received (path, Host, their version); clients run
//! inside the attached cgroup and dial the service address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Env, wait_for};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A seed example (config/seed/<name>) moved to this test's service address and port.
pub(crate) fn seed(name: &str, svc: &str, port: u16) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/seed")
        .join(name)
        .join("config.yaml");
    std::fs::read_to_string(path)
        .expect("seed config")
        .replace("127.10.0.1", svc)
        .replace("number: 10000", &format!("number: {port}"))
}

/// An environment with v0 on 127.0.0.2 and v1 on 127.0.0.3, `config` applied.
pub(crate) fn env_with(name: &str, port: u16, config: &str, extra: &[&str]) -> Env {
    env_inside(name, port, config, extra, false, false)
}

/// [`env_with`], with lb and/or the backends inside the attached cgroup.
fn env_inside(
    name: &str,
    port: u16,
    config: &str,
    extra: &[&str],
    lb_inside: bool,
    backends_inside: bool,
) -> Env {
    let mut env = Env::new(name);
    env.backend_at("v0", &[addr(&format!("127.0.0.2:{port}"))], backends_inside);
    env.backend_at("v1", &[addr(&format!("127.0.0.3:{port}"))], backends_inside);
    env.write_config("config.yaml", config);
    env.start_daemon_with(lb_inside, extra);
    env
}

fn share(s: &Value, backend: &str) -> f64 {
    let n = s["by_backend"][backend].as_u64().unwrap_or(0) as f64;
    n * 100.0 / s["attempts"].as_u64().expect("attempts") as f64
}

fn count(s: &Value, backend: &str) -> u64 {
    s["by_backend"][backend].as_u64().unwrap_or(0)
}

/// Seed (b): Host api.wilsontest.com, and a Host in no VirtualService, both split
/// 90/10 per request on one keep-alive connection; the Host reaches the backend
/// unchanged; the unknown Host is counted.
#[test]
fn seed_b_host_header_splits_per_request_with_host_unchanged() {
    let (svc, port) = ("127.10.11.1", 11000);
    let env = env_with("seed-b", port, &seed("b-host-header", svc, port), &[]);
    let to = format!("{svc}:{port}");
    for host in ["api.wilsontest.com", "legacy.internal"] {
        let s = env.probe(&[
            "--to",
            &to,
            "--count",
            "2000",
            "--keep-alive",
            "--host",
            host,
        ]);
        assert_eq!(s["failures"], 0, "{host}: {}", s["first_errors"]);
        let v1 = share(&s, "v1");
        assert!(
            (v1 - 10.0).abs() <= 2.5,
            "{host}: v1 share {v1:.2}% not within 10 ± 2.5"
        );
        assert_eq!(
            s["hosts_seen"],
            serde_json::json!({ host: 2000 }),
            "Host must reach the backend unchanged"
        );
    }
    // Unknown Hosts are flushed to the pinned map about once a second.
    let want = serde_json::json!([{"host": "legacy.internal", "requests": 2000}]);
    wait_for(
        Duration::from_secs(5),
        "the unknown Host to be counted",
        || env.status()["services"][0]["unknown_hosts"] == want,
    );
    assert_eq!(env.status()["services"][0]["datapath"], "proxy");
}

/// Seed (c): `hellotest: true` → v1 for 1000 of 1000; without it → v0 for 1000 of 1000.
#[test]
fn seed_c_header_match() {
    let (svc, port) = ("127.10.12.1", 12000);
    let env = env_with("seed-c", port, &seed("c-header", svc, port), &[]);
    let to = format!("{svc}:{port}");
    let with = env.probe(&[
        "--to",
        &to,
        "--count",
        "1000",
        "--keep-alive",
        "--header",
        "hellotest: true",
    ]);
    assert_eq!(
        (count(&with, "v1"), with["failures"].as_u64()),
        (1000, Some(0)),
        "{with}"
    );
    let without = env.probe(&["--to", &to, "--count", "1000", "--keep-alive"]);
    assert_eq!(
        (count(&without, "v0"), without["failures"].as_u64()),
        (1000, Some(0)),
        "{without}"
    );
    // The admin listener and the access log (the Istio sidecar's line shape).
    assert_eq!(env.admin_get("/ready"), "ready\n");
    let dump = env.admin_get("/config_dump");
    assert!(
        dump.contains("\"virtual_service\": \"default/backend-vs\"") && dump.contains("hellotest"),
        "{dump}"
    );
    let log_path = env.work.join("access.log");
    let want = format!("\"GET /test HTTP/1.1\" 200 - upstream=127.0.0.3:{port} duration=");
    wait_for(
        Duration::from_secs(5),
        "the access log to be flushed",
        || std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains(&want)),
    );
    let log = std::fs::read_to_string(&log_path).expect("access log");
    let line = log.lines().find(|l| l.contains(&want)).expect("a v1 line");
    assert!(
        line.starts_with('[') && line.contains("Z] \"GET") && line.ends_with("route=default"),
        "{line}"
    );
}

/// A rule's header edits (Istio `headers.request` / `headers.response`): set replaces,
/// add appends, remove drops, on the way to the backend and back.
#[test]
fn header_edits_reach_the_backend_and_the_client() {
    let (svc, port) = ("127.10.16.1", 16100);
    let edit = "  http:\n  - match:\n    - uri:\n        prefix: /edit\n    headers:\n      request:\n        set: {x-set: s}\n        add: {x-added: a}\n        remove: [x-removed]\n      response:\n        set: {x-resp-set: \"1\"}\n        remove: [x-backend]\n    route:\n    - destination: {host: backend-service, subset: v1}\n  - match:";
    let config = seed("e-rewrite", svc, port).replacen("  http:\n  - match:", edit, 1);
    let env = env_with("edits", port, &config, &[]);
    let to = format!("{svc}:{port}");
    let f = env.work.join("edits.bin");
    let req = |path: &str, last: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: {to}\r\nx-set: original\r\nx-added: mine\r\nx-removed: r\r\nx-kept: k\r\n{last}\r\n"
        )
    };
    // Two requests on one connection: the edited one, then one without edits.
    std::fs::write(
        &f,
        req("/edit", "") + &req("/test", "connection: close\r\n"),
    )
    .expect("raw");
    let a = env.probe(&["--to", &to, "--raw", f.to_str().expect("utf-8"), "--all"]);
    let h = |i: usize, n: &str| a[i]["headers"][n].as_str().map(str::to_string);
    let edited = (
        h(0, "x-req-x-set"),
        h(0, "x-req-x-added"),
        h(0, "x-req-x-removed"),
        h(0, "x-req-x-kept"),
        h(0, "x-resp-set"),
        h(0, "x-backend"),
    );
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        edited,
        (s("s"), s("mine, a"), None, s("k"), s("1"), None),
        "{a}"
    );
    let plain = (
        h(1, "x-req-x-set"),
        h(1, "x-req-x-removed"),
        h(1, "x-backend"),
    );
    assert_eq!(plain, (s("original"), s("r"), s("v0")), "{a}");
}

/// Seed (d): `/test/v1…` → v1 (also `/test/x/../v1/y`), everything else → v0.
#[test]
fn seed_d_prefix_match() {
    let (svc, port) = ("127.10.13.1", 13000);
    let env = env_with("seed-d", port, &seed("d-prefix", svc, port), &[]);
    let to = format!("{svc}:{port}");
    for (path, backend, seen) in [
        ("/test/v1", "v1", "/test/v1"),
        ("/test/v1/abc", "v1", "/test/v1/abc"),
        ("/test/x/../v1/y", "v1", "/test/v1/y"),
        ("/test", "v0", "/test"),
        ("/test/v2", "v0", "/test/v2"),
        ("/", "v0", "/"),
    ] {
        let s = env.probe(&["--to", &to, "--count", "50", "--path", path]);
        assert_eq!(count(&s, backend), 50, "{path}: {s}");
        assert_eq!(s["paths_seen"], serde_json::json!({ seen: 50 }), "{path}");
    }
}

/// Seed (e): `/test/v2/x?q=1` → v0 receives `/test/x?q=1`; `/test/v1/y` → v1
/// unchanged; the rest → v0.
#[test]
fn seed_e_rewrite() {
    let (svc, port) = ("127.10.14.1", 14000);
    let env = env_with("seed-e", port, &seed("e-rewrite", svc, port), &[]);
    let to = format!("{svc}:{port}");
    for (path, backend, seen) in [
        ("/test/v2/x?q=1", "v0", "/test/x?q=1"),
        ("/test/v1/y", "v1", "/test/v1/y"),
        ("/test/v2", "v0", "/test"),
        ("/other", "v0", "/other"),
    ] {
        let s = env.probe(&["--to", &to, "--count", "50", "--path", path]);
        assert_eq!(count(&s, backend), 50, "{path}: {s}");
        assert_eq!(s["paths_seen"], serde_json::json!({ seen: 50 }), "{path}");
    }
}

/// The proxy finds what each client dialled in the slot of the client's port (shared
/// memory, no syscall). A slot held by another client address sends that connection
/// to the hash instead (one syscall), with the same answers; a client dialling the
/// proxy itself has no original destination. Counted in
/// `lb_proxy_original_destinations_total{source}`.
#[test]
fn original_destinations_come_from_port_slots_else_the_hash() {
    let (svc, port) = ("127.10.21.1", 21000);
    let env = env_with("origdst", port, &seed("e-rewrite", svc, port), &[]);
    let to = format!("{svc}:{port}");
    let sources = || -> [u64; 3] {
        let metrics = env.admin_get("/metrics");
        ["port_slot", "hash", "none"].map(|source| {
            let prefix = format!("lb_proxy_original_destinations_total{{source=\"{source}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    };
    let rewritten = |what: &str| {
        let s = env.probe(&["--to", &to, "--count", "50", "--path", "/test/v2/x"]);
        assert_eq!(count(&s, "v0"), 50, "{what}: {s}");
        assert_eq!(
            s["paths_seen"],
            serde_json::json!({ "/test/x": 50 }),
            "{what}"
        );
    };
    rewritten("port slots");
    assert_eq!(sources(), [50, 0, 0]);
    // Every slot held by a client address nobody uses (as if another pod's
    // connections were waiting in the accept queue on every port).
    let path = lb::datapath::Pins::new(&env.bpffs).map(lb_common::map_names::ORIG_DST_BY_PORT);
    let map = aya::maps::MapData::from_pin(&path).expect("pinned slots");
    let mut slots: aya::maps::Array<_, lb_common::PortSlot> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).expect("an array");
    for p in 0..lb_common::capacity::PORTS {
        let foreign = lb_common::PortSlot {
            client: lb_common::SockAddr4::new([127, 0, 0, 99], p as u16),
            service: lb_common::SockAddr4::new([127, 0, 0, 99], 9),
        };
        slots.set(p, &foreign, 0).expect("slot");
    }
    rewritten("hash");
    assert_eq!(sources(), [50, 50, 0]);
    // The foreign claims were left alone.
    let held = slots.get(&40000, 0).expect("slot");
    assert_eq!(
        held.client,
        lb_common::SockAddr4::new([127, 0, 0, 99], 40000)
    );
    // A client dialling the proxy listener itself: nothing to find.
    let direct = env.proxy().to_string();
    let s = env.probe(&["--to", &direct, "--count", "3", "--host", svc]);
    assert_eq!(count(&s, "v0") + count(&s, "v1"), 3, "{s}");
    assert_eq!(sources(), [50, 50, 3]);
}

/// The shared table of tests/routing: every request through the live proxy gets what
/// `lb explain` says — status, backend, rewritten path and Host, redirect location.
#[test]
fn live_proxy_agrees_with_explain_on_the_shared_table() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/routing");
    let config = std::fs::read_to_string(dir.join("config.yaml")).expect("config");
    let env = env_with("table", 10500, &config, &[]);
    let model = lb::model::load_dir(&env.config).expect("valid").model;
    let plan = lb::compile::plan(model).expect("compiles");
    let text = std::fs::read_to_string(dir.join("cases.jsonl")).expect("cases");
    let cases: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .filter(|c: &Value| !c["to"].is_null())
        .collect();
    assert!(cases.len() >= 50);
    let mut batch = String::new();
    let mut explained = Vec::new();
    for c in &cases {
        let to = if c["to"] == "web" {
            "127.10.5.2:10500"
        } else {
            "127.10.5.1:10500"
        };
        let mut headers = http::HeaderMap::new();
        for (k, v) in c["headers"].as_object().expect("headers") {
            headers.insert(
                http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).expect("name"),
                v.as_str().expect("str").parse().expect("value"),
            );
        }
        let q = lb::explain::Query {
            host: c["host"].as_str().expect("host").into(),
            path: c["path"].as_str().expect("path").into(),
            method: c["method"].as_str().expect("method").into(),
            headers,
            to: Some(to.parse().expect("addr")),
        };
        explained.push(lb::explain::explain(&plan, &q));
        batch.push_str(&serde_json::json!({"to": to, "host": c["host"], "path": c["path"], "method": c["method"], "headers": c["headers"]}).to_string());
        batch.push('\n');
    }
    let batch_file = env.work.join("batch.jsonl");
    std::fs::write(&batch_file, batch).expect("batch");
    let answers = env.probe(&[
        "--to",
        "127.10.5.1:10500",
        "--batch",
        batch_file.to_str().expect("utf-8"),
    ]);
    let answers = answers.as_array().expect("answers");
    let mut failures = Vec::new();
    for ((c, e), a) in cases.iter().zip(&explained).zip(answers) {
        let status = a["status"].as_u64().unwrap_or(0);
        let want_status = e.response.as_ref().map_or(200, |r| u64::from(r.status));
        let mut problems = Vec::new();
        if status != want_status {
            problems.push(format!("status {status}, explain says {want_status}"));
        }
        if e.action == "route" && want_status == 200 {
            let backend = a["headers"]["x-backend"].as_str().unwrap_or("");
            let allowed: Vec<&str> = c["expect"]["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if !allowed.contains(&backend) {
                problems.push(format!("backend {backend:?} not among {allowed:?}"));
            }
            if a["headers"]["x-path"] != e.request.path.as_str() {
                problems.push(format!(
                    "path {} != explain {}",
                    a["headers"]["x-path"], e.request.path
                ));
            }
            if a["headers"]["x-host"] != e.request.host.as_str() {
                problems.push(format!(
                    "host {} != explain {}",
                    a["headers"]["x-host"], e.request.host
                ));
            }
        }
        if let Some(loc) = e.response.as_ref().and_then(|r| r.headers.get("location"))
            && a["headers"]["location"] != loc.as_str()
        {
            problems.push(format!(
                "location {} != explain {loc}",
                a["headers"]["location"]
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} {} host={}: {}",
                c["method"],
                c["path"],
                c["host"],
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// HTTP/1.0 (no 426), h2c with prior knowledge, a WebSocket echo, a half-closing
/// client and pipelined requests with a body through the proxy.
#[test]
fn http10_h2c_websocket_and_pipelining_work_through_the_proxy() {
    let (svc, port) = ("127.10.15.1", 15100);
    let env = env_with("protocols", port, &seed("e-rewrite", svc, port), &[]);
    let to = format!("{svc}:{port}");
    let a = env.probe(&["--to", &to, "--http10", "--path", "/test/v2/a"]);
    assert_eq!(
        (a["status"].as_u64(), a["headers"]["x-path"].as_str()),
        (Some(200), Some("/test/a")),
        "{a}"
    );
    let a = env.probe(&[
        "--to",
        &to,
        "--h2c",
        "--path",
        "/test/v1/h2",
        "--host",
        "api.wilsontest.com",
    ]);
    assert_eq!(
        (
            a["status"].as_u64(),
            a["headers"]["x-backend"].as_str(),
            a["headers"]["x-host"].as_str()
        ),
        (Some(200), Some("v1"), Some("api.wilsontest.com")),
        "{a}"
    );
    let a = env.probe(&["--to", &to, "--websocket", "hello through lb"]);
    assert_eq!(
        (a["status"].as_u64(), a["body"].as_str()),
        (Some(101), Some("hello through lb")),
        "{a}"
    );
    // A client that shuts its write side once the request is sent still gets the
    // routed, rewritten answer (hyper's half_close; without it the proxy took the
    // EOF for a hang-up and answered nothing).
    let f = env.work.join("half-close.bin");
    std::fs::write(&f, format!("GET /test/v2/a HTTP/1.1\r\nhost: {to}\r\n\r\n")).expect("raw");
    let path = f.to_str().expect("utf-8");
    let a = env.probe(&["--to", &to, "--raw", path, "--half-close"]);
    assert_eq!(
        (a["status"].as_u64(), a["headers"]["x-path"].as_str()),
        (Some(200), Some("/test/a")),
        "{a}"
    );
    // Two pipelined requests in one write, the first with a body and a client's
    // X-Forwarded-For: the lean path relays the body, extends the header, frames each
    // answer, and closes after the second as it asks.
    let f = env.work.join("pipelined.bin");
    std::fs::write(
        &f,
        format!(
            "POST /test/v2/a HTTP/1.1\r\nhost: {to}\r\ncontent-length: 5\r\nx-forwarded-for: 10.1.2.3\r\n\r\nhello\
             GET /test/v2/b HTTP/1.1\r\nhost: {to}\r\nconnection: close\r\n\r\n"
        ),
    )
    .expect("raw");
    let path = f.to_str().expect("utf-8");
    let a = env.probe(&["--to", &to, "--raw", path, "--all"]);
    let seen: Vec<_> = a
        .as_array()
        .expect("answers")
        .iter()
        .map(|a| {
            let h = |n: &str| a["headers"][n].as_str().map(str::to_string);
            (a["status"].as_u64(), h("x-method"), h("x-path"))
        })
        .collect();
    let want = |m: &str, p: &str| (Some(200), Some(m.to_string()), Some(p.to_string()));
    assert_eq!(
        seen,
        [want("POST", "/test/a"), want("GET", "/test/b")],
        "{a}"
    );
    let xff = a[0]["headers"]["x-forwarded-for"].as_str().unwrap_or("");
    assert!(xff.starts_with("10.1.2.3, 127."), "{a}");
    assert_eq!(a[1]["headers"]["connection"], "close", "{a}");
    assert!(a[0]["headers"]["date"].is_string(), "a Date is added: {a}");
    // Both engines served: HTTP/1.0, h2c and the WebSocket went to hyper; the
    // half-closing GET and the two pipelined requests took the lean path.
    let metrics = env.admin_get("/metrics");
    let served = |engine: &str| {
        let prefix = format!("lb_proxy_engine_requests_total{{engine=\"{engine}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(
        (served("lean"), served("hyper")),
        (Some(3), Some(3)),
        "{metrics}"
    );
}

/// Malformed and hostile requests get 4xx and never reach a backend.
#[test]
fn hostile_requests_get_4xx_and_reach_no_backend() {
    let (svc, port) = ("127.10.16.1", 16000);
    let env = env_with("hostile", port, &seed("c-header", svc, port), &[]);
    let to = format!("{svc}:{port}");
    let served = || -> u64 {
        ["127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|ip| {
                let a = env.probe(&[
                    "--to",
                    &format!("{ip}:{port}"),
                    "--http10",
                    "--path",
                    "/__requests",
                ]);
                a["body"]
                    .as_str()
                    .unwrap_or("")
                    .trim()
                    .parse::<u64>()
                    .expect("request count")
            })
            .sum()
    };
    let before = served();
    let big = format!(
        "GET /test HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let cases: [(&str, Vec<u8>, u64); 4] = [
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("conflicting Content-Length and Transfer-Encoding", b"POST /test HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("100 KB header", big.into_bytes(), 431),
        ("bad header name", b"GET /test HTTP/1.1\r\nhost: x\r\nbad header: y\r\n\r\n".to_vec(), 400),
    ];
    for (what, bytes, want) in cases {
        let f = env.work.join("raw.bin");
        std::fs::write(&f, bytes).expect("raw");
        let a = env.probe(&["--to", &to, "--raw", f.to_str().expect("utf-8")]);
        assert_eq!(a["status"].as_u64(), Some(want), "{what}: {a}");
    }
    assert_eq!(served(), before, "no hostile request may reach a backend");
}

/// kill -9 of lb under a client loop on a proxy-path service: no refused connection —
/// connects take the kernel split while the proxy is gone, and return to it after.
#[test]
fn proxy_kill9_degrades_to_the_kernel_split_without_refusals() {
    let (svc, port) = ("127.10.17.1", 17000);
    let mut env = env_with("kill9", port, &seed("c-header", svc, port), &[]);
    let to = format!("{svc}:{port}");
    let client = env.spawn_connect_loop(&to, 100_000, 60_000);
    std::thread::sleep(Duration::from_millis(300));
    let kills = 5;
    for _ in 0..kills {
        env.kill_daemons();
        std::thread::sleep(Duration::from_millis(300));
        env.start_daemon_with(false, &[]);
        std::thread::sleep(Duration::from_millis(300));
    }
    let s = client.stop();
    // connect4 hands a connect to the proxy only if its listener exists at that moment;
    // a kill landing between that check and the SYN (a few microseconds) still refuses
    // that one connect. Seen at most once in 5 kills x ~500 connects each; a keeper of
    // the listening socket across restarts would close it (not built yet).
    assert!(
        s["refused"].as_u64().unwrap_or(99) <= 1,
        "refused connections beyond the check-then-connect race: {s}"
    );
    // A request in flight when its proxy dies is cut (EOF, or EAGAIN from the sk_msg
    // path); the client is sequential, so at most a couple per kill.
    assert!(s["failures"].as_u64().unwrap_or(99) <= 2 * kills, "{s}");
    let counters = env.status()["counters"].clone();
    assert!(
        counters["proxy_fallbacks"].as_u64().unwrap_or(0) > 0,
        "connects took the kernel split while lb was down: {counters}"
    );
    let after = counters["proxy_handoffs"].as_u64().unwrap_or(0);
    let s = env.probe(&["--to", &to, "--count", "10", "--header", "hellotest: true"]);
    assert_eq!(
        count(&s, "v1"),
        10,
        "the proxy routes again after the restart: {s}"
    );
    assert!(
        env.status()["counters"]["proxy_handoffs"]
            .as_u64()
            .unwrap_or(0)
            >= after + 10
    );
}

/// The sk_msg shortcut needs lb inside the attached cgroup (its accepted sockets join
/// the socket map in the handshake): then the client <-> proxy hop is redirected both
/// ways, and so is the proxy <-> backend hop when the backends run inside the cgroup
/// too (local pods on a node). Every stream stays in order: h2c writes its preface,
/// SETTINGS and HEADERS separately, so a stream read out of order is a protocol error
/// (the one-sided design of session 1 saw that about once in ten h2c requests when
/// both directions were on). `--no-sk-msg`, or lb outside the cgroup: nothing
/// redirected, the same answers. Clients that join the socket map reach the proxy's
/// main listener, the others (one-request connections, every client when the client
/// hop is off) its deferred one.
#[test]
fn sk_msg_shortcuts_both_hops_in_order_inside_the_cgroup_only() {
    let (svc, port) = ("127.10.18.1", 18000);
    let to = format!("{svc}:{port}");
    const KEEP_ALIVE: u64 = 200;
    // (lb inside, backends inside, flag, redirected messages per keep-alive request)
    for (inside, backends_inside, flag, per_request) in [
        (true, true, None, 4..=5),
        (true, false, None, 2..=3),
        (true, true, Some("--no-sk-msg"), 0..=0),
        (false, true, None, 0..=0),
    ] {
        let extra: Vec<&str> = flag.into_iter().collect();
        let env = env_inside(
            "skmsg",
            port,
            &seed("c-header", svc, port),
            &extra,
            inside,
            backends_inside,
        );
        let case = format!("lb inside {inside}, backends inside {backends_inside}, {flag:?}");
        let s = env.probe_keep_alive(&to, KEEP_ALIVE, &["--header", "hellotest: true"]);
        assert_eq!(count(&s, "v1"), KEEP_ALIVE, "{case}: {s}");
        let redirected = || -> u64 {
            env.status()["counters"]["sk_msg_redirected"]
                .as_u64()
                .unwrap_or(0)
        };
        let n = redirected();
        eprintln!("{case}: {n} messages redirected over {KEEP_ALIVE} keep-alive requests");
        // One message per request and per answer on each shortcut hop (a few more if
        // a write is split); the connection's first messages may precede the pool.
        let (lo, hi) = (
            per_request.start() * KEEP_ALIVE,
            (per_request.end() + 1) * KEEP_ALIVE,
        );
        assert!(
            n >= lo.saturating_sub(8) && n <= hi,
            "{case}: {n} messages redirected over {KEEP_ALIVE} requests, expected {per_request:?} per request"
        );
        // One process, a new connection per request: soon kept off the socket map
        // (the client hop's psocks would cost more than they save), bar explorers.
        let s = env.probe(&["--to", &to, "--count", "50"]);
        assert_eq!(count(&s, "v0") + count(&s, "v1"), 50, "{case}: {s}");
        let skipped = env.status()["counters"]["sk_msg_skipped"]
            .as_u64()
            .unwrap_or(0);
        eprintln!("{case}: {skipped} of 50 one-request connections kept off the socket map");
        if inside && flag.is_none() {
            assert!(skipped >= 25, "{case}: {skipped}");
        } else {
            assert_eq!(skipped, 0, "{case}");
        }
        for i in 0..30 {
            let a = env.probe(&["--to", &to, "--h2c", "--path", &format!("/h2/{i}")]);
            assert_eq!(a["status"].as_u64(), Some(200), "{case}: h2c #{i}: {a}");
        }
        // 81 connections so far: the keep-alive one, 50 one-request ones, 30 h2c ones
        // (each a new process). Those that join the socket map were sent to the main
        // listener, the others to the deferred one (accepted once their request is
        // there).
        let metrics = env.admin_get("/metrics");
        let accepted = ["main", "deferred"].map(|listener| {
            let prefix = format!("lb_proxy_accepted_total{{listener=\"{listener}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        });
        if inside && flag.is_none() {
            assert_eq!(accepted, [81 - skipped, skipped], "{case}");
        } else {
            assert_eq!(accepted, [0, 81], "{case}: nobody joins");
        }
        if inside && backends_inside && flag.is_none() {
            // A client dialling the proxy listener itself (no connect4 hand-off) is not
            // in the socket map, nor then is the proxy's accepted socket (no client left
            // it a mark): that hop is not redirected and looks for no peer, and the
            // answer is right.
            let stayed = || env.status()["counters"]["sk_msg_stayed_on_tcp"].as_u64();
            let before = (stayed(), redirected());
            let direct = env.proxy().to_string();
            let s = env.probe(&[
                "--to",
                &direct,
                "--count",
                "3",
                "--host",
                "api.wilsontest.com",
            ]);
            assert_eq!(count(&s, "v0") + count(&s, "v1"), 3, "{case}: {s}");
            // Only the proxy <-> backend hop is redirected: one message each way per
            // request.
            assert_eq!(
                (stayed(), redirected()),
                (before.0, before.1 + 2 * 3),
                "{case}"
            );
        }
        let n = redirected();
        let metrics = env.admin_get("/metrics");
        assert!(
            metrics.contains(&format!("lb_sk_msg_redirected_total {n}")),
            "{case}: {metrics}"
        );
        if !inside {
            let log = env.daemon_log();
            assert!(
                log.contains("sk_msg shortcut of the proxy's hops is off"),
                "{log}"
            );
        }
        drop(env);
    }
}

/// lb's own sockets are never steered, also when lb runs inside the attached cgroup:
/// its proxy's upstream connect to a steered service address goes there untouched
/// (as Istio's sidecar traffic bypasses interception), never back through connect4.
#[test]
fn lb_inside_the_cgroup_leaves_its_own_sockets_untouched() {
    let mut env = Env::new("own");
    let port = 19000u16;
    env.backend("v0", &[addr("127.0.0.2:19000")]);
    env.backend("v1", &[addr("127.0.0.3:19000")]);
    // `inner` is a kernel-path service; `front` (proxy path) has inner's address as
    // its only endpoint.
    let config = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inner}}
spec:
  hosts: [inner]
  addresses: [127.10.19.1]
  ports: [{{number: {port}, name: http}}]
  endpoints: [{{address: 127.0.0.2}}, {{address: 127.0.0.3}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: front}}
spec:
  hosts: [front]
  addresses: [127.10.19.2]
  ports: [{{number: {port}, name: http}}]
  endpoints: [{{address: 127.10.19.1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: front}}
spec:
  hosts: [front]
  http:
  - match: [{{uri: {{prefix: /}}}}]
    route: [{{destination: {{host: front}}}}]
"#
    );
    env.write_config("config.yaml", &config);
    let pid = env.start_daemon_with(true, &[]);
    let procs =
        std::fs::read_to_string(env.cgroup.path.join("cgroup.procs")).expect("cgroup.procs");
    assert!(
        procs.lines().any(|p| p.trim() == pid.to_string()),
        "lb must run inside the attached cgroup"
    );
    // A client in the cgroup is steered as usual.
    let s = env.probe(&["--to", &format!("127.10.19.1:{port}"), "--count", "20"]);
    assert_eq!(s["failures"], 0, "{s}");
    // Through the proxy: lb dials 127.10.19.1 itself. Steered, it would reach a backend;
    // untouched, nothing listens on the service address and the proxy answers 502.
    let s = env.probe(&["--to", &format!("127.10.19.2:{port}"), "--count", "5"]);
    assert_eq!(
        s["failures"], 5,
        "lb's own connect must not be steered: {s}"
    );
    assert!(
        s["first_errors"][0].as_str().unwrap_or("").contains("502"),
        "{s}"
    );
    let status = env.status();
    let inner = status["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|v| v["address"] == "127.10.19.1")
        .expect("inner")
        .clone();
    let connects: u64 = inner["subsets"]
        .as_array()
        .expect("subsets")
        .iter()
        .map(|x| x["connects_total"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        connects, 20,
        "only the client's 20 connects were steered, none of lb's: {status}"
    );
    wait_for(Duration::from_secs(2), "status", || {
        env.status()["config"]["applied_at"].is_string()
    });
}

/// SIGTERM drains: the proxy stops accepting (new connects take the kernel split at
/// once, none waits in a queue the keeper still holds), finishes the request in
/// flight, and the daemon exits cleanly.
#[test]
fn sigterm_drains_in_flight_requests() {
    let (svc, port) = ("127.10.20.1", 20000);
    let mut env = env_with("drain", port, &seed("c-header", svc, port), &[]);
    let to = format!("{svc}:{port}");
    let slow = env.spawn_probe(&[
        "--to",
        &to,
        "--count",
        "1",
        "--path",
        "/slow",
        "--header",
        "hellotest: true",
    ]);
    std::thread::sleep(Duration::from_millis(150));
    // New connects while it drains: the kernel split takes them at once, and none
    // sent to the proxy before that is reset with its listeners' queue (one was, in
    // CI, when the listeners closed the moment the daemon was told to stop).
    let during = env.spawn_client(
        "during",
        &["--to", &to, "--count", "2000", "--every-ms", "1"],
    );
    env.stop_daemons();
    let during = during.stop();
    assert_eq!(during["failures"], 0, "connects during the drain: {during}");
    assert!(
        env.daemon_log()
            .contains("the proxy's listeners left the kernel's map"),
        "{}",
        env.daemon_log()
    );
    let out = slow.wait_with_output().expect("probe");
    let s: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (s["failures"].as_u64(), count(&s, "v1")),
        (Some(0), 1),
        "the in-flight request finished on its route: {s}"
    );
    // The datapath stays pinned: with the proxy gone, connects take the kernel split.
    let s = env.probe(&["--to", &to, "--count", "20"]);
    assert_eq!(
        (s["failures"].as_u64(), count(&s, "v0")),
        (Some(0), 20),
        "{s}"
    );
}

/// Edits never apply half-written files (issue 16). Under keep-alive load whose
/// requests a header rule sends to v1, the VirtualService is edited in place 20 times
/// in two steps 10 ms apart (`>` then `>>`): the first step ends at the VirtualService
/// (a valid file without it, the case that once sent traffic the wrong way) or in the
/// middle of a word in it (an invalid file). Each edit is applied once, whole; then 20 atomic
/// renames, at once; a log and a swap file written beside the config apply nothing.
/// Every load request succeeds on its rule.
#[test]
fn edits_in_place_and_renames_apply_whole_under_load() {
    use std::io::Write as _;
    let (svc, port) = ("127.10.22.1", 22000);
    // Edit i: `hellotest: true<i>` → v1 (shows it is live), `load: yes` → v1 always.
    let config = |i: u32| {
        seed("c-header", svc, port).replace(
            "          exact: \"true\"\n",
            &format!("          exact: \"true{i}\"\n    - headers:\n        load:\n          exact: \"yes\"\n"),
        )
    };
    let env = env_with("in-place", port, &config(0), &[]);
    let to = format!("{svc}:{port}");
    let live = |env: &Env, i: u32| {
        let s = env.probe(&[
            "--to",
            &to,
            "--count",
            "1",
            "--header",
            &format!("hellotest: true{i}"),
        ]);
        count(&s, "v1") == 1
    };
    let applies = |env: &Env| env.daemon_log().matches("configuration applied").count();
    let stop = env.work.join("stop-load");
    let load = env.spawn_probe(&[
        "--to",
        &to,
        "--keep-alive",
        "--header",
        "load: yes",
        "--count",
        "200000",
        "--every-ms",
        "1",
        "--for-ms",
        "60000",
        "--until-file",
        stop.to_str().expect("utf-8"),
    ]);
    let path = env.config.join("config.yaml");
    for i in 1..=20 {
        let text = config(i);
        let cut = if i % 2 == 0 {
            text.find("apiVersion: networking.istio.io/v1\nkind: VirtualService")
        } else {
            text.find("subset: v1").map(|at| at + "sub".len())
        }
        .expect("cut");
        std::fs::write(&path, &text[..cut]).expect("first step");
        std::thread::sleep(Duration::from_millis(10));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(&text.as_bytes()[cut..]).expect("second step");
        drop(f);
        wait_for(Duration::from_secs(5), "the in-place edit to apply", || {
            live(&env, i)
        });
    }
    let log = env.daemon_log();
    // "configuration rejected, ..." or "object rejected, ...": a half file was read.
    assert!(
        !log.contains("rejected,"),
        "a half-written file was read:\n{log}"
    );
    assert_eq!(applies(&env), 21, "one apply per edit:\n{log}");
    for i in 21..=40 {
        env.write_config("config.yaml", &config(i));
        wait_for(Duration::from_secs(5), "the renamed file to apply", || {
            live(&env, i)
        });
    }
    assert_eq!(applies(&env), 41, "one apply per rename");
    let mut other = std::fs::File::create(env.config.join("lb.log")).expect("log");
    for n in 0..50 {
        writeln!(other, "line {n}").expect("write");
        std::fs::write(env.config.join(".config.yaml.swp"), n.to_string()).expect("swap");
    }
    drop(other);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(applies(&env), 41, "files lb does not read apply nothing");
    let s = crate::harness::stop_probe(load, &stop);
    assert!(s["attempts"].as_u64() > Some(1000), "{s}");
    assert_eq!(
        (s["failures"].as_u64(), count(&s, "v0")),
        (Some(0), 0),
        "every load request succeeded on its rule: {s}"
    );
}
