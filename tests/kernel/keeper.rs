//! `lb run`'s keeper (issue 16): the daemon killed under load comes back with its
//! listeners never closed, so connects wait for it instead of taking the kernel split,
//! and every request after it is routed with its L7 rules; SIGHUP swaps the daemon for
//! a new one without losing a request.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Client, Env, children as daemons, status_kib, wait_for};
use crate::proxy::{env_with, seed};

/// Waits until the keeper has exactly one daemon, not `old`, and it serves.
fn wait_for_new_daemon(env: &Env, keeper: u32, old: u32) -> u32 {
    wait_for(Duration::from_secs(20), "a new daemon serving", || {
        let d = daemons(keeper);
        d.len() == 1 && d[0] != old && env.admin_get("/ready").starts_with("ready")
    });
    daemons(keeper)[0]
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory effects; the pid is a process this test started.
    assert_eq!(
        unsafe { libc::kill(pid as libc::pid_t, sig) },
        0,
        "kill {pid}"
    );
}

/// Runs `work` under two clients with the header rule's header (→ v1 by the proxy;
/// the kernel split would send most to v0), one keep-alive, one connection per
/// request, each a request every ms; their summaries.
fn under_load(env: &Env, to: &str, phase: &str, work: impl FnOnce()) -> [Value; 2] {
    let args = [
        "--to",
        to,
        "--header",
        "hellotest: true",
        "--count",
        "100000",
        "--every-ms",
        "1",
        "--for-ms",
        "60000",
    ];
    let keep_alive: Vec<&str> = args.iter().copied().chain(["--keep-alive"]).collect();
    let clients = [
        env.spawn_client(&format!("{phase}-keep-alive"), &keep_alive),
        env.spawn_client(&format!("{phase}-per-request"), &args),
    ];
    std::thread::sleep(Duration::from_millis(500));
    work();
    std::thread::sleep(Duration::from_millis(500));
    clients.map(Client::stop)
}

#[test]
fn a_killed_daemon_comes_back_with_its_rules_and_sighup_upgrades_in_place() {
    let (svc, port) = ("127.10.27.1", 27000);
    let env = env_with("keeper", port, &seed("c-header", svc, port), &[]);
    let keeper = env.daemon_pid();
    let to = format!("{svc}:{port}");
    let fallbacks = || {
        env.status()["counters"]["proxy_fallbacks"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = fallbacks();

    // Five kill -9s of the daemon under load.
    let kills = 5;
    let mut down = Vec::new();
    let [ka, pr] = under_load(&env, &to, "kills", || {
        for _ in 0..kills {
            let old = daemons(keeper)[0];
            let t = Instant::now();
            signal(old, libc::SIGKILL);
            wait_for_new_daemon(&env, keeper, old);
            down.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    eprintln!("daemon back after {down:?}\nkeep-alive {ka}\nper request {pr}");
    for (what, s) in [("keep-alive", &ka), ("per request", &pr)] {
        assert_eq!(s["refused"], 0, "{what}: no connect refused: {s}");
        // Only a request in flight on the killed daemon is lost (the keep-alive client
        // sends it again on a new connection, as HTTP clients do, and says so).
        assert!(s["failures"].as_u64() <= Some(kills), "{what}: {s}");
        let ok = s["attempts"].as_u64().unwrap_or(0) - s["failures"].as_u64().unwrap_or(0);
        assert_eq!(
            s["by_backend"]["v1"].as_u64(),
            Some(ok),
            "{what}: every request by its rule: {s}"
        );
        assert!(ok > 500, "{what}: {s}");
    }
    assert_eq!(fallbacks(), before, "no connect took the kernel split");
    let rss = |pid| status_kib(pid, "VmRSS:");
    eprintln!(
        "keeper {} KiB; daemon {} KiB",
        rss(keeper),
        rss(daemons(keeper)[0])
    );

    // SIGHUP: a new daemon from the binary on disk; the old one drains. Nothing lost.
    let [ka, pr] = under_load(&env, &to, "upgrade", || {
        let old = daemons(keeper)[0];
        signal(keeper, libc::SIGHUP);
        wait_for_new_daemon(&env, keeper, old);
    });
    eprintln!("upgrade: keep-alive {ka}\nper request {pr}");
    for (what, s) in [("keep-alive", &ka), ("per request", &pr)] {
        assert_eq!(s["failures"], 0, "{what}: {s}");
        assert_eq!(s["by_backend"]["v1"], s["attempts"], "{what}: {s}");
    }
    assert_eq!(fallbacks(), before, "no connect took the kernel split");
}

/// A daemon that does not come back (each one the keeper starts is killed at once) is
/// given `--fallback-after`: past it the listeners close and connects take the kernel
/// split instead of waiting in a queue nobody reads; the next daemon that serves gets
/// them back, rules and all.
#[test]
fn with_no_daemon_back_within_the_bound_connects_take_the_kernel_split() {
    let (svc, port) = ("127.10.28.1", 28000);
    let config = seed("c-header", svc, port);
    let env = env_with("keeper-bound", port, &config, &["--fallback-after", "1s"]);
    let keeper = env.daemon_pid();
    let to = format!("{svc}:{port}");
    let fallbacks = || {
        env.status()["counters"]["proxy_fallbacks"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = fallbacks();
    let killer = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            for d in daemons(keeper) {
                signal(d, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    // Past the bound, with no daemon: the kernel split serves.
    std::thread::sleep(Duration::from_millis(2_000));
    let during = env.probe(&["--to", &to, "--count", "50", "--every-ms", "10"]);
    killer.join().expect("killer");
    let fell_back = fallbacks() - before;
    eprintln!("with no daemon: {during}; {fell_back} connects took the kernel split");
    assert!(fell_back >= 40, "{fell_back} fallbacks: {during}");
    assert!(during["by_backend"]["v0"].as_u64() >= Some(40), "{during}");
    // The keeper keeps trying (backing off up to 30 s; here ~1.6 s): the rules return.
    wait_for(Duration::from_secs(20), "a daemon serving again", || {
        daemons(keeper).len() == 1 && env.admin_get("/ready").starts_with("ready")
    });
    let after = env.probe(&["--to", &to, "--count", "20", "--header", "hellotest: true"]);
    assert_eq!(after["by_backend"]["v1"], 20, "{after}");
}
