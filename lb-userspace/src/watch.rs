//! Watches the configuration directory: in-place edits, renames, and the symlink swap
//! a Kubernetes ConfigMap mount does (`..data` replaced by rename). An event that
//! marks a finished file — closed after writing, renamed into place, removed — is
//! reloaded at once (no debounce on the change's path: a ConfigMap swap, an editor's
//! save or `cp` is live ~10 ms sooner); raw writes of a file still open wait for
//! its close or for a quiet spell, so a half-written file is rarely read.

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
    /// One message per event: whether it marks a finished file.
    rx: mpsc::UnboundedReceiver<bool>,
    /// An event arrived and its reload has not been reported yet. Kept across calls so
    /// `changed` is cancel-safe: the daemon's select! may drop it mid-debounce (a timer
    /// fired) without losing the change.
    pending: bool,
}

impl ConfigWatch {
    pub fn start(dir: &Path) -> Result<Self, WatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(e) = ev
                && let Some(settled) = settles(&e.kind)
            {
                let _ = tx.send(settled);
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

    /// Waits for a change; returns at once when it marks a finished file (taking the
    /// events already queued with it), else after `quiet` without further events or
    /// at the next event that marks a finished file.
    pub async fn changed(&mut self, quiet: Duration) {
        let mut settled = false;
        if !self.pending {
            match self.rx.recv().await {
                Some(s) => settled = s,
                None => std::future::pending::<()>().await,
            }
            self.pending = true;
        }
        while !settled {
            match tokio::time::timeout(quiet, self.rx.recv()).await {
                Ok(Some(s)) => settled = s,
                _ => break,
            }
        }
        while self.rx.try_recv().is_ok() {}
        self.pending = false;
    }
}

/// Whether an event may change the configuration (None: it cannot, e.g. a read), and
/// if so whether it marks a finished file (Some(true)) or one possibly still being
/// written (Some(false)).
fn settles(kind: &notify::EventKind) -> Option<bool> {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    match kind {
        K::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        K::Access(_) => None,
        K::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) | K::Remove(_) => Some(true),
        _ => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::settles;
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};

    #[test]
    fn finished_files_settle_raw_writes_wait() {
        let cases = [
            (K::Access(AccessKind::Close(AccessMode::Write)), Some(true)),
            (K::Modify(ModifyKind::Name(RenameMode::To)), Some(true)),
            (K::Modify(ModifyKind::Name(RenameMode::From)), Some(false)),
            (
                K::Modify(ModifyKind::Data(DataChange::Content)),
                Some(false),
            ),
            (K::Create(CreateKind::File), Some(false)),
            (K::Access(AccessKind::Read), None),
        ];
        for (kind, want) in cases {
            assert_eq!(settles(&kind), want, "{kind:?}");
        }
    }
}
