//! Soak (issue 16): mixed traffic — a keep-alive client on the header rule, a client
//! with a connection per request, a kernel-path connect loop — with a configuration
//! change every 2 s, for `LB_SOAK_SECS` seconds (60 in CI; `LB_SOAK_SECS=600` for the
//! 10-minute run). Afterwards the serving daemon's RSS and open descriptors are where
//! they were after a warm-up, and no map keeps entries the traffic left behind.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Client, Env, seed_config, status_kib};
use crate::proxy::seed;

/// Maps that must be back where they were once traffic stops: the sockets joined (a
/// socket leaves the socket map as it closes), the original destinations (the proxy
/// takes each), and what the configuration fills.
const RETURNING: [&str; 6] = [
    "LB_SOCKETS",
    "LB_ORIG_DST",
    "LB_SERVICES",
    "LB_SLOTS",
    "LB_ENDPOINTS",
    "LB_HOSTS",
];
/// LRU caches that keep a closed socket's mark by design (sk_msg.rs: a stale mark
/// only keeps a later socket with the same tuple on TCP) and are bounded by their
/// capacity; reported, not compared.
const CACHES: [&str; 3] = ["LB_SENDERS", "LB_PEERS_TO_JOIN", "LB_HABITS"];

/// Entries in a pinned map (bpftool's dump).
fn entries(env: &Env, map: &str) -> usize {
    let path = env.bpffs.join("current").join(map);
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&path)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v.as_array().map_or(0, Vec::len)
}

/// What the soak compares: RSS KiB, open descriptors, entries per map.
#[derive(Debug)]
struct Footprint {
    rss_kib: u64,
    fds: usize,
    maps: Vec<(&'static str, usize)>,
}

fn footprint(env: &Env) -> Footprint {
    let pid = env.serving_pid();
    let rss_kib = status_kib(pid, "VmRSS:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    let maps = RETURNING
        .iter()
        .chain(&CACHES)
        .map(|m| (*m, entries(env, m)))
        .collect();
    Footprint { rss_kib, fds, maps }
}

/// The configuration: the seed's header rule on the proxy path (with or without a
/// rule no request matches, so each change republishes the route table) and a
/// weight-only service in the kernel (90/10 or 50/50).
fn config(svc: &str, kernel_svc: &str, port: u16, change: usize) -> String {
    let mut proxy = seed("c-header", svc, port);
    if !change.is_multiple_of(2) {
        proxy = proxy.replacen(
            "  http:\n",
            "  http:\n  - match: [{uri: {prefix: /never}}]\n    route: [{destination: {host: backend-service, subset: v1}}]\n",
            1,
        );
    }
    let w0 = if change.is_multiple_of(2) { 90 } else { 50 };
    let kernel = seed_config(kernel_svc, port, "127.0.0.2", "127.0.0.3", w0, 100 - w0)
        .replace("backend-", "kernel-");
    format!("{proxy}\n---\n{kernel}")
}

/// The three clients, for at most `secs`.
fn traffic(env: &Env, to: &str, kernel_to: &str, secs: u64, phase: &str) -> Vec<Client> {
    let ms = (secs * 1000).to_string();
    let common = ["--count", "10000000", "--for-ms", &ms];
    [
        (
            "keep-alive",
            vec![
                "--to",
                to,
                "--keep-alive",
                "--every-ms",
                "1",
                "--header",
                "hellotest: true",
            ],
        ),
        ("per-request", vec!["--to", to, "--every-ms", "2"]),
        ("kernel", vec!["--to", kernel_to, "--every-ms", "2"]),
    ]
    .into_iter()
    .map(|(name, mut args)| {
        args.extend(common);
        env.spawn_client(&format!("{phase}-{name}"), &args)
    })
    .collect()
}

#[test]
fn mixed_traffic_and_config_changes_leave_nothing_behind() {
    let secs: u64 = std::env::var("LB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let (svc, kernel_svc, port) = ("127.10.29.1", "127.10.29.2", 29000);
    let (to, kernel_to) = (format!("{svc}:{port}"), format!("{kernel_svc}:{port}"));
    let mut env = Env::new("soak");
    for (name, ip) in [("v0", "127.0.0.2"), ("v1", "127.0.0.3")] {
        // Inside the cgroup, as local pods: the sk_msg hops (and their maps) take part.
        env.backend_at(name, &[format!("{ip}:{port}").parse().expect("addr")], true);
    }
    env.write_config("config.yaml", &config(svc, kernel_svc, port, 0));
    env.start_daemon(true);

    // Warm-up: the same traffic for 5 s, then quiet; the footprint to come back to.
    let warm = traffic(&env, &to, &kernel_to, 5, "warm");
    std::thread::sleep(Duration::from_secs(5));
    for s in warm.into_iter().map(Client::stop) {
        assert_eq!(s["failures"], 0, "warm-up: {s}");
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let before = footprint(&env);

    let clients = traffic(&env, &to, &kernel_to, secs + 30, "soak");
    let start = Instant::now();
    let mut changes = 0;
    let mut during = None;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(2));
        changes += 1;
        env.write_config("config.yaml", &config(svc, kernel_svc, port, changes));
        if during.is_none() && start.elapsed() >= Duration::from_secs(secs / 2) {
            during = Some(footprint(&env));
        }
    }
    // End on the configuration it started with, so the plan's maps compare.
    if !changes.is_multiple_of(2) {
        changes += 1;
        env.write_config("config.yaml", &config(svc, kernel_svc, port, changes));
        std::thread::sleep(Duration::from_millis(500));
    }
    let results: Vec<Value> = clients.into_iter().map(Client::stop).collect();
    // Past the 2 s a replaced revision's entries stay (run.rs GRACE).
    std::thread::sleep(Duration::from_millis(3_000));
    let after = footprint(&env);
    let log = env.daemon_log();
    let applied = log.matches("configuration applied").count();
    eprintln!(
        "soak {secs} s, {changes} changes ({applied} applies):\nbefore {before:?}\nduring {during:?}\nafter  {after:?}\nkeep-alive {}\nper request {}\nkernel path {}",
        results[0], results[1], results[2]
    );
    for (what, s) in ["keep-alive", "per request", "kernel path"]
        .iter()
        .zip(&results)
    {
        assert_eq!(s["failures"], 0, "{what}: {s}");
        assert!(s["attempts"].as_u64() > Some(secs * 100), "{what}: {s}");
    }
    assert_eq!(
        results[0]["by_backend"]["v1"], results[0]["attempts"],
        "the header rule throughout"
    );
    assert!(!log.contains("configuration rejected"));
    assert!(
        applied > changes,
        "every change applied: {applied} applies for {changes}"
    );
    // Flat: descriptors as before (none held for closed connections), memory within
    // 10 % (allocator noise), traffic maps back to what they held, plan maps unchanged.
    assert!(
        after.fds <= before.fds + 2,
        "descriptors {} → {}",
        before.fds,
        after.fds
    );
    assert!(
        after.rss_kib <= before.rss_kib + before.rss_kib / 10 + 2048,
        "RSS {} → {} KiB",
        before.rss_kib,
        after.rss_kib
    );
    for ((m, b), (_, a)) in before.maps.iter().zip(&after.maps).take(RETURNING.len()) {
        assert!(a <= b, "{m}: {b} entries before, {a} after");
    }
    for ((m, _), (_, a)) in before.maps.iter().zip(&after.maps).skip(RETURNING.len()) {
        let capacity = lb_common::layout::map(m)
            .expect("in the layout")
            .max_entries as usize;
        assert!(*a <= capacity, "{m}: {a} entries, capacity {capacity}");
    }
}
