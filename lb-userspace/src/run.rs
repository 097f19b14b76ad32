//! `lb run`: the daemon. Attaches (or adopts) the datapath, applies the configuration,
//! and re-applies it on every change. A rejected change is logged and recorded for
//! `lb status`; the running plan stays.

use std::path::PathBuf;
use std::time::Duration;

use lb_common::{Settings, SockAddr4};
use tokio::time::Instant;

use crate::apply::{self, Applier, ApplyError, Garbage, Pins};
use crate::compile;
use crate::model;
use crate::watch::{ConfigWatch, WatchError};

/// How long replaced revisions stay before deletion: far longer than a connect takes
/// between reading a service entry and its slot.
const GRACE: Duration = Duration::from_secs(2);
/// Quiet time after the last file event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The daemon could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

pub struct RunOptions {
    pub config: PathBuf,
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub detach_on_exit: bool,
}

/// Attaches and applies once (used by `lb run` and `lb demo`).
pub fn start(pins: &Pins, cgroup: &std::path::Path) -> Result<Applier, ApplyError> {
    let how = apply::attach::ensure_attached(pins, cgroup)?;
    tracing::info!(?how, cgroup = %cgroup.display(), pins = %pins.root.display(), "datapath ready");
    let mut applier = Applier::adopt(pins)?;
    applier.set_settings(Settings {
        self_tgid: std::process::id(),
        proxy: SockAddr4::default(),
        flags: 0,
    })?;
    Ok(applier)
}

/// Loads, compiles and applies the configuration; on any problem the running plan
/// stays and the error is recorded. Returns the garbage to collect later.
pub fn reload(applier: &mut Applier, dir: &std::path::Path) -> Option<Garbage> {
    let result = model::load_dir(dir)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            for w in &v.warnings {
                tracing::warn!("{w}");
            }
            compile::compile(&v.model).map_err(|e| e.to_string())
        })
        .and_then(|image| applier.apply(&image).map_err(|e| e.to_string()));
    match result {
        Ok((report, garbage)) => {
            tracing::info!(
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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let pins = Pins::new(&opts.bpffs);
    let mut applier = start(&pins, &opts.cgroup)?;
    let mut watch = ConfigWatch::start(&opts.config)?;
    let mut pending: Vec<(Instant, Garbage)> = Vec::new();
    if let Some(g) = reload(&mut applier, &opts.config) {
        pending.push((Instant::now() + GRACE, g));
    }
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
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    if opts.detach_on_exit {
        drop(applier);
        apply::attach::remove_all(&pins)?;
        tracing::info!("detached and unpinned");
    } else {
        tracing::info!("exiting; the datapath stays pinned and keeps steering");
    }
    Ok(())
}
