//! Renders BENCHMARKS.md from one harness run.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Results, Row, Sample};

#[derive(Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu: String,
    pub date: String,
    /// The commit measured (`git describe --always --dirty`), when run from a checkout.
    pub commit: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let date = humantime_now();
        let commit = std::process::Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel,
            cpu,
            date,
            commit,
        }
    }
}

fn humantime_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of one row and mode.
pub struct Summary {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub cpu: f64,
    /// wrk's CPU per request (0 in runs from before it was measured).
    pub client: f64,
    pub machine: f64,
    pub spread: f64,
    pub errors: u64,
}

pub fn summarize(samples: &[Sample], row: Row, close: bool) -> Summary {
    let s: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.row == row && s.close == close)
        .collect();
    let rps: Vec<f64> = s.iter().map(|x| x.wrk.rps).collect();
    let (min, max) = rps
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let m = median(rps.clone());
    Summary {
        rps: m,
        p50: median(s.iter().map(|x| x.wrk.p50_us).collect()),
        p99: median(s.iter().map(|x| x.wrk.p99_us).collect()),
        cpu: median(s.iter().map(|x| x.cpu_us_per_req).collect()),
        machine: median(s.iter().map(|x| x.machine_us_per_req).collect()),
        client: median(
            s.iter()
                .map(|x| x.wrk.client_cpu_us as f64 / x.wrk.requests.max(1) as f64)
                .collect(),
        ),
        spread: if m > 0.0 {
            (max - min) / m * 100.0
        } else {
            0.0
        },
        errors: s.iter().map(|x| x.wrk.errors).sum(),
    }
}

/// Per-round ratios of `metric` for row `a` over row `b` in one mode: median, min, max.
fn paired(
    samples: &[Sample],
    a: Row,
    b: Row,
    close: bool,
    metric: fn(&Sample) -> f64,
) -> (f64, f64, f64) {
    let of = |row: Row, round: usize| {
        samples
            .iter()
            .find(|s| s.row == row && s.close == close && s.round == round)
            .map(metric)
    };
    let ratios: Vec<f64> = samples
        .iter()
        .filter(|s| s.row == a && s.close == close)
        .filter_map(|s| Some(metric(s) / of(b, s.round)?))
        .collect();
    let (min, max) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    (median(ratios), min, max)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

pub fn render(r: &Results) -> String {
    let o = &r.options;
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "One run of `cargo xtask bench{}{}` on {} ({} cores, kernel {}), {}, commit {}.",
        if o.access_log { " --access-log" } else { "" },
        if o.smoke { " --smoke" } else { "" },
        r.machine.cpu,
        r.machine.cores,
        r.machine.kernel,
        r.machine.date,
        if r.machine.commit.is_empty() {
            "unknown"
        } else {
            &r.machine.commit
        }
    );
    let _ = writeln!(
        md,
        "\nReproduce: `sudo ./scripts/bench.sh` (installs wrk, HAProxy and nginx from Debian, builds, runs `cargo xtask bench`; results in `bench/results.json`).\n"
    );
    let _ = writeln!(
        md,
        "Setup: backends (`lb backend`: one process answering as v0 on 127.0.0.2 and v1 on 127.0.0.3, so no row pays for two backend processes taking turns on a CPU; each lb daemon has its own identical process inside its cgroup, as local pods under a node's root cgroup, where the kernel path's client ↔ backend hop and the proxy's hops can be shortcut by sk_msg) and every balancer pinned to CPU 0; `wrk -t1 -c50` pinned to CPU 1. {} interleaved round(s) of {} s per row and mode (A B C … A B C …); medians; spread = (max − min) / median of req/s over rounds. Balancer CPU is user + system time of its process(es) from /proc during the run, divided by requests; client CPU is wrk's own (its rusage), divided by requests; machine CPU is the busy time of both CPUs from /proc/stat (client, balancer, backends and the kernel's softirq work, wherever it lands), divided by requests — the number kernel shortcuts cannot move between columns. lb: proxy on 1 thread (tokio current-thread), daemon inside the cgroup it attaches to (as on a node), `--sk-msg all` for the \"sk_msg on\" rows and `--no-sk-msg` for the \"off\" rows, access log {}; HAProxy `nbthread 1`, nginx `worker_processes 1`, both with the same 90/10 split, `hellotest` header rule and `/test/v2` rewrite, configs in `bench/`. Every row was checked before timing: 500 new connections, no failure, the configured split.\n",
        o.rounds,
        o.seconds,
        if o.access_log { "on" } else { "off" }
    );
    for close in [false, true] {
        let _ = writeln!(
            md,
            "## {}\n",
            if close {
                "New connection per request (`Connection: close`)"
            } else {
                "Keep-alive"
            }
        );
        let _ = writeln!(
            md,
            "| row | req/s | × direct | × HAProxy | × nginx | p50 µs | p99 µs | balancer CPU µs/req | client CPU µs/req | machine CPU µs/req | spread | socket errors |"
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let direct = summarize(&r.samples, Row::Direct, close);
        let hap = summarize(&r.samples, Row::Haproxy, close);
        let ngx = summarize(&r.samples, Row::Nginx, close);
        for &row in &r.options.rows {
            let s = summarize(&r.samples, row, close);
            let cpu = if matches!(row, Row::Direct) {
                "–".to_string()
            } else {
                format!("{:.1}", s.cpu)
            };
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {cpu} | {:.1} | {:.1} | {:.1} % | {} |",
                row.label(),
                s.rps,
                s.rps / direct.rps,
                s.rps / hap.rps,
                s.rps / ngx.rps,
                s.p50,
                s.p99,
                s.client,
                s.machine,
                s.spread,
                s.errors
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "lb kernel path: the balancer process does no work per request (CPU ≈ 0); connect4 runs in the client's connect() and sk_msg in the sender's write(), both counted in the client's time (client CPU column: wrk's own user + system time per request, which in close mode is what bounds req/s — the client's CPU is the busy one) and the backend's (machine CPU column).\n"
    );
    let _ = writeln!(
        md,
        "## Latency at a fixed offered load (1000 req/s, 10 keep-alive connections, paced, latency from the scheduled send time; interleaved rounds: the median, and the p99's range over the rounds)\n"
    );
    let _ = writeln!(
        md,
        "| row | p50 µs | p99 µs | p99 range µs (rounds) | added p50 µs | added p99 µs | requests | errors |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let direct = r
        .fixed_rate
        .iter()
        .find(|(row, _)| *row == Row::Direct)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    for (row, v) in &r.fixed_rate {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {} | {:+.0} | {:+.0} | {} | {} |",
            row.label(),
            f(v, "p50_us"),
            f(v, "p99_us"),
            match v["rounds"].as_u64() {
                Some(n) => format!("{:.0}–{:.0} ({n})", f(v, "p99_us_min"), f(v, "p99_us_max")),
                None => "one pass".to_string(),
            },
            f(v, "p50_us") - f(&direct, "p50_us"),
            f(v, "p99_us") - f(&direct, "p99_us"),
            v["requests"],
            v["errors"]
        );
    }
    let _ = writeln!(md, "\n## Memory\n\n| balancer | peak RSS MiB |\n|---|---:|");
    for (row, kib) in &r.rss_kib {
        if !matches!(
            row,
            Row::Direct
                | Row::LbKernel
                | Row::LbKernelNoSkMsg
                | Row::LbProxyNoSkMsg
                | Row::LbProxySplit
                | Row::LbProxyPolicy
        ) {
            let _ = writeln!(
                md,
                "| {} | {:.1} |",
                if *row == Row::LbProxySkMsg {
                    "lb (daemon + proxy)"
                } else {
                    row.label()
                },
                *kib as f64 / 1024.0
            );
        }
    }
    let c = &r.control;
    let _ = writeln!(
        md,
        "\n## Control plane\n\nIn process, one pass over everything (what `lb validate` and `lb plan` do): load YAML, compile, apply; then the daemon, which builds slice by slice (ARCHITECTURE.md): its first load (read, validate, compile, apply: the \"configuration applied\" it logs), its idle RSS, and one VirtualService changed among all (by rename; the pinned service entry polled every 0.2 ms).\n\n| services × 10 endpoints | load YAML ms | compile ms | apply ms | unchanged re-apply ms | daemon first load ms | daemon idle RSS MiB | same, `--no-parse-cache` | change live: median / max ms (changes) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (n, load, compile, apply, again) in &c.apply {
        let (rss, rss_nc) = c
            .idle_rss_kib
            .iter()
            .find(|(m, _, _)| m == n)
            .map_or((f64::NAN, f64::NAN), |(_, a, b)| {
                (*a as f64 / 1024.0, *b as f64 / 1024.0)
            });
        let first = c
            .first_load_ms
            .iter()
            .find(|(m, _)| m == n)
            .map_or(f64::NAN, |(_, ms)| *ms);
        let change = c.changes.iter().find(|t| t.0 == *n).map_or_else(
            || "–".to_string(),
            |(_, median, max, k)| format!("{median:.1} / {max:.1} ({k})"),
        );
        let _ = writeln!(
            md,
            "| {n} | {load:.0} | {compile:.1} | {apply:.0} | {again:.0} | {first:.0} | {rss:.1} | {rss_nc:.1} | {change} |"
        );
    }
    let _ = writeln!(
        md,
        "\n`lb run`'s keeper (it holds the proxy's listening sockets across daemon restarts) adds {:.1} MiB, whatever the configuration.",
        c.keeper_rss_kib as f64 / 1024.0
    );
    if !c.kubernetes.is_empty() {
        let _ = writeln!(
            md,
            "\nThrough the Kubernetes source: the same services as Services, EndpointSlices (10 endpoints), pods, DestinationRules and VirtualServices, listed and watched from the fake API server (tests/kernel/apiserver.rs, real HTTP on loopback): from `lb run` to its first apply, idle RSS, one VirtualService or one endpoint's readiness changed (live: the pinned service entry's revision), and a burst of endpoint changes to as many Services.\n\n| services | first sync ms (its apply) | idle RSS MiB | VirtualService change live: median / max ms | endpoint change live: median / max ms | burst: changes → applies, last live after the last event |\n|---:|---:|---:|---:|---:|---:|"
        );
        for k in &c.kubernetes {
            let _ = writeln!(
                md,
                "| {} | {:.0} ({:.0}) | {:.1} | {:.1} / {:.1} ({}) | {:.1} / {:.1} ({}) | {} → {}, {:.1} ms |",
                k.services,
                k.first_sync_ms,
                k.first_apply_ms,
                k.idle_rss_kib as f64 / 1024.0,
                k.vs_change.0,
                k.vs_change.1,
                k.vs_change.2,
                k.endpoint_change.0,
                k.endpoint_change.1,
                k.endpoint_change.2,
                k.burst.0,
                k.burst.1,
                k.burst.2
            );
        }
    }

    // Targets.
    let ka = |row| summarize(&r.samples, row, false);
    let cl = |row| summarize(&r.samples, row, true);
    let (pk, pc, nk, nc) = (
        ka(Row::LbProxySkMsg),
        cl(Row::LbProxySkMsg),
        ka(Row::LbProxyNoSkMsg),
        cl(Row::LbProxyNoSkMsg),
    );
    let (kk, kc, ok, oc) = (
        ka(Row::LbKernel),
        cl(Row::LbKernel),
        ka(Row::LbKernelNoSkMsg),
        cl(Row::LbKernelNoSkMsg),
    );
    let rss_mib = |n: usize| {
        c.idle_rss_kib
            .iter()
            .find(|t| t.0 == n)
            .map(|t| t.1 as f64 / 1024.0)
    };
    let _ = writeln!(
        md,
        "## Targets\n\nJudged on per-round ratios: the two rows of a round ran minutes apart, so \
         their ratio is free of the drift between rounds; the table gives the median over rounds \
         and its range, then the ratio of the medians above for reference.\n\n\
         | target | per-round ratio, keep-alive: median (range) | close: median (range) | ratio of medians (keep-alive / close) | |\n|---|---|---|---|---|"
    );
    // One row per target measured in both modes, `a` over `b` per round.
    let mut both =
        |target: &str, a: Row, b: Row, metric: fn(&Sample) -> f64, ok: fn(f64) -> bool| {
            // A partial run (`--rows`) judges only the targets whose rows it ran.
            if !r.samples.iter().any(|s| s.row == a) || !r.samples.iter().any(|s| s.row == b) {
                return;
            }
            let k = paired(&r.samples, a, b, false, metric);
            let c = paired(&r.samples, a, b, true, metric);
            let of_medians = |close: bool| {
                let m = |row| {
                    median(
                        r.samples
                            .iter()
                            .filter(|s| s.row == row && s.close == close)
                            .map(metric)
                            .collect(),
                    )
                };
                m(a) / m(b)
            };
            let _ = writeln!(
                md,
                "| {target} | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {:.2} / {:.2} | {} |",
                k.0,
                k.1,
                k.2,
                c.0,
                c.1,
                c.2,
                of_medians(false),
                of_medians(true),
                verdict(ok(k.0) && ok(c.0))
            );
        };
    let rps: fn(&Sample) -> f64 = |s| s.wrk.rps;
    let p99: fn(&Sample) -> f64 = |s| s.wrk.p99_us;
    let cpu: fn(&Sample) -> f64 = |s| s.cpu_us_per_req;
    // The kernel-path targets, for the shortcut on and off.
    for (path, row) in [
        ("kernel path", Row::LbKernel),
        ("kernel path, sk_msg off", Row::LbKernelNoSkMsg),
    ] {
        both(
            &format!("{path}: ≥ 0.97 × direct req/s"),
            row,
            Row::Direct,
            rps,
            |r| r >= 0.97,
        );
        both(
            &format!("{path}: p99 ≤ 1.05 × direct"),
            row,
            Row::Direct,
            p99,
            |r| r <= 1.05,
        );
    }
    let (proxy, haproxy) = (Row::LbProxySkMsg, Row::Haproxy);
    both(
        "proxy CPU µs/req ≤ 0.9 × HAProxy",
        proxy,
        haproxy,
        cpu,
        |r| r <= 0.9,
    );
    both("proxy req/s ≥ 1.1 × HAProxy", proxy, haproxy, rps, |r| {
        r >= 1.1
    });
    both(
        "L7 rules add ≤ 5 % CPU over the plain split (proxy)",
        proxy,
        Row::LbProxySplit,
        cpu,
        |r| r <= 1.05,
    );
    both(
        "timeout + retries + LEAST_REQUEST (2 endpoints) add ≤ 5 % CPU over the plain split",
        Row::LbProxyPolicy,
        Row::LbProxySplit,
        cpu,
        |r| r <= 1.05,
    );
    both(
        "proxy p99 no worse than HAProxy",
        proxy,
        haproxy,
        p99,
        |r| r <= 1.0,
    );
    both(
        "sk_msg: no p99 regression (proxy p99 on / off)",
        proxy,
        Row::LbProxyNoSkMsg,
        p99,
        |r| r <= 1.0,
    );
    let _ = writeln!(
        md,
        "| what sk_msg buys: proxy req/s on / off; kernel path req/s on / off | | | {:.2} / {:.2}; {:.2} / {:.2} | – |",
        pk.rps / nk.rps,
        pc.rps / nc.rps,
        kk.rps / ok.rps,
        kc.rps / oc.rps
    );
    if let Some((n, ms)) = c.first_load_ms.iter().max_by_key(|t| t.0) {
        let _ = writeln!(
            md,
            "| daemon's first load of {n} services × 10 endpoints < 1 s | | | {ms:.0} ms | {} |",
            verdict(*ms < 1000.0)
        );
    }
    if let Some((n, median, max, k)) = c.changes.iter().max_by_key(|t| t.0) {
        let _ = writeln!(
            md,
            "| one change among {n} services live < 5 ms median, < 10 ms max | | | {median:.1} / {max:.1} ms ({k} changes) | {} |",
            verdict(*median < 5.0 && *max < 10.0)
        );
    }
    for (n, limit) in [(1_000, 20.0), (10_000, 100.0)] {
        if let Some(rss) = rss_mib(n) {
            let _ = writeln!(
                md,
                "| daemon idle RSS < {limit:.0} MB with {n} services (default) | | | {rss:.1} MiB | {} |",
                verdict(rss < limit)
            );
        }
    }
    if let Some(k) = c.kubernetes.iter().max_by_key(|k| k.services) {
        let n = k.services;
        let _ = writeln!(
            md,
            "| Kubernetes: first sync of {n} services < 1 s | | | {:.0} ms | {} |",
            k.first_sync_ms,
            verdict(k.first_sync_ms < 1000.0)
        );
        for (what, (median, max, changes)) in [
            ("VirtualService", k.vs_change),
            ("endpoint", k.endpoint_change),
        ] {
            let _ = writeln!(
                md,
                "| Kubernetes: one {what} changed among {n} live < 5 ms median, < 10 ms max | | | {median:.1} / {max:.1} ms ({changes} changes) | {} |",
                verdict(median < 5.0 && max < 10.0)
            );
        }
        let (events, applies, live) = k.burst;
        let _ = writeln!(
            md,
            "| Kubernetes: {events} endpoint changes in a burst: one apply, live within 50 ms of the last event | | | {applies} apply(s), {live:.1} ms | {} |",
            verdict(applies == 1 && live < 50.0)
        );
    }
    // The north-south tables, from their own harness (bench/north-south.sh, with and
    // without --remote).
    for file in ["bench/north-south.md", "bench/north-south-remote.md"] {
        if let Ok(table) = std::fs::read_to_string(super::root().join(file)) {
            let _ = writeln!(md, "\n{table}");
        }
    }
    // The hand-written analysis of misses and profiles (kept across runs).
    if let Ok(analysis) = std::fs::read_to_string(super::root().join("bench/ANALYSIS.md")) {
        let _ = writeln!(md, "\n{analysis}");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(row: Row, round: usize, rps: f64) -> Sample {
        Sample {
            row,
            close: false,
            round,
            wrk: super::super::wrk::WrkResult {
                rps,
                ..Default::default()
            },
            cpu_us_per_req: 0.0,
            machine_us_per_req: 0.0,
        }
    }

    /// Ratios pair rows by round: a slow round slows both rows and cancels out, where
    /// the ratio of the medians would mix rounds.
    #[test]
    fn paired_ratios_are_per_round() {
        let samples = [
            sample(Row::LbKernel, 0, 110.0),
            sample(Row::Direct, 0, 100.0),
            sample(Row::LbKernel, 1, 55.0),
            sample(Row::Direct, 1, 50.0),
            sample(Row::LbKernel, 2, 60.0),
            sample(Row::Direct, 2, 80.0),
        ];
        let (median, min, max) = paired(&samples, Row::LbKernel, Row::Direct, false, |s| s.wrk.rps);
        assert_eq!((median, min, max), (1.1, 0.75, 1.1));
        // No close-mode samples: no ratio.
        assert!(
            paired(&samples, Row::LbKernel, Row::Direct, true, |s| s.wrk.rps)
                .0
                .is_nan()
        );
    }
}
