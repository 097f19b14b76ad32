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
use crate::model;
use crate::proxy::{self, Proxy, ProxyError, ProxyOptions, Shared};
use crate::route::RouteTable;
use crate::watch::{ConfigWatch, WatchError};

/// How long replaced revisions stay before deletion: far longer than a connect takes
/// between reading a service entry and its slot.
const GRACE: Duration = Duration::from_secs(2);
/// Quiet time after the last file event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// The daemon could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

pub struct RunOptions {
    pub config: PathBuf,
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub detach_on_exit: bool,
    pub proxy: ProxyOptions,
    /// Which local hops sk_msg shortcuts.
    pub sk_msg: SkMsgHops,
    /// Keep each file's parse between reloads (faster changes, more memory).
    pub parse_cache: bool,
    /// Path normalisation and lb's own listeners (no endpoint may be one).
    pub model: model::Options,
}

/// lb's own listeners as the model checks endpoints against them; a listener on every
/// address covers each of the machine's IPv4 addresses.
pub fn own_listeners(listeners: &[SocketAddr]) -> model::own::OwnListeners {
    model::own::OwnListeners::new(listeners, local_ipv4())
}

/// The IPv4 addresses of this machine's interfaces (getifaddrs); empty if it fails.
fn local_ipv4() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below; each entry's
    // address is read only when it is an AF_INET sockaddr.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = a.cast::<libc::sockaddr_in>();
                out.push(Ipv4Addr::from(u32::from_be((*sin).sin_addr.s_addr)));
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
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
    routes: watch::Sender<Arc<RouteTable>>,
) -> Result<Applier, RunError> {
    let t = std::time::Instant::now();
    let done = datapath::attach::ensure_attached(pins, cgroup, datapath::object::bytes()?)?;
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
        flags: sk_msg.flags(),
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

/// Loads, compiles and applies the configuration (the kernel maps and the proxy's
/// route table together, or neither); on any problem the running plan stays and the
/// error is recorded.
pub fn reload(
    applier: &mut Applier,
    dir: &Path,
    cache: &mut model::Cache,
    opts: &model::Options,
) -> Option<Garbage> {
    let started = std::time::Instant::now();
    let mut phases = Phases::default();
    let result = build_plan(dir, cache, opts, &mut phases).and_then(|plan| {
        let t = std::time::Instant::now();
        let applied = applier.apply(&plan).map_err(|e| e.to_string());
        phases.apply_ms = ms(t);
        applied
    });
    match result {
        Ok((report, garbage)) => {
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
                "configuration applied"
            );
            if let Err(e) = applier.clear_error() {
                tracing::warn!("recording state: {e}");
            }
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

/// Where a reload's time went (logged with "configuration applied").
#[derive(Default)]
struct Phases {
    /// Reading changed files and building the model.
    load_ms: f64,
    compile_ms: f64,
    apply_ms: f64,
}

fn ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Loads (reusing the parse of unchanged files) and compiles the configuration.
fn build_plan(
    dir: &Path,
    cache: &mut model::Cache,
    opts: &model::Options,
    phases: &mut Phases,
) -> Result<compile::Plan, String> {
    let t = std::time::Instant::now();
    let v = model::load_dir_with(dir, cache, opts).map_err(|e| e.to_string())?;
    phases.load_ms = ms(t);
    for w in &v.warnings {
        tracing::warn!("{w}");
    }
    let t = std::time::Instant::now();
    let plan = compile::plan(v.model).map_err(|e| e.to_string());
    phases.compile_ms = ms(t);
    plan
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let pins = Pins::new(&opts.bpffs);
    // The proxy listens before any service is switched to it.
    let proxy = Proxy::bind(&opts.proxy).await?;
    tracing::info!(proxy = %proxy.local_addr(), deferred = %proxy.deferred_addr(), admin = %proxy.admin_addr(), "proxy listening");
    let listeners = ProxyListeners {
        main: proxy.local_addr(),
        deferred: proxy.deferred_addr(),
    };
    let (tx, rx) = watch::channel(Arc::new(RouteTable::default()));
    let mut applier = start(&pins, &opts.cgroup, Some(listeners), opts.sk_msg, tx)?;
    let kernel = match ProxyMaps::open(&pins) {
        Ok(k) => Some(Mutex::new(k)),
        Err(e) => {
            tracing::warn!("proxy without kernel maps (no original destinations): {e}");
            None
        }
    };
    let mut watch = ConfigWatch::start(&opts.config)?;
    let mut cache = model::Cache::default();
    // The listeners as bound (the deferred one's port is only known now).
    let mut model_opts = opts.model.clone();
    model_opts.own = own_listeners(&[
        proxy.local_addr(),
        proxy.deferred_addr(),
        proxy.admin_addr(),
    ]);
    let mut reload = |applier: &mut Applier, dir: &Path| {
        let garbage = reload(applier, dir, &mut cache, &model_opts);
        if !opts.parse_cache {
            // Nothing of the parse outlives the reload.
            cache = model::Cache::default();
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
        }
        if garbage.is_some() {
            retire_other_layouts(&pins);
        }
        garbage
    };
    let mut pending: Vec<(Instant, Garbage)> = Vec::new();
    if let Some(g) = reload(&mut applier, &opts.config) {
        pending.push((Instant::now() + GRACE, g));
    }
    let log = match &opts.proxy.access_log {
        Some(t) => Some(proxy::access_log::AccessLog::open(t).map_err(ProxyError::AccessLog)?),
        None => None,
    };
    let shared = Arc::new(Shared {
        table: rx,
        client: Default::default(),
        metrics: Default::default(),
        log,
        kernel,
        front: proxy::Front::new(opts.proxy.limits, opts.proxy.lean, listeners.main),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = opts.proxy.drain;
    let server = tokio::spawn(proxy.serve(shared, drain, async move {
        let _ = stop_rx.await;
    }));

    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    loop {
        let next_gc = pending.first().map(|(t, _)| *t);
        tokio::select! {
            _ = watch.changed(DEBOUNCE) => {
                if let Some(g) = reload(&mut applier, &opts.config) {
                    pending.push((Instant::now() + GRACE, g));
                }
            }
            _ = async { tokio::time::sleep_until(next_gc.expect("guarded")).await }, if next_gc.is_some() => {
                let (_, g) = pending.remove(0);
                applier.collect_garbage(g);
                // Parsing a large configuration allocates a lot, briefly: hand the
                // freed memory back to the OS once things are quiet — after the last
                // reload's grace, not during a burst of changes (in a profile of 100
                // changes, trimming between reloads and the page faults after it were
                // ~10 % of the daemon's time; the change latency did not move visibly).
                if pending.is_empty() {
                    // SAFETY: malloc_trim only releases free heap memory.
                    unsafe { libc::malloc_trim(0) };
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Drain: stop accepting (the kernel falls back to its split at once), finish
    // in-flight requests within the bound.
    let _ = stop_tx.send(());
    let _ = server.await;
    if opts.detach_on_exit {
        drop(applier);
        datapath::attach::remove_all(&pins)?;
        tracing::info!("detached and unpinned");
    } else {
        tracing::info!("exiting; the datapath stays pinned and keeps steering");
    }
    Ok(())
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
