//! `cargo xtask bench`: lb against a direct connection, HAProxy and nginx on the same
//! machine, backends and rules; interleaved rounds; results in bench/results.json and
//! BENCHMARKS.md. Loopback only; every run bounded; everything it starts is stopped.
//!
//! Pinning (2 cores): balancer and backends on CPU 0, the load generator on CPU 1.

pub mod control;
mod daemon;
pub mod kube;
pub mod paced;
mod procs;
mod report;
mod wrk;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lb::datapath::cgroup::ChildCgroup;
use procs::{Procs, SERVER_CPU};
use serde::{Deserialize, Serialize};

/// Harness flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    pub access_log: bool,
    pub smoke: bool,
    pub out: PathBuf,
    /// Rows to run (`--rows a,b`): a partial run skips the control plane and writes
    /// its table next to the JSON instead of BENCHMARKS.md.
    pub rows: Vec<Row>,
}

impl Options {
    fn partial(&self) -> bool {
        self.rows.len() < Row::ALL.len()
    }
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        rounds: 5,
        seconds: 5,
        access_log: false,
        smoke: false,
        out: PathBuf::from("bench/results.json"),
        rows: Row::ALL.to_vec(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--rounds" => o.rounds = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--access-log" => o.access_log = true,
            "--out" => o.out = value()?.into(),
            "--rows" => {
                o.rows = value()?
                    .split(',')
                    .map(|name| {
                        Row::ALL
                            .into_iter()
                            .find(|r| r.name() == name)
                            .ok_or_else(|| {
                                let names: Vec<_> = Row::ALL.iter().map(|r| r.name()).collect();
                                anyhow::anyhow!("unknown row {name}: one of {}", names.join(", "))
                            })
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--smoke" => {
                o.smoke = true;
                o.rounds = 1;
                o.seconds = 1;
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(o)
}

/// One row of the table: how the client reaches the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Row {
    Direct,
    LbKernel,
    LbKernelNoSkMsg,
    /// The 90/10 split alone, forced through the proxy: the base the L7 rules add to.
    LbProxySplit,
    /// The same split with a timeout, retries and LEAST_REQUEST over a two-endpoint
    /// subset: what Istio's traffic policy costs per request.
    LbProxyPolicy,
    LbProxySkMsg,
    LbProxyNoSkMsg,
    Haproxy,
    Nginx,
}

impl Row {
    pub const ALL: [Row; 9] = [
        Row::Direct,
        Row::LbKernel,
        Row::LbKernelNoSkMsg,
        Row::LbProxySplit,
        Row::LbProxyPolicy,
        Row::LbProxySkMsg,
        Row::LbProxyNoSkMsg,
        Row::Haproxy,
        Row::Nginx,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Row::Direct => "direct (no balancer)",
            Row::LbKernel => "lb kernel path, sk_msg on",
            Row::LbKernelNoSkMsg => "lb kernel path, sk_msg off",
            Row::LbProxySplit => "lb proxy path, split only",
            Row::LbProxyPolicy => "lb proxy path, split + timeout, retries, LEAST_REQUEST",
            Row::LbProxySkMsg => "lb proxy path, sk_msg on",
            Row::LbProxyNoSkMsg => "lb proxy path, sk_msg off",
            Row::Haproxy => "HAProxy 2.6",
            Row::Nginx => "nginx 1.22",
        }
    }

    /// The row's name for `--rows` (as in results.json).
    pub fn name(self) -> &'static str {
        match self {
            Row::Direct => "direct",
            Row::LbKernel => "lb_kernel",
            Row::LbKernelNoSkMsg => "lb_kernel_no_sk_msg",
            Row::LbProxySplit => "lb_proxy_split",
            Row::LbProxyPolicy => "lb_proxy_policy",
            Row::LbProxySkMsg => "lb_proxy_sk_msg",
            Row::LbProxyNoSkMsg => "lb_proxy_no_sk_msg",
            Row::Haproxy => "haproxy",
            Row::Nginx => "nginx",
        }
    }
}

const PORT: u16 = 20080;
/// The second endpoint of v0 in the policy row (the same backend process as v0).
const PORT2: u16 = 20090;
const HAPROXY_PORT: u16 = 20081;
const NGINX_PORT: u16 = 20082;
const V0: &str = "127.0.0.2:20080";
const V1: &str = "127.0.0.3:20080";

/// The running set-up: backends, two lb daemons (sk_msg on / off), HAProxy, nginx.
struct Setup {
    procs: Procs,
    work: PathBuf,
    lb_on: LbDaemon,
    lb_off: LbDaemon,
}

struct LbDaemon {
    cgroup: ChildCgroup,
    bpffs: PathBuf,
    name: String,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

impl Drop for LbDaemon {
    fn drop(&mut self) {
        let _ = std::process::Command::new(lb_bin())
            .args(["down", "--bpffs"])
            .arg(&self.bpffs)
            .output();
    }
}

/// The `lb` measured: this tree's release build, or the one `LB_BIN` names (an A/B of
/// two builds runs the same harness on each, interleaved).
fn lb_bin() -> PathBuf {
    std::env::var_os("LB_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/lb"),
        PathBuf::from,
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn template(path: &Path, vars: &[(&str, String)]) -> anyhow::Result<String> {
    let mut s =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    Ok(s)
}

impl Setup {
    fn start(o: &Options) -> anyhow::Result<Setup> {
        let id = std::process::id();
        let work = std::env::temp_dir().join(format!("lb-bench-{id}"));
        std::fs::create_dir_all(&work)?;
        let mut procs = Procs::default();
        let lb = lb_bin();
        let lb_s = lb.to_string_lossy().to_string();
        // A leftover listener on one of these would take the row's traffic unnoticed
        // (it answered as v0/v1 too, so the checks passed, but outside the daemon's
        // cgroup: sk_msg then found no local backend).
        let ours = [
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
            "127.0.0.6",
            "127.0.0.7",
        ]
        .map(|ip| format!("{ip}:{PORT}"))
        .into_iter()
        .chain(["127.0.0.4", "127.0.0.6"].map(|ip| format!("{ip}:{PORT2}")))
        .chain([HAPROXY_PORT, NGINX_PORT].map(|p| format!("127.0.0.1:{p}")));
        for addr in ours {
            procs::ensure_free(&addr)?;
        }
        backends(
            &mut procs,
            &work,
            "backends",
            None,
            &[("v0", V0.into()), ("v1", V1.into())],
        )?;
        // Each lb daemon runs inside the cgroup it attaches to, with its own backends
        // in there too: on a node, lb sits on the root cgroup and local pods are inside
        // it. (The peers' and the direct row's backends, V0/V1 above, are outside
        // every cgroup.)
        let mut daemon = |name: &str, sk_msg: bool, local: [&str; 2]| -> anyhow::Result<LbDaemon> {
            let cgroup = ChildCgroup::create(&format!("lb-bench-{name}-{id}"))?;
            backends(
                &mut procs,
                &work,
                &format!("{name}-backends"),
                Some(&cgroup.path),
                &[
                    ("v0", format!("{}:{PORT}", local[0])),
                    ("v1", format!("{}:{PORT}", local[1])),
                    ("v0", format!("{}:{PORT2}", local[0])),
                ],
            )?;
            let backends = local;
            let config = work.join(format!("lb-config-{name}"));
            std::fs::create_dir_all(&config)?;
            std::fs::write(
                config.join("config.yaml"),
                template(
                    &root().join("bench/lb/config.yaml"),
                    &[
                        ("PORT", PORT.to_string()),
                        ("PORT2", PORT2.to_string()),
                        ("LOCAL_V0", backends[0].into()),
                        ("LOCAL_V1", backends[1].into()),
                    ],
                )?,
            )?;
            let bpffs = PathBuf::from(format!("/sys/fs/bpf/lb-bench-{name}-{id}"));
            let mut args: Vec<String> = vec![
                "run".into(),
                "--config".into(),
                config.to_string_lossy().into(),
                "--cgroup".into(),
                cgroup.path.to_string_lossy().into(),
                "--bpffs".into(),
                bpffs.to_string_lossy().into(),
                "--proxy-listen".into(),
                "127.0.0.1:0".into(),
                "--admin-listen".into(),
                "127.0.0.1:0".into(),
            ];
            args.extend([
                "--access-log".into(),
                if o.access_log {
                    work.join(format!("access-{name}.log"))
                        .to_string_lossy()
                        .into()
                } else {
                    "off".into()
                },
            ]);
            if !sk_msg {
                args.push("--no-sk-msg".into());
            }
            let log = work.join(format!("lb-{name}.log"));
            // Inside the cgroup it attaches to, as on a node (root cgroup): the proxy's
            // accepted sockets then join the sk_msg socket map in the handshake.
            procs.spawn(
                &format!("lb-{name}"),
                SERVER_CPU,
                Some(&cgroup.path),
                &lb_s,
                &args,
                &log,
            )?;
            daemon::wait_for_log(&log, "configuration applied", Duration::from_secs(20))?;
            Ok(LbDaemon {
                cgroup,
                bpffs,
                name: format!("lb-{name}"),
            })
        };
        let lb_on = daemon("skmsg", true, ["127.0.0.4", "127.0.0.5"])?;
        let lb_off = daemon("noskmsg", false, ["127.0.0.6", "127.0.0.7"])?;
        let hcfg = work.join("haproxy.cfg");
        std::fs::write(
            &hcfg,
            template(
                &root().join("bench/haproxy.cfg"),
                &[
                    ("PORT", HAPROXY_PORT.to_string()),
                    ("V0", V0.into()),
                    ("V1", V1.into()),
                ],
            )?,
        )?;
        procs.spawn(
            "haproxy",
            SERVER_CPU,
            None,
            "haproxy",
            &["-db".into(), "-f".into(), hcfg.to_string_lossy().into()],
            &work.join("haproxy.log"),
        )?;
        let nprefix = work.join("nginx");
        std::fs::create_dir_all(&nprefix)?;
        let ncfg = nprefix.join("nginx.conf");
        std::fs::write(
            &ncfg,
            template(
                &root().join("bench/nginx.conf"),
                &[
                    ("PORT", NGINX_PORT.to_string()),
                    ("V0", V0.into()),
                    ("V1", V1.into()),
                    ("PREFIX", nprefix.to_string_lossy().into()),
                ],
            )?,
        )?;
        procs.spawn(
            "nginx",
            SERVER_CPU,
            None,
            "nginx",
            &[
                "-c".into(),
                ncfg.to_string_lossy().into(),
                "-p".into(),
                nprefix.to_string_lossy().into(),
            ],
            &work.join("nginx.log"),
        )?;
        procs::wait_listening(
            &format!("127.0.0.1:{HAPROXY_PORT}"),
            "haproxy (apt install haproxy)",
        )?;
        procs::wait_listening(
            &format!("127.0.0.1:{NGINX_PORT}"),
            "nginx (apt install nginx-light)",
        )?;
        Ok(Setup {
            procs,
            work,
            lb_on,
            lb_off,
        })
    }

    /// (URL, cgroup the client must run in, balancer process).
    fn target(&self, row: Row) -> (String, Option<&Path>, Option<u32>) {
        // An lb row: one of the benchmark config's services, through the daemon with
        // sk_msg on or the one with it off.
        let lb = |service: &str, sk_msg: bool| {
            let d = if sk_msg { &self.lb_on } else { &self.lb_off };
            (
                format!("http://{service}:{PORT}/test"),
                Some(d.cgroup.path.as_path()),
                self.procs.pid(&d.name),
            )
        };
        let (kernel, proxy, split, policy) =
            ("127.10.30.1", "127.10.30.2", "127.10.30.3", "127.10.30.4");
        match row {
            Row::Direct => (format!("http://{V0}/test"), None, None),
            Row::LbKernel => lb(kernel, true),
            Row::LbKernelNoSkMsg => lb(kernel, false),
            Row::LbProxySplit => lb(split, true),
            Row::LbProxyPolicy => lb(policy, true),
            Row::LbProxySkMsg => lb(proxy, true),
            Row::LbProxyNoSkMsg => lb(proxy, false),
            Row::Haproxy => (
                format!("http://127.0.0.1:{HAPROXY_PORT}/test"),
                None,
                self.procs.pid("haproxy"),
            ),
            // nginx's worker is the child of the master; count both.
            Row::Nginx => (
                format!("http://127.0.0.1:{NGINX_PORT}/test"),
                None,
                self.procs.pid("nginx"),
            ),
        }
    }

    /// Checks a row answers right before it is timed: 500 new connections, no error,
    /// the configured split (v1 10 % ± 4 points; direct: v0 only).
    fn check(&self, row: Row) -> anyhow::Result<(u64, u64)> {
        let (url, cgroup, _) = self.target(row);
        let to = url.trim_start_matches("http://").trim_end_matches("/test");
        let mut cmd = std::process::Command::new(lb_bin());
        cmd.args(["probe", "--to", to, "--count", "500", "--json"]);
        if let Some(cg) = cgroup {
            lb::datapath::cgroup::spawn_into(&mut cmd, cg);
        }
        let out = cmd.output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| anyhow::anyhow!("{}: probe output: {e}", row.label()))?;
        let (v0, v1) = (
            v["by_backend"]["v0"].as_u64().unwrap_or(0),
            v["by_backend"]["v1"].as_u64().unwrap_or(0),
        );
        anyhow::ensure!(v["failures"] == 0, "{}: requests failed: {v}", row.label());
        let ok = if row == Row::Direct {
            v1 == 0
        } else {
            (v1 as f64 / 5.0 - 10.0).abs() <= 4.0
        };
        anyhow::ensure!(
            ok,
            "{}: split v0 {v0} / v1 {v1} is not the configured one",
            row.label()
        );
        Ok((v0, v1))
    }

    /// CPU time of the balancer: its process and their children (nginx's master and
    /// workers; lb's keeper and the daemon it started).
    fn balancer_cpu(&self, row: Row) -> u64 {
        let (_, _, pid) = self.target(row);
        pid.map_or(0, |pid| with_children(pid).map(procs::cpu_us).sum())
    }

    fn balancer_rss_kib(&self, row: Row) -> u64 {
        let (_, _, pid) = self.target(row);
        pid.map_or(0, |pid| {
            with_children(pid)
                .map(|p| procs::status_kib(p, "VmHWM:"))
                .sum()
        })
    }
}

/// One backend process answering as v0 on the first address and v1 on the second:
/// one event loop for both, as the direct row's v0 has, so no row pays for two
/// backend processes taking turns on the server CPU (that alone cost 0.94–0.96 × the
/// requests and ~5 ms p99, measured without any balancer).
fn backends(
    procs: &mut Procs,
    work: &Path,
    name: &str,
    cgroup: Option<&Path>,
    listens: &[(&str, String)],
) -> anyhow::Result<()> {
    let lb = lb_bin().to_string_lossy().to_string();
    let mut args = vec!["backend".to_string()];
    for (answer_as, addr) in listens {
        args.extend(["--listen".into(), format!("{answer_as}={addr}")]);
    }
    procs.spawn(
        name,
        SERVER_CPU,
        cgroup,
        &lb,
        &args,
        &work.join(format!("{name}.log")),
    )?;
    for (_, a) in listens {
        procs::wait_listening(a, name)?;
    }
    Ok(())
}

/// `pid` and its children.
pub fn with_children(pid: u32) -> impl Iterator<Item = u32> {
    std::iter::once(pid).chain(children(pid))
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// One timed run of one row in one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub row: Row,
    pub close: bool,
    pub round: usize,
    pub wrk: wrk::WrkResult,
    pub cpu_us_per_req: f64,
    /// Whole-machine busy CPU per request (both CPUs, everything on them).
    pub machine_us_per_req: f64,
}

/// Everything one harness run measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub options: Options,
    pub machine: report::Machine,
    pub splits: Vec<(Row, u64, u64)>,
    pub samples: Vec<Sample>,
    pub fixed_rate: Vec<(Row, serde_json::Value)>,
    pub rss_kib: Vec<(Row, u64)>,
    pub control: control::ControlResults,
}

/// `cargo xtask bench-render [RESULTS]`: BENCHMARKS.md again from a full run's JSON
/// (default bench/results.json), e.g. after editing bench/ANALYSIS.md; no rerun.
pub fn render_main(args: &[String]) -> anyhow::Result<()> {
    let path = args
        .first()
        .map_or_else(|| root().join("bench/results.json"), PathBuf::from);
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let results: Results =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        !results.options.smoke && !results.options.partial(),
        "{}: a smoke or partial run does not make BENCHMARKS.md",
        path.display()
    );
    std::fs::write(root().join("BENCHMARKS.md"), report::render(&results))?;
    eprintln!("wrote BENCHMARKS.md from {}", path.display());
    Ok(())
}

/// One pass of the paced client (1000 req/s over 10 keep-alive connections) at `row`.
fn paced_pass(setup: &Setup, row: Row, seconds: &str) -> anyhow::Result<serde_json::Value> {
    let (url, cgroup, _) = setup.target(row);
    let to = url
        .trim_start_matches("http://")
        .trim_end_matches("/test")
        .to_string();
    let exe = std::env::current_exe()?;
    let args = [
        "paced".into(),
        to,
        "1000".into(),
        "10".into(),
        seconds.into(),
    ];
    let mut cmd = procs::pinned(procs::CLIENT_CPU, &exe.to_string_lossy(), &args);
    if let Some(cg) = cgroup {
        lb::datapath::cgroup::spawn_into(&mut cmd, cg);
    }
    let out = cmd.output()?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "paced client: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A row's paced passes: the median p50 and p99 over the rounds, the p99's range, and
/// the requests and errors of all.
fn paced_summary(runs: &[serde_json::Value]) -> serde_json::Value {
    let values = |k: &str| {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| r[k].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    let sum = |k: &str| runs.iter().filter_map(|r| r[k].as_u64()).sum::<u64>();
    let p99 = values("p99_us");
    serde_json::json!({
        "p50_us": median(&values("p50_us")),
        "p99_us": median(&p99),
        "p99_us_min": p99.first(),
        "p99_us_max": p99.last(),
        "rounds": runs.len(),
        "requests": sum("requests"),
        "errors": sum("errors"),
    })
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmarks need root (lb attaches eBPF programs)"
    );
    anyhow::ensure!(lb_bin().exists(), "build lb first: cargo build --release");
    let machine = report::Machine::read();
    eprintln!(
        "bench: {} round(s) x {} s per row and mode; access log {}",
        o.rounds,
        o.seconds,
        if o.access_log { "on" } else { "off" }
    );
    let setup = Setup::start(&o)?;
    let mut splits = Vec::new();
    for &row in &o.rows {
        let (v0, v1) = setup.check(row)?;
        splits.push((row, v0, v1));
    }
    let mut samples = Vec::new();
    for round in 0..o.rounds {
        for close in [false, true] {
            for &row in &o.rows {
                let (url, cgroup, _) = setup.target(row);
                let cpu0 = setup.balancer_cpu(row);
                let machine0 = procs::machine_busy_us();
                let w = wrk::run(&url, o.seconds, close, cgroup)?;
                let cpu = setup.balancer_cpu(row).saturating_sub(cpu0);
                let machine = procs::machine_busy_us().saturating_sub(machine0);
                anyhow::ensure!(
                    w.non_2xx == 0,
                    "{}: {} non-2xx answers",
                    row.label(),
                    w.non_2xx
                );
                let s = Sample {
                    row,
                    close,
                    round,
                    cpu_us_per_req: cpu as f64 / w.requests.max(1) as f64,
                    machine_us_per_req: machine as f64 / w.requests.max(1) as f64,
                    wrk: w,
                };
                eprintln!(
                    "round {round} {:<26} {:<10} {:>9.0} req/s p50 {:>7.0} us p99 {:>7.0} us cpu {:>6.1} us/req errors {}",
                    row.label(),
                    if close { "close" } else { "keep-alive" },
                    s.wrk.rps,
                    s.wrk.p50_us,
                    s.wrk.p99_us,
                    s.cpu_us_per_req,
                    s.wrk.errors
                );
                samples.push(s);
            }
        }
    }
    // The fixed-rate rows in rounds too, interleaved like the others: one 5 s pass's
    // p99 on this VM moves with whatever else ran in those seconds.
    let paced_seconds = if o.smoke { "1" } else { "5" };
    let mut paced: Vec<(Row, Vec<serde_json::Value>)> =
        o.rows.iter().map(|r| (*r, Vec::new())).collect();
    for round in 0..o.rounds {
        for (row, runs) in &mut paced {
            let v = paced_pass(&setup, *row, paced_seconds)?;
            eprintln!("round {round} fixed 1000 req/s {:<26} {v}", row.label());
            runs.push(v);
        }
    }
    let fixed_rate = (paced.into_iter())
        .map(|(row, runs)| (row, paced_summary(&runs)))
        .collect();
    let rss_kib = o
        .rows
        .iter()
        .map(|r| (*r, setup.balancer_rss_kib(*r)))
        .collect();
    drop(setup);
    let work = std::env::temp_dir().join(format!("lb-bench-control-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let control = if o.partial() {
        Ok(control::ControlResults::default())
    } else {
        control::run(&o, &work)
    };
    let _ = std::fs::remove_dir_all(&work);
    let control = control?;
    let results = Results {
        options: o.clone(),
        machine,
        splits,
        samples,
        fixed_rate,
        rss_kib,
        control,
    };
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&o.out, serde_json::to_string_pretty(&results)?)?;
    let md = report::render(&results);
    let md_path = if o.smoke || o.partial() {
        o.out.with_extension("md")
    } else {
        root().join("BENCHMARKS.md")
    };
    std::fs::write(&md_path, md)?;
    eprintln!("wrote {} and {}", o.out.display(), md_path.display());
    Ok(())
}
