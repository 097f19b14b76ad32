//! Control-plane measurements: load / compile / apply of 10,000 services × 10
//! endpoints (in process, lb's own code), time from a config file change to the new
//! weights being live in the kernel (a real daemon, polled through the pinned map),
//! and the daemon's idle RSS with 1,000 and 10,000 services; then the same through
//! the Kubernetes source (kube.rs).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lb::datapath::Pins;
use lb::datapath::cgroup::ChildCgroup;
use serde::{Deserialize, Serialize};

use super::Options;
use super::daemon::{Spawned, logged_ms, median_max, service_key};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ControlResults {
    /// (services, load ms, compile ms, apply ms, unchanged re-apply ms)
    pub apply: Vec<(usize, f64, f64, f64, f64)>,
    /// Config change → live in the kernel: (services, median ms, max ms, changes).
    #[serde(default)]
    pub changes: Vec<(usize, f64, f64, usize)>,
    /// (services, daemon RSS KiB when idle, the same with `--no-parse-cache`)
    pub idle_rss_kib: Vec<(usize, u64, u64)>,
    /// (services, the daemon's first reload: read, validate, compile, apply; ms)
    #[serde(default)]
    pub first_load_ms: Vec<(usize, f64)>,
    /// `lb run`'s keeper (holds the listening sockets), KiB: the same for any config.
    #[serde(default)]
    pub keeper_rss_kib: u64,
    /// The same through the Kubernetes source (the fake API server).
    #[serde(default)]
    pub kubernetes: Vec<super::kube::KubeResults>,
}

/// Service `i`'s address: 127.11.x.y (y from 1), so 62,500 fit.
fn service_addr(i: usize) -> String {
    format!("127.11.{}.{}", i / 250, i % 250 + 1)
}

/// `n` services, each a ServiceEntry with 10 endpoints (5 v0, 5 v1), a DestinationRule
/// and a 90/10 VirtualService. Service 0's VirtualService lives in its own file so a
/// change can touch it alone.
fn write_config(dir: &Path, n: usize, w0: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut s = String::with_capacity(n * 1200);
    for i in 0..n {
        let ep = format!("127.20.{}.{}", i / 250, i % 250 + 1);
        let _ = write!(
            s,
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{i}, namespace: bench}}\nspec:\n  hosts: [s{i}]\n  addresses: [{}]\n  ports: [{{number: 80, name: http}}]\n  endpoints:\n",
            service_addr(i)
        );
        for e in 0..10 {
            let _ = writeln!(
                s,
                "  - {{address: {ep}, ports: {{http: {}}}, labels: {{version: v{}}}}}",
                8000 + e,
                e % 2
            );
        }
        let _ = write!(
            s,
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: s{i}, namespace: bench}}\nspec:\n  host: s{i}\n  subsets: [{{name: v0, labels: {{version: v0}}}}, {{name: v1, labels: {{version: v1}}}}]\n---\n"
        );
        if i > 0 {
            s.push_str(&vs(i, 90));
        }
    }
    std::fs::write(dir.join("services.yaml"), s)?;
    change(dir, w0)
}

fn vs(i: usize, w0: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: s{i}, namespace: bench}}\nspec:\n  hosts: [s{i}]\n  http:\n  - route:\n    - {{destination: {{host: s{i}, subset: v0}}, weight: {w0}}}\n    - {{destination: {{host: s{i}, subset: v1}}, weight: {}}}\n---\n",
        100 - w0
    )
}

/// Rewrites service 0's VirtualService atomically (write + rename).
fn change(dir: &Path, w0: u32) -> anyhow::Result<()> {
    let tmp = dir.join(".change.tmp");
    std::fs::write(&tmp, vs(0, w0))?;
    std::fs::rename(&tmp, dir.join("zz-change.yaml"))?;
    Ok(())
}

/// In-process load → compile → apply, timed by phase; then an unchanged re-apply.
fn time_apply(n: usize, work: &Path) -> anyhow::Result<(usize, f64, f64, f64, f64)> {
    let dir = work.join(format!("apply-{n}"));
    write_config(&dir, n, 90)?;
    let id = std::process::id();
    let cgroup = ChildCgroup::create(&format!("lb-bench-apply-{n}-{id}"))?;
    let pins = Pins::new(&PathBuf::from(format!(
        "/sys/fs/bpf/lb-bench-apply-{n}-{id}"
    )));
    let result = (|| -> anyhow::Result<(usize, f64, f64, f64, f64)> {
        let (routes, _) = tokio::sync::watch::channel(Default::default());
        let mut applier = lb::run::start(
            &pins,
            &cgroup.path,
            None,
            lb::run::SkMsgHops::OFF,
            &Default::default(),
            routes,
        )?;
        let t = Instant::now();
        let model = lb::model::load_dir(&dir)?.model;
        let load = t.elapsed();
        let t = Instant::now();
        let plan = lb::compile::plan(model)?;
        let compile = t.elapsed();
        let t = Instant::now();
        let (report, garbage) = applier.apply(&plan)?;
        let apply = t.elapsed();
        anyhow::ensure!(report.added == n, "applied {report:?}");
        applier.collect_garbage(garbage);
        let t = Instant::now();
        let (report, _) = applier.apply(&plan)?;
        let again = t.elapsed();
        anyhow::ensure!(report.unchanged == n, "re-applied {report:?}");
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok((n, ms(load), ms(compile), ms(apply), ms(again)))
    })();
    let _ = lb::datapath::attach::remove_all(&pins);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A daemon on `n` services: its idle RSS and its keeper's, and (if `changes` > 0)
/// change latencies.
fn daemon(n: usize, changes: usize, work: &Path, extra: &[&str]) -> anyhow::Result<Daemon> {
    let dir = work.join(format!("daemon-{n}"));
    write_config(&dir, n, 90)?;
    let args: Vec<String> = ["--config", &dir.to_string_lossy()]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    let result = (|| -> anyhow::Result<Daemon> {
        let d = Spawned::start(&format!("daemon-{n}"), work, &args)?;
        let first_load_ms = d.first_apply_ms();
        let (rss, keeper) = d.idle_rss();
        let maps = d.maps()?;
        let key = service_key(&service_addr(0))?;
        let mut latencies = Vec::new();
        for c in 0..changes {
            let w0 = if c % 2 == 0 { 80 } else { 90 };
            latencies.push(Spawned::until_live(&maps, &key, || change(&dir, w0))?);
            // Let the debounce window pass so every change is its own reload.
            std::thread::sleep(Duration::from_millis(60));
        }
        Ok(Daemon {
            rss,
            keeper,
            latencies,
            first_load_ms,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// What one daemon run measured (KiB, ms).
struct Daemon {
    rss: u64,
    keeper: u64,
    latencies: Vec<f64>,
    first_load_ms: f64,
}

pub fn run(o: &Options, work: &Path) -> anyhow::Result<ControlResults> {
    let mut r = ControlResults::default();
    let sizes: &[usize] = if o.smoke {
        &[100, 1_000]
    } else {
        &[1_000, 10_000]
    };
    for &n in sizes {
        let t = time_apply(n, work)?;
        eprintln!(
            "apply {n} services: load {:.0} ms, compile {:.0} ms, apply {:.0} ms, unchanged re-apply {:.0} ms",
            t.1, t.2, t.3, t.4
        );
        r.apply.push(t);
    }
    let changes = if o.smoke { 10 } else { 100 };
    for &n in sizes {
        let mut d = daemon(n, changes, work, &[])?;
        let no_cache = daemon(n, 0, work, &["--no-parse-cache"])?;
        r.keeper_rss_kib = d.keeper;
        eprintln!(
            "daemon with {n} services: first load {:.0} ms, idle RSS {} KiB ({} KiB with --no-parse-cache)",
            d.first_load_ms, d.rss, no_cache.rss
        );
        r.idle_rss_kib.push((n, d.rss, no_cache.rss));
        r.first_load_ms.push((n, d.first_load_ms));
        let (median, max) = median_max(&mut d.latencies);
        eprintln!(
            "config change -> live with {n} services: median {median:.1} ms, max {max:.1} ms ({changes} changes)"
        );
        r.changes.push((n, median, max, changes));
    }
    let (n, burst) = if o.smoke {
        (1_000, 100)
    } else {
        (10_000, 1_000)
    };
    let k = super::kube::run(n, changes, burst, work)?;
    eprintln!("{}", super::kube::describe(&k));
    r.kubernetes.push(k);
    Ok(r)
}

/// `cargo xtask rebuild DIR [N]`: what a reload costs once the files are parsed (the
/// parse cache holds every unchanged file): model build + compile, N times; prints the
/// minimum and the median (the minimum is what noise on a shared VM cannot inflate).
pub fn rebuild_main(args: &[String]) -> anyhow::Result<()> {
    let dir = PathBuf::from(
        args.first()
            .ok_or_else(|| anyhow::anyhow!("usage: rebuild DIR [N]"))?,
    );
    let n: usize = args.get(1).map_or(Ok(30), |v| v.parse())?;
    let mut cache = lb::model::Cache::default();
    lb::model::load_dir_with(&dir, &mut cache, &Default::default())?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let v = lb::model::load_dir_with(&dir, &mut cache, &Default::default())?;
        let plan = lb::compile::plan(v.model)?;
        drop(plan);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "rebuild of {}: min {:.1} ms, median {:.1} ms over {n}",
        dir.display(),
        times[0],
        times[n / 2]
    );
    Ok(())
}

/// `cargo xtask change-latency [SERVICES] [CHANGES]`: the control-plane row of the
/// benchmark alone (config file change -> new weights live in the pinned map).
pub fn change_main(args: &[String]) -> anyhow::Result<()> {
    let n: usize = args.first().map_or(Ok(1_000), |v| v.parse())?;
    let changes: usize = args.get(1).map_or(Ok(30), |v| v.parse())?;
    let work = std::env::temp_dir().join(format!("lb-change-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = daemon(n, changes, &work, &[]);
    // The daemon's own account of each reload ("configuration applied" fields).
    let log = std::fs::read_to_string(work.join(format!("daemon-{n}.log"))).unwrap_or_default();
    if std::env::var_os("LB_BENCH_KEEP").is_some() {
        eprintln!("kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    let mut d = result?;
    println!(
        "daemon's first load: {:.0} ms, idle RSS {:.1} MiB",
        d.first_load_ms,
        d.rss as f64 / 1024.0
    );
    for field in ["took_ms", "load_ms", "compile_ms", "apply_ms"] {
        // The first reload is the whole configuration's.
        let mut v: Vec<f64> = logged_ms(&log, field).into_iter().skip(1).collect();
        if !v.is_empty() {
            let (median, max) = median_max(&mut v);
            println!("daemon reload {field}: median {median:.1} ms, max {max:.1} ms");
        }
    }
    anyhow::ensure!(!d.latencies.is_empty(), "no change measured");
    let (median, max) = median_max(&mut d.latencies);
    println!(
        "config change -> live with {n} services: median {median:.1} ms, max {max:.1} ms ({changes} changes)"
    );
    Ok(())
}
