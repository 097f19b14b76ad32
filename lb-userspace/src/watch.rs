//! Watches the configuration directory: in-place edits, renames, and the symlink swap
//! a Kubernetes ConfigMap mount does (`..data` replaced by rename). Bursts of events
//! are debounced into one reload.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Starting the watcher failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watching {path}: {source}")]
    Notify { path: String, source: notify::Error },
}

/// A running watch; events stop when it is dropped.
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<()>,
    /// An event arrived and its reload has not been reported yet. Kept across calls so
    /// `changed` is cancel-safe: the daemon's select! may drop it mid-debounce (a timer
    /// fired) without losing the change.
    pending: bool,
}

impl ConfigWatch {
    pub fn start(dir: &Path) -> Result<Self, WatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Access events (reads) change nothing; everything else may.
            if ev.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                let _ = tx.send(());
            }
        })
        .map_err(|source| WatchError::Notify {
            path: dir.display().to_string(),
            source,
        })?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(Self {
            _watcher: watcher,
            rx,
            pending: false,
        })
    }

    /// Waits for a change, then for `quiet` without further events.
    pub async fn changed(&mut self, quiet: Duration) {
        if !self.pending {
            if self.rx.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
            self.pending = true;
        }
        while let Ok(Some(())) = tokio::time::timeout(quiet, self.rx.recv()).await {}
        self.pending = false;
    }
}
