//! The control plane through the Kubernetes source: lb reading `n` Services × 10
//! endpoints (an EndpointSlice, ten pods, a DestinationRule and a 90/10
//! VirtualService each) from the fake API server's lists and watch streams
//! (tests/kernel/apiserver.rs: real HTTP on loopback): the daemon's first sync, its
//! idle RSS, one VirtualService or one endpoint changed → live in the kernel, and a
//! burst of endpoint changes to as many Services → how many applies it took and how
//! long after the last event the last change was live.

use std::path::Path;
use std::time::{Duration, Instant};

use lb_common::SockAddr4;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::daemon::{Spawned, median_max, service_key, until_changed};

#[allow(dead_code)] // The kernel tests use all of it; the benchmark part.
#[path = "../../../tests/kernel/apiserver.rs"]
mod apiserver;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KubeResults {
    pub services: usize,
    /// From `lb run` to its first apply: every kind listed, read, validated,
    /// compiled and applied (ms).
    pub first_sync_ms: f64,
    /// That first apply's own time (`took_ms`).
    pub first_apply_ms: f64,
    pub idle_rss_kib: u64,
    /// One VirtualService changed → live: (median ms, max ms, changes).
    pub vs_change: (f64, f64, usize),
    /// One endpoint's readiness changed → live: (median ms, max ms, changes).
    pub endpoint_change: (f64, f64, usize),
    /// A burst: (endpoint changes, applies they took, ms from the last event to the
    /// last change live).
    pub burst: (usize, usize, f64),
    /// How long the fake API server took to take the burst's changes (ms).
    #[serde(default)]
    pub burst_sent_ms: f64,
}

/// Service `i`'s ClusterIP (127.12.x.y: never routed off the machine; nothing is
/// sent to it here).
fn cluster_ip(i: usize) -> String {
    format!("127.12.{}.{}", i / 250, i % 250 + 1)
}

fn key(i: usize) -> anyhow::Result<SockAddr4> {
    service_key(&cluster_ip(i))
}

fn host(i: usize) -> String {
    format!("s{i}.bench.svc.cluster.local")
}

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": "bench"})
}

/// Service `i`'s EndpointSlice: ten pods (127.20–29.x.y: one address each), the last
/// ready or not.
fn slice(i: usize, last_ready: bool) -> Value {
    let endpoints: Vec<Value> = (0..10)
        .map(|e| {
            json!({"addresses": [format!("127.{}.{}.{}", 20 + e, i / 250, i % 250 + 1)],
                   "conditions": {"ready": e < 9 || last_ready},
                   "targetRef": {"kind": "Pod", "namespace": "bench", "name": format!("s{i}-p{e}")}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("s{i}-x"), "namespace": "bench",
                        "labels": {"kubernetes.io/service-name": format!("s{i}")}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
           "endpoints": endpoints})
}

fn virtual_service(i: usize, w0: u32) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": meta(&format!("s{i}")),
           "spec": {"hosts": [host(i)], "http": [{"route": [
               {"destination": {"host": host(i), "subset": "v0"}, "weight": w0},
               {"destination": {"host": host(i), "subset": "v1"}, "weight": 100 - w0}]}]}})
}

fn cluster(n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n * 14);
    for i in 0..n {
        out.push(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(&format!("s{i}")),
                        "spec": {"clusterIP": cluster_ip(i), "clusterIPs": [cluster_ip(i)],
                                 "ports": [{"name": "http", "port": 80, "targetPort": 8000}]}}),
        );
        out.push(slice(i, true));
        for e in 0..10 {
            out.push(json!({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": format!("s{i}-p{e}"), "namespace": "bench",
                                         "labels": {"version": format!("v{}", e % 2)}}}));
        }
        out.push(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                        "metadata": meta(&format!("s{i}")),
                        "spec": {"host": host(i), "subsets": [
                            {"name": "v0", "labels": {"version": "v0"}},
                            {"name": "v1", "labels": {"version": "v1"}}]}}),
        );
        out.push(virtual_service(i, 90));
    }
    out
}

/// Measures `n` services through the fake API server: `changes` of each kind, then a
/// burst of `burst` endpoint changes (to Services 2..2+burst).
pub fn run(n: usize, changes: usize, burst: usize, work: &Path) -> anyhow::Result<KubeResults> {
    anyhow::ensure!(
        n >= burst + 2,
        "{n} services cannot take a burst of {burst}"
    );
    let api = apiserver::FakeApi::start(&cluster(n));
    let kubeconfig = work.join(format!("kubeconfig-{n}"));
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let d = Spawned::start(
        &format!("kube-{n}"),
        work,
        &["--kubeconfig".into(), kubeconfig.to_string_lossy().into()],
    )?;
    let (idle_rss_kib, _) = d.idle_rss();
    let maps = d.maps()?;
    let timed = |i: usize, change: &dyn Fn(usize) -> Value| -> anyhow::Result<(f64, f64, usize)> {
        let mut ms = Vec::with_capacity(changes);
        for c in 0..changes {
            ms.push(Spawned::until_live(&maps, &key(i)?, || {
                api.apply(change(c));
                Ok(())
            })?);
            // Past the quiet time, so each change is a reload of its own.
            std::thread::sleep(Duration::from_millis(60));
        }
        let (median, max) = median_max(&mut ms);
        Ok((median, max, changes))
    };
    let vs_change = timed(0, &|c| virtual_service(0, if c % 2 == 0 { 80 } else { 90 }))?;
    let endpoint_change = timed(1, &|c| slice(1, c % 2 == 1))?;
    // The burst: every slice of Services 2.. loses its last endpoint at once.
    let applies = d.applies();
    let last = key(burst + 1)?;
    let revision = || maps.service(&last).map(|s| s.revision);
    let before = revision();
    let sending = Instant::now();
    api.apply_all((2..burst + 2).map(|i| slice(i, false)).collect());
    let sent_ms = sending.elapsed().as_secs_f64() * 1000.0;
    let live = until_changed(|| revision() != before, Instant::now())?;
    // Any apply still to come would show here.
    std::thread::sleep(Duration::from_millis(500));
    Ok(KubeResults {
        services: n,
        first_sync_ms: d.ready_ms,
        first_apply_ms: d.first_apply_ms(),
        idle_rss_kib,
        vs_change,
        endpoint_change,
        burst: (burst, d.applies() - applies, live),
        burst_sent_ms: sent_ms,
    })
}

/// `cargo xtask kube-latency [SERVICES] [CHANGES] [BURST]`: the Kubernetes row of the
/// benchmark alone (`LB_BENCH_KEEP=1`: keep the daemon's log).
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| args.get(i).map_or(Ok(default), |v| v.parse());
    let (n, changes, burst) = (arg(0, 1_000)?, arg(1, 30)?, arg(2, 100)?);
    let work = std::env::temp_dir().join(format!("lb-kube-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let r = run(n, changes, burst, &work);
    // LB_BENCH_KEEP=1 keeps the daemon's log.
    if std::env::var_os("LB_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("the daemon's log: {}", work.display());
    }
    println!("{}", describe(&r?));
    Ok(())
}

/// One line per measurement.
pub fn describe(r: &KubeResults) -> String {
    format!(
        "Kubernetes source, {} services: first sync {:.0} ms (its apply {:.0} ms), idle RSS {:.1} MiB\n\
         one VirtualService changed -> live: median {:.1} ms, max {:.1} ms ({} changes)\n\
         one endpoint changed -> live: median {:.1} ms, max {:.1} ms ({} changes)\n\
         {} endpoint changes in a burst (sent in {:.1} ms): {} apply(s), the last live {:.1} ms after the last event",
        r.services,
        r.first_sync_ms,
        r.first_apply_ms,
        r.idle_rss_kib as f64 / 1024.0,
        r.vs_change.0,
        r.vs_change.1,
        r.vs_change.2,
        r.endpoint_change.0,
        r.endpoint_change.1,
        r.endpoint_change.2,
        r.burst.0,
        r.burst_sent_ms,
        r.burst.1,
        r.burst.2
    )
}
