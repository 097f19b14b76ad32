//! `lb run`: the daemon. Binds the proxy, attaches (or adopts) the datapath, applies
//! the configuration, and re-applies it on every change. A rejected change is logged
//! and recorded for `lb status`; the running plan stays.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_common::{Settings, SockAddr4, settings_flags};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::apply::{Applier, ApplyError, Garbage};
use crate::compile;
use crate::datapath::{self, DatapathError, Pins, PlanMaps, ProxyMaps};
use crate::kubernetes::{self, KubeError, KubeSource};
use crate::model::{self, accept};
use crate::proxy::{self, Proxy, ProxyError, ProxyOptions, Shared};
use crate::route::RouteTable;
use crate::source::SourceStatus;
use crate::watch::{ConfigWatch, WatchError};

/// How long replaced revisions stay before deletion: far longer than a connect takes
/// between reading a service entry and its slot.
const GRACE: Duration = Duration::from_secs(2);

/// The daemon could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Kubernetes(#[from] KubeError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

pub struct RunOptions {
    /// A folder of Istio YAML (None: the cluster only).
    pub config: Option<PathBuf>,
    /// Read the Kubernetes cluster (None: the files only).
    pub kubernetes: Option<kubernetes::Options>,
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub detach_on_exit: bool,
    pub proxy: ProxyOptions,
    /// Which local hops sk_msg shortcuts.
    pub sk_msg: SkMsgHops,
    /// The node's interfaces whose incoming packets to service addresses lb splits in
    /// XDP (north-south), and the XDP mode.
    pub north_south: datapath::north_south::NorthSouth,
    /// Keep what a change does not touch between reloads (each file's text, the
    /// slices' models and plans): a change then costs what it touches.
    pub parse_cache: bool,
    /// Path normalisation and lb's own listeners (no endpoint may be one).
    pub model: model::Options,
    /// The listeners from `lb run`'s keeper (keeper.rs), if it started this daemon.
    pub inherited: Option<crate::keeper::Inherited>,
}

/// lb's own listeners as the model checks endpoints against them; a listener on every
/// address covers each of the machine's IPv4 addresses.
pub fn own_listeners(listeners: &[SocketAddr]) -> model::own::OwnListeners {
    model::own::OwnListeners::new(listeners, local_ipv4())
}

/// The IPv4 addresses of this machine's interfaces (getifaddrs); empty if it fails.
fn local_ipv4() -> Vec<Ipv4Addr> {
    datapath::north_south::ipv4_by_interface()
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}

/// The IPv4 addresses of `ifaces` (where their NodePorts are served).
pub fn node_addresses(ifaces: &[String]) -> Vec<Ipv4Addr> {
    (datapath::north_south::ipv4_by_interface().into_iter())
        .filter(|(name, _)| ifaces.contains(name))
        .map(|(_, a)| a)
        .collect()
}

/// [`settings_flags::PROXY_ON_EVERY_ADDRESS`] if the proxy listens on every address
/// (north-south clients reach it at the node's address they dialled).
fn on_every_address(p: ProxyListeners) -> u32 {
    if p.main.ip().is_unspecified() {
        settings_flags::PROXY_ON_EVERY_ADDRESS
    } else {
        0
    }
}

/// Where the kernel sends proxy-path connects: the listener's address (loopback when
/// it listens on every address).
fn proxy_target(addr: SocketAddr) -> SockAddr4 {
    match addr.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => SockAddr4::new(ip.octets(), addr.port()),
        _ => SockAddr4::new(Ipv4Addr::LOCALHOST.octets(), addr.port()),
    }
}

/// Which local hops the sk_msg shortcut takes (both ends must be sockets of processes
/// inside the attached cgroup). `--sk-msg all`, `off`, or a comma list of
/// `client` (client <-> proxy), `upstream` (proxy <-> local backend) and `kernel`
/// (kernel-path client <-> local backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkMsgHops(u32);

impl SkMsgHops {
    pub const ALL: SkMsgHops = SkMsgHops(
        settings_flags::SK_MSG_CLIENT
            | settings_flags::SK_MSG_UPSTREAM
            | settings_flags::SK_MSG_KERNEL,
    );
    pub const OFF: SkMsgHops = SkMsgHops(0);

    fn flags(self) -> u32 {
        self.0
    }
}

impl std::str::FromStr for SkMsgHops {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => return Ok(SkMsgHops::ALL),
            "off" | "none" => return Ok(SkMsgHops::OFF),
            _ => {}
        }
        s.split(',').try_fold(SkMsgHops::OFF, |hops, hop| {
            let hop = hop.trim();
            let (_, flag) = settings_flags::HOPS
                .iter()
                .find(|(name, _)| *name == hop)
                .ok_or_else(|| {
                    format!(
                        "unknown hop `{hop}`: expected all, off, or a comma list of client, upstream, kernel"
                    )
                })?;
            Ok(SkMsgHops(hops.0 | flag))
        })
    }
}

/// The proxy's listeners (see `Settings::proxy` and `proxy_deferred`).
#[derive(Clone, Copy, Debug)]
pub struct ProxyListeners {
    pub main: SocketAddr,
    pub deferred: SocketAddr,
}

/// Attaches (or adopts, replacing programs of another build in place) the datapath,
/// takes over its plan maps and tells the programs who lb is. The returned applier is
/// the only writer of the plan maps and of `routes`, the proxy's route table.
pub fn start(
    pins: &Pins,
    cgroup: &Path,
    proxy: Option<ProxyListeners>,
    sk_msg: SkMsgHops,
    north_south: &datapath::north_south::NorthSouth,
    routes: watch::Sender<Arc<RouteTable>>,
) -> Result<Applier, RunError> {
    let t = std::time::Instant::now();
    let done =
        datapath::attach::ensure_attached(pins, cgroup, north_south, datapath::object::bytes()?)?;
    tracing::info!(
        attached = ?done.attached,
        replaced = ?done.replaced,
        kept = ?done.kept,
        took_ms = ms(t),
        cgroup = %cgroup.display(),
        pins = %pins.root.display(),
        "datapath ready"
    );
    if let Err(e) = pins.mark_current() {
        tracing::warn!(
            "pointing {}/current at this layout: {e}",
            pins.bpffs.display()
        );
    }
    // The client and upstream shortcuts need lb's own sockets to pass through the
    // programs (its accepted sockets join the socket map at PASSIVE_ESTABLISHED, its
    // upstream ones at ACTIVE_ESTABLISHED), which only happens inside the cgroup;
    // outside it, sockets in the map would only pay for a shortcut that never finds
    // its peer. The kernel-path shortcut involves only the client and the backend.
    let lb_hops = settings_flags::SK_MSG_CLIENT | settings_flags::SK_MSG_UPSTREAM;
    let sk_msg = if sk_msg.flags() & lb_hops != 0
        && !datapath::cgroup::contains_self(cgroup).unwrap_or(false)
    {
        tracing::info!(
            "lb runs outside {}: the sk_msg shortcut of the proxy's hops is off (run lb inside the cgroup it attaches to, e.g. the root cgroup on a node)",
            cgroup.display()
        );
        SkMsgHops(sk_msg.flags() & !lb_hops)
    } else {
        sk_msg
    };
    let mut applier = Applier::adopt(PlanMaps::open(pins)?, routes)?;
    if sk_msg.flags() & !settings_flags::SK_MSG_CLIENT != 0 {
        // Local backends that listened before the programs were attached.
        match datapath::listeners::inside(cgroup) {
            Ok(found) => {
                let n = applier.remember_listeners(found)?;
                tracing::info!(listeners = n, "local backends found inside the cgroup");
            }
            Err(e) => tracing::warn!("looking for listeners inside {}: {e}", cgroup.display()),
        }
    }
    applier.set_settings(Settings {
        self_tgid: std::process::id(),
        proxy: proxy.map(|p| proxy_target(p.main)).unwrap_or_default(),
        proxy_deferred: proxy.map(|p| proxy_target(p.deferred)).unwrap_or_default(),
        flags: sk_msg.flags() | proxy.map_or(0, on_every_address),
    })?;
    Ok(applier)
}

/// Removes the datapath of other layouts (an older or newer build's, attached beside
/// this one's) once this one steers: called after a plan was applied.
fn retire_other_layouts(pins: &Pins) {
    for old in pins.other_layouts() {
        match datapath::attach::remove_all(&old) {
            Ok(()) => {
                tracing::info!(layout = %old.root.display(), "removed the datapath of another layout: this one is live")
            }
            Err(e) => tracing::warn!("removing the datapath at {}: {e}", old.root.display()),
        }
    }
}

/// Where the configuration comes from, and what the cluster's objects were last
/// accepted as.
#[derive(Default)]
pub struct Sources {
    pub dir: Option<PathBuf>,
    pub kube: Option<KubeSource>,
    pub last_good: accept::LastGood,
    /// The rejected objects of the last reload (logged when they change).
    pub rejected: Vec<accept::Rejected>,
}

impl Sources {
    /// A folder of YAML only.
    pub fn files(dir: &Path) -> Self {
        Sources {
            dir: Some(dir.to_path_buf()),
            ..Default::default()
        }
    }
}

/// What a reload reuses from the ones before: the parse of unchanged files, the model
/// and plan of unchanged slices.
#[derive(Default)]
pub struct Reuse {
    pub model: model::Cache,
    pub plans: compile::slices::PlanCache,
}

/// Loads, compiles and applies the configuration (the kernel maps and the proxy's
/// route table together, or neither); on any problem the running plan stays and the
/// error is recorded. Cluster objects that fail validation are left out one by one
/// (their last good versions stay) and recorded the same way.
pub fn reload(
    applier: &mut Applier,
    sources: &mut Sources,
    cache: &mut Reuse,
    opts: &model::Options,
) -> Option<Garbage> {
    let started = std::time::Instant::now();
    let mut phases = Phases::default();
    let result = build_plan(sources, cache, opts, &mut phases).and_then(|(plan, rejected)| {
        let t = std::time::Instant::now();
        let applied = applier.apply(&plan).map_err(|e| e.to_string());
        phases.apply_ms = ms(t);
        applied.map(|a| (a, rejected))
    });
    // Old slices are freed after the new plan is live, not on its way.
    cache.plans.drop_retired();
    match result {
        Ok(((report, garbage), rejected)) => {
            let took_ms = ms(started);
            tracing::info!(
                took_ms,
                load_ms = phases.load_ms,
                compile_ms = phases.compile_ms,
                apply_ms = phases.apply_ms,
                added = report.added,
                changed = report.changed,
                removed = report.removed,
                unchanged = report.unchanged,
                rejected = rejected.len(),
                "configuration applied"
            );
            if rejected != sources.rejected {
                if let Some(k) = &sources.kube {
                    k.report_rejected(&rejected, &sources.rejected);
                }
                for r in &rejected {
                    tracing::error!(
                        object = %r.object,
                        last_good_stays = r.last_good_stays,
                        "object rejected, the rest of the configuration applies:\n{}",
                        r.problems.join("\n")
                    );
                }
            }
            let recorded = if rejected.is_empty() {
                applier.clear_error()
            } else {
                applier.record_error(&describe_rejected(&rejected))
            };
            if let Err(e) = recorded {
                tracing::warn!("recording state: {e}");
            }
            sources.rejected = rejected;
            Some(garbage)
        }
        Err(e) => {
            tracing::error!("configuration rejected, the running plan stays:\n{e}");
            if let Err(e2) = applier.record_error(&e) {
                tracing::warn!("recording the error: {e2}");
            }
            None
        }
    }
}

/// The rejected objects as `lb status` shows them.
fn describe_rejected(rejected: &[accept::Rejected]) -> String {
    let mut s = format!(
        "{} cluster object(s) rejected, the rest applied:\n",
        rejected.len()
    );
    for r in rejected {
        s.push_str(&format!(
            "{} ({}):\n  {}\n",
            r.object,
            if r.last_good_stays {
                "its last good version stays"
            } else {
                "left out"
            },
            r.problems.join("\n  ")
        ));
    }
    s
}

/// Where a reload's time went (logged with "configuration applied").
#[derive(Default)]
struct Phases {
    /// Reading changed files and building the model.
    load_ms: f64,
    compile_ms: f64,
    apply_ms: f64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Loads the files (reusing the parse of unchanged ones) and the cluster's objects,
/// validates them together and compiles the plan.
fn build_plan(
    sources: &mut Sources,
    cache: &mut Reuse,
    opts: &model::Options,
    phases: &mut Phases,
) -> Result<(compile::Plan, Vec<accept::Rejected>), String> {
    let t = std::time::Instant::now();
    let files = match &sources.dir {
        Some(dir) => {
            let (loaded, diags) = cache.model.parse.load_dir(dir).map_err(|e| e.to_string())?;
            accept::Input { loaded, diags }
        }
        None => accept::Input::default(),
    };
    let cluster = sources
        .kube
        .as_ref()
        .map(|k| {
            let s = k.snapshot();
            accept::Input {
                loaded: s.objects,
                diags: s.diags,
            }
        })
        .unwrap_or_default();
    let (v, rejected) = accept::build(
        files,
        cluster,
        &mut sources.last_good,
        &mut cache.model,
        opts,
    )
    .map_err(|e| e.to_string())?;
    phases.load_ms = ms(t);
    for w in &v.warnings {
        tracing::warn!("{w}");
    }
    let t = std::time::Instant::now();
    let plan =
        compile::slices::plan_slices(&v.slices, v.changes, opts.normalization, &mut cache.plans)
            .map_err(|e| e.to_string());
    phases.compile_ms = ms(t);
    plan.map(|p| (p, rejected))
}

/// Starts the Kubernetes source and waits for its first complete list (a first plan
/// must not see Services without their endpoints), saying what it waits for.
async fn start_kubernetes(opts: &kubernetes::Options) -> Result<KubeSource, KubeError> {
    let source = KubeSource::start(opts).await?;
    {
        let ready = source.ready();
        tokio::pin!(ready);
        loop {
            tokio::select! {
            () = &mut ready => break,
            () = tokio::time::sleep(Duration::from_secs(10)) => {
                let waiting: Vec<String> = source
                    .health()
                    .kinds
                    .iter()
                    .filter(|k| k.last_sync_ms.is_none())
                    .map(|k| format!("{} ({})", k.kind, k.error.as_deref().unwrap_or("listing")))
                    .collect();
                    tracing::warn!("waiting for the first list of: {}", waiting.join(", "));
                }
            }
        }
    }
    tracing::info!("Kubernetes source listed");
    Ok(source)
}

/// Stops the proxy: first its listeners leave `connect4`'s map, unless a newer daemon
/// serves them now (an upgrade in place), so new connects take the kernel split at
/// once; then the proxy accepts the connects already sent to it, closes its listeners
/// and drains ([`Proxy::serve`]).
async fn stop_proxy(serving: proxy::own_thread::Serving, pins: &Pins) -> Result<(), ProxyError> {
    match ProxyMaps::unregister_listeners(pins) {
        Ok(true) => tracing::info!(
            "the proxy's listeners left the kernel's map: new connects take the kernel split"
        ),
        Ok(false) => tracing::info!("a newer daemon serves the proxy's listeners: they stay"),
        Err(e) => tracing::warn!("taking the proxy's listeners out of the kernel's map: {e}"),
    }
    serving.stop().await
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(mut opts: RunOptions) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let pins = Pins::new(&opts.bpffs);
    // The proxy listens before any service is switched to it.
    let (proxy, ready) = match opts.inherited.take() {
        Some(i) => (i.proxy, Some(i.ready)),
        None => (Proxy::bind(&opts.proxy)?, None),
    };
    tracing::info!(proxy = %proxy.local_addr(), deferred = %proxy.deferred_addr(), admin = %proxy.admin_addr(), "proxy listening");
    let listeners = ProxyListeners {
        main: proxy.local_addr(),
        deferred: proxy.deferred_addr(),
    };
    let (tx, rx) = watch::channel(Arc::new(RouteTable::default()));
    let mut applier = start(
        &pins,
        &opts.cgroup,
        Some(listeners),
        opts.sk_msg,
        &opts.north_south,
        tx,
    )?;
    ProxyMaps::register_listeners(&pins, proxy.listeners())?;
    let kernel = match ProxyMaps::open(&pins) {
        Ok(k) => Some(Mutex::new(k)),
        Err(e) => {
            tracing::warn!("proxy without kernel maps (no original destinations): {e}");
            None
        }
    };
    let mut watch = opts.config.as_deref().map(ConfigWatch::start).transpose()?;
    let kube = match &opts.kubernetes {
        Some(k) => Some(start_kubernetes(k).await?),
        None => None,
    };
    let mut sources = Sources {
        dir: opts.config.clone(),
        kube,
        ..Default::default()
    };
    let (status_tx, status_rx) = watch::channel(SourceStatus {
        files: opts.config.as_ref().map(|d| d.display().to_string()),
        ..Default::default()
    });
    let publish = |sources: &Sources, applied: bool| {
        status_tx.send_modify(|s| {
            s.kubernetes = sources.kube.as_ref().map(KubeSource::health);
            s.rejected.clone_from(&sources.rejected);
            if applied {
                s.applied_at_ms = Some(now_ms());
            }
        });
    };
    let mut cache = Reuse::default();
    // The listeners as bound (the deferred one's port is only known now).
    let mut model_opts = opts.model.clone();
    model_opts.node_addresses = node_addresses(&opts.north_south.ifaces);
    if !opts.north_south.ifaces.is_empty() {
        tracing::info!(addresses = ?model_opts.node_addresses, "NodePorts served at");
        match datapath::north_south::Neighbours::open(&pins) {
            Ok(mut n) => {
                // Before the first flow can meet them unresolved.
                n.resolve_gateways();
                drop(tokio::spawn(n.run()));
            }
            Err(e) => tracing::warn!("XDP's unresolved next hops will wait for the stack: {e}"),
        }
    }
    model_opts.own = own_listeners(&[
        proxy.local_addr(),
        proxy.deferred_addr(),
        proxy.admin_addr(),
    ]);
    let reload = |applier: &mut Applier, sources: &mut Sources, cache: &mut Reuse| {
        let garbage = reload(applier, sources, cache, &model_opts);
        if !opts.parse_cache {
            // Nothing of the parse outlives the reload.
            *cache = Reuse::default();
            give_back_memory();
        }
        if garbage.is_some() {
            retire_other_layouts(&pins);
        }
        publish(sources, garbage.is_some());
        garbage
    };
    let mut pending: Vec<(Instant, Garbage)> = Vec::new();
    // The cluster's events not applied yet (kept here: see kubernetes::burst).
    let mut burst = kubernetes::burst::Burst::default();
    if let Some(g) = reload(&mut applier, &mut sources, &mut cache) {
        pending.push((Instant::now() + GRACE, g));
    }
    let log = match &opts.proxy.access_log {
        Some(t) => Some(proxy::access_log::AccessLog::open(t).map_err(ProxyError::AccessLog)?),
        None => None,
    };
    let bounds = opts.proxy.bounds;
    let client = proxy::pool::Pool::new(&bounds);
    let shared = Arc::new(Shared {
        table: rx,
        metrics: proxy::metrics::Metrics::with(&client),
        client,
        conns: proxy::conns::Conns::new(bounds.max_connections),
        log,
        kernel,
        front: proxy::Front::new(opts.proxy.limits, bounds, opts.proxy.lean, listeners.main),
        source: status_rx,
    });
    let mut serving = proxy.spawn(shared, opts.proxy.drain)?;
    if let Some(ready) = ready {
        ready.say();
    }

    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut health_tick = tokio::time::interval(Duration::from_secs(1));
    // Outlier detection on the kernel path, only while a service asks for it.
    let mut outlier_tick: Option<(Duration, tokio::time::Interval)> = None;
    let served = loop {
        let period = applier.outlier_period();
        if outlier_tick.as_ref().map(|(p, _)| *p) != period {
            outlier_tick = period.map(|p| (p, tokio::time::interval(p)));
        }
        let next_gc = pending.first().map(|(t, _)| *t);
        let cluster_due = burst.due();
        let changed = tokio::select! {
            _ = async { outlier_tick.as_mut().expect("guarded").1.tick().await }, if outlier_tick.is_some() => {
                match applier.eject() {
                    Ok(Some((_, g))) => pending.push((Instant::now() + GRACE, g)),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("kernel outlier detection: {e}"),
                }
                false
            }
            () = async { watch.as_mut().expect("guarded").changed().await }, if watch.is_some() => true,
            () = async { sources.kube.as_ref().expect("guarded").changed().await }, if sources.kube.is_some() => {
                if sources.kube.as_ref().is_some_and(KubeSource::pending) {
                    burst.event(Instant::now());
                }
                false
            }
            () = async { tokio::time::sleep_until(cluster_due.expect("guarded")).await }, if cluster_due.is_some() => true,
            _ = health_tick.tick(), if sources.kube.is_some() => {
                // Watches fail and recover between events: keep /ready current.
                let k = sources.kube.as_ref().expect("guarded");
                status_tx.send_modify(|s| s.kubernetes = Some(k.health()));
                k.post_lasting();
                false
            }
            () = async { tokio::time::sleep_until(next_gc.expect("guarded")).await }, if next_gc.is_some() => {
                let (_, g) = pending.remove(0);
                applier.collect_garbage(g);
                // Parsing a large configuration allocates a lot, briefly: hand the
                // freed memory back to the OS once things are quiet — after the last
                // reload's grace, not during a burst of changes (in a profile of 100
                // changes, trimming between reloads and the page faults after it were
                // ~10 % of the daemon's time; the change latency did not move visibly).
                if pending.is_empty() {
                    give_back_memory();
                }
                // Files read within a second of their last write are checked again
                // now, while nothing happens, rather than by the next change's reload.
                cache.model.parse.settle()
            }
            // Drain (stop_proxy): new connects take the kernel split at once,
            // in-flight requests finish within the bound.
            _ = term.recv() => break stop_proxy(serving, &pins).await,
            _ = int.recv() => break stop_proxy(serving, &pins).await,
            ended = serving.ended() => {
                tracing::error!("the proxy stopped serving; exiting");
                break ended;
            }
        };
        if changed {
            let started = Instant::now();
            if let Some(g) = reload(&mut applier, &mut sources, &mut cache) {
                pending.push((Instant::now() + GRACE, g));
            }
            // Every reload reads the cluster's objects as they are now.
            burst.applied(started, Instant::now());
        }
    };
    if opts.detach_on_exit {
        drop(applier);
        datapath::attach::remove_all(&pins)?;
        tracing::info!("detached and unpinned");
    } else {
        tracing::info!("exiting; the datapath stays pinned and keeps steering");
    }
    Ok(served?)
}

/// Hands the memory freed since the last time back to the OS: mimalloc (main.rs)
/// returns freed pages on its own only after a delay and only while the daemon goes on
/// allocating, and an idle daemon does not (10,000 Services idled at ~320 MiB instead
/// of ~240).
fn give_back_memory() {
    // SAFETY: mi_collect only frees what the allocator holds unused.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::SkMsgHops;
    use lb_common::settings_flags::{SK_MSG_CLIENT, SK_MSG_KERNEL, SK_MSG_UPSTREAM};

    #[test]
    fn sk_msg_hops_parse_all_off_and_lists() {
        let parse = |s: &str| s.parse::<SkMsgHops>().map(|h| h.flags());
        assert_eq!(
            parse("all"),
            Ok(SK_MSG_CLIENT | SK_MSG_UPSTREAM | SK_MSG_KERNEL)
        );
        assert_eq!(parse("off"), Ok(0));
        assert_eq!(parse("kernel"), Ok(SK_MSG_KERNEL));
        assert_eq!(
            parse("client, upstream"),
            Ok(SK_MSG_CLIENT | SK_MSG_UPSTREAM)
        );
        let err = parse("client,both").unwrap_err();
        assert!(err.contains("unknown hop `both`"), "{err}");
    }
}
