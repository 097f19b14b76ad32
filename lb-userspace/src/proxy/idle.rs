//! The stream-idle bound on hyper's path: the client stream notes when it last moved
//! a byte ([`Activity`]); a request waits for its upstream only while bytes move
//! ([`Activity::within`]), and a connection whose bytes stopped moving is closed
//! ([`Activity::stalled`]). The lean path bounds each of its reads and writes instead.

use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a connection last moved a byte either way.
#[derive(Debug, Clone)]
pub struct Activity(Arc<AtomicU64>);

/// Milliseconds since this process's first use of an [`Activity`].
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(AtomicU64::new(now_ms())))
    }
}

impl Activity {
    /// A byte moved.
    pub fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    fn last(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Resolves once no byte has moved for `idle`.
    pub async fn stalled(&self, idle: Duration) {
        let idle_ms = idle.as_millis() as u64;
        loop {
            let last = self.last();
            let quiet = now_ms().saturating_sub(last);
            if quiet >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
        }
    }

    /// `work`'s output, or None once no byte has moved for `idle` before it ended.
    pub async fn within<F: Future>(&self, idle: Duration, work: F) -> Option<F::Output> {
        tokio::select! {
            out = work => Some(out),
            () = self.stalled(idle) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn work_goes_on_while_bytes_move_and_ends_when_they_stop() {
        let a = Activity::default();
        let idle = Duration::from_millis(60);
        // Bytes move every 20 ms for 200 ms: the work (done at 150 ms) is not cut.
        let toucher = {
            let a = a.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    a.touch();
                }
            })
        };
        let work = tokio::time::sleep(Duration::from_millis(150));
        assert_eq!(a.within(idle, work).await, Some(()));
        toucher.await.expect("toucher");
        // Nothing moves any more: cut after `idle`.
        let t = Instant::now();
        assert_eq!(a.within(idle, std::future::pending::<()>()).await, None);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
