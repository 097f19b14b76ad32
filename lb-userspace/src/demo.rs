//! `lb demo`: the seed article's 90/10 split, end to end, on this machine. Its own
//! child cgroup and bpffs folder (never the root or the default pins), v0/v1 backends
//! on loopback, a client in the cgroup, the observed split beside the configured one.
//! Cleans up everything it made, also on failure.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::datapath::cgroup::{ChildCgroup, spawn_into};
use crate::datapath::{Pins, attach};
use crate::probe::Summary;

/// The bundled example (config/backend-service.yaml), built into the binary.
pub const EXAMPLE: &str = include_str!("../../config/backend-service.yaml");
const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 10, 0, 1), 10000);

/// The demo could not run, or the split it saw disagrees with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("lb demo needs root: it loads eBPF programs and makes a cgroup")]
    NotRoot,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the example configuration did not apply: {0}")]
    Config(String),
    #[error(transparent)]
    Start(#[from] crate::run::RunError),
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error("the client failed: {0}")]
    Client(String),
    #[error("observed split disagrees with the configuration: {0}")]
    Mismatch(String),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        what: what.to_string(),
        source,
    }
}

/// Removes the demo's pins when dropped.
struct PinsGuard(Pins);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        if let Err(e) = attach::remove_all(&self.0) {
            eprintln!("lb demo: cleaning up {}: {e}", self.0.bpffs.display());
        }
    }
}

/// Runs the demo with `connections` new connections.
pub fn run(connections: u64) -> Result<(), DemoError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DemoError::NotRoot);
    }
    let id = std::process::id();
    // One worker thread serves the backends in the background while the client runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(io("tokio runtime"))?;
    let port = rt.block_on(start_backends())?;
    let work = tempdir(&format!("lb-demo-{id}")).map_err(io("temporary config folder"))?;
    let config = EXAMPLE.replace(
        "    name: http\n",
        &format!("    name: http\n    targetPort: {port}\n"),
    );
    std::fs::write(work.0.join("backend-service.yaml"), &config)
        .map_err(io("writing the example config"))?;

    let cgroup =
        ChildCgroup::create(&format!("lb-demo-{id}")).map_err(io("creating the demo cgroup"))?;
    let pins = PinsGuard(Pins::new(Path::new(&format!("/sys/fs/bpf/lb-demo-{id}"))));
    println!(
        "lb demo: cgroup {}, pins {}",
        cgroup.path.display(),
        pins.0.root.display()
    );
    println!(
        "backends: v0 on 127.0.0.2:{port}, v1 on 127.0.0.3:{port}; service backend-service at {SERVICE}"
    );
    let (routes, _) = tokio::sync::watch::channel(Default::default());
    let mut applier = crate::run::start(
        &pins.0,
        &cgroup.path,
        None,
        crate::run::SkMsgHops::OFF,
        &Default::default(),
        routes,
    )?;
    let mut sources = crate::run::Sources::files(&work.0);
    if crate::run::reload(
        &mut applier,
        &mut sources,
        &mut Default::default(),
        &Default::default(),
    )
    .is_none()
    {
        return Err(DemoError::Config("see the error above".into()));
    }
    let summary = run_client(&cgroup.path, connections)?;
    let status = crate::status::read(&pins.0)?;
    print!("{}", status.render());
    report(&summary, connections)
}

async fn start_backends() -> Result<u16, DemoError> {
    for _ in 0..20 {
        let v0 = crate::backend::bind(SocketAddr::from(([127, 0, 0, 2], 0)))
            .await
            .map_err(io("binding 127.0.0.2"))?;
        let port = v0.local_addr().map_err(io("backend address"))?.port();
        let Ok(v1) = crate::backend::bind(SocketAddr::from(([127, 0, 0, 3], port))).await else {
            continue;
        };
        tokio::spawn(crate::backend::serve(v0, "v0".into()));
        tokio::spawn(crate::backend::serve(v1, "v1".into()));
        return Ok(port);
    }
    Err(DemoError::Client(
        "no port free on both 127.0.0.2 and 127.0.0.3".into(),
    ))
}

fn run_client(cgroup: &Path, connections: u64) -> Result<Summary, DemoError> {
    let exe = std::env::current_exe().map_err(io("finding lb itself"))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "probe",
        "--to",
        &SERVICE.to_string(),
        "--count",
        &connections.to_string(),
        "--json",
    ]);
    spawn_into(&mut cmd, cgroup);
    let out = cmd.output().map_err(io("running the client"))?;
    if !out.status.success() {
        return Err(DemoError::Client(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| DemoError::Client(e.to_string()))?;
    let count = |k: &str| v["by_backend"][k].as_u64().unwrap_or(0);
    Ok(Summary {
        attempts: v["attempts"].as_u64().unwrap_or(0),
        failures: v["failures"].as_u64().unwrap_or(0),
        by_backend: [
            ("v0".to_string(), count("v0")),
            ("v1".to_string(), count("v1")),
        ]
        .into(),
        peer_mismatches: v["peer_mismatches"].as_u64().unwrap_or(0),
        ..Summary::default()
    })
}

fn report(s: &Summary, connections: u64) -> Result<(), DemoError> {
    let v1 = s.by_backend.get("v1").copied().unwrap_or(0);
    let v0 = s.by_backend.get("v0").copied().unwrap_or(0);
    let total = (v0 + v1).max(1) as f64;
    let v1_pct = v1 as f64 * 100.0 / total;
    println!();
    println!("             configured   observed ({connections} connections, one request each)");
    println!(
        "  v0             90.0 %    {:6.1} %  ({v0})",
        v0 as f64 * 100.0 / total
    );
    println!("  v1             10.0 %    {v1_pct:6.1} %  ({v1})");
    println!("  failures                  {}", s.failures);
    println!(
        "  getpeername showed the service address: {}",
        if s.peer_mismatches == 0 { "yes" } else { "NO" }
    );
    // Binomial spread at p=0.1: sd = sqrt(0.09/n); 4 sd is a false alarm once in ~15,000 runs.
    let tolerance = 4.0 * 100.0 * (0.09 / total).sqrt();
    if s.failures > 0 || s.peer_mismatches > 0 || (v1_pct - 10.0).abs() > tolerance {
        return Err(DemoError::Mismatch(format!(
            "v1 {v1_pct:.1} % (expected 10 ± {tolerance:.1}), {} failures, {} peer mismatches",
            s.failures, s.peer_mismatches
        )));
    }
    println!("\nOK: the kernel split matches the VirtualService (within ±{tolerance:.1} points).");
    Ok(())
}

/// A temporary folder removed when dropped.
struct TempDir(PathBuf);

fn tempdir(name: &str) -> std::io::Result<TempDir> {
    let p = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
