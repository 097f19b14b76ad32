//! Watches the configuration directory: in-place edits, renames, and the symlink swap
//! a Kubernetes ConfigMap mount does (`..data` replaced by rename). Only the files lb
//! reads count (`*.yaml`, `*.yml`, not hidden) and `..data`: a log or an editor's swap
//! file written next to them reloads nothing. How long a change waits depends on what
//! it says about the file:
//!
//! * renamed into place or removed: complete by construction — reloaded at once;
//! * closed after writing: reloaded after [`AFTER_CLOSE`] without further events, so a
//!   file rewritten in two steps (`>` then `>>`, an editor that truncates, then writes)
//!   is read once whole, not between the steps;
//! * written and still open: reloaded once it closes, or after [`STILL_OPEN`] without
//!   further events (a writer that keeps it open).
//!
//! What lb guarantees: a file renamed into place is applied as it is; a file written
//! in place is applied once it has been quiet for those bounds, so a writer that
//! pauses longer than that between its writes can still be read half-written (rename
//! into place to be safe).

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

/// Quiet time after a file was closed after writing, before it is read.
pub const AFTER_CLOSE: Duration = Duration::from_millis(50);
/// Quiet time after a write to a file still open (or any other change of it).
pub const STILL_OPEN: Duration = Duration::from_secs(1);

/// A running watch; events stop when it is dropped.
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
    /// One message per event of a file lb reads: how long to wait for quiet after it.
    rx: mpsc::UnboundedReceiver<Duration>,
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
                && e.paths.iter().any(|p| read_by_lb(p))
                && let Some(wait) = patience(&e.kind)
            {
                let _ = tx.send(wait);
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

    /// Waits for a change, then for as long as the last event asks for (see the
    /// module's doc) without another one.
    pub async fn changed(&mut self) {
        let mut wait = Duration::ZERO;
        if !self.pending {
            match self.rx.recv().await {
                Some(w) => wait = w,
                None => std::future::pending::<()>().await,
            }
            self.pending = true;
        }
        while !wait.is_zero() {
            match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(w)) => wait = w,
                _ => break,
            }
        }
        while self.rx.try_recv().is_ok() {}
        self.pending = false;
    }
}

/// Whether a changed path is one lb reads, or the `..data` link a ConfigMap mount swaps.
fn read_by_lb(path: &Path) -> bool {
    crate::load::is_config_file(path) || path.file_name().is_some_and(|n| n == "..data")
}

/// How long to wait for quiet after an event (None: it changes nothing, e.g. a read).
fn patience(kind: &notify::EventKind) -> Option<Duration> {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    match kind {
        K::Access(AccessKind::Close(AccessMode::Write)) => Some(AFTER_CLOSE),
        K::Access(_) => None,
        K::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) | K::Remove(_) => {
            Some(Duration::ZERO)
        }
        _ => Some(STILL_OPEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};

    #[test]
    fn renames_apply_at_once_closed_files_shortly_open_ones_when_quiet() {
        let cases = [
            (
                K::Access(AccessKind::Close(AccessMode::Write)),
                Some(AFTER_CLOSE),
            ),
            (
                K::Modify(ModifyKind::Name(RenameMode::To)),
                Some(Duration::ZERO),
            ),
            (
                K::Modify(ModifyKind::Name(RenameMode::From)),
                Some(STILL_OPEN),
            ),
            (
                K::Modify(ModifyKind::Data(DataChange::Content)),
                Some(STILL_OPEN),
            ),
            (K::Create(CreateKind::File), Some(STILL_OPEN)),
            (K::Access(AccessKind::Read), None),
        ];
        for (kind, want) in cases {
            assert_eq!(patience(&kind), want, "{kind:?}");
        }
    }

    #[test]
    fn only_the_files_lb_reads_count() {
        for (name, read) in [
            ("a.yaml", true),
            ("b.yml", true),
            ("..data", true),
            ("lb.log", false),
            ("a.yaml.swp", false),
            (".a.yaml.swp", false),
            ("a.yaml~", false),
            (".hidden.yaml", false),
            ("notes.txt", false),
        ] {
            assert_eq!(
                read_by_lb(Path::new("/c").join(name).as_path()),
                read,
                "{name}"
            );
        }
    }

    /// A file rewritten in two steps 30 ms apart (truncate and write half, then the
    /// rest) is one change: `changed` returns after the second step, not between.
    #[tokio::test(flavor = "current_thread")]
    async fn a_file_rewritten_in_two_steps_is_one_change() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "a: 1\n").expect("write");
        let mut watch = ConfigWatch::start(dir.path()).expect("watch");
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::fs::write(&path, "a: ").expect("first step");
                std::thread::sleep(std::time::Duration::from_millis(30));
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .expect("open");
                f.write_all(b"2\n").expect("second step");
            })
        };
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("a change");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "a: 2\n");
        writer.join().expect("writer");
        // A log written next to the configuration is no change.
        std::fs::write(dir.path().join("lb.log"), "x").expect("log");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), watch.changed())
                .await
                .is_err()
        );
    }
}
