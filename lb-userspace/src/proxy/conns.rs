//! Admission of client connections: at most `max` at once, and at the bound the
//! connection that has waited longest for a request head is closed to make room, so a
//! crowd of idle or dripping connections cannot lock new clients out (what a slowloris
//! attack counts on). Only a connection with a request in flight is never evicted.
//!
//! A connection counts as waiting only while a read for its next head would block:
//! one whose bytes are already there (most, with keep-alive under load and with the
//! deferred listener) never touches the registry.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use tokio::sync::Notify;

/// The proxy's client connections.
pub struct Conns {
    max: usize,
    open: AtomicUsize,
    /// Connections waiting for a head, oldest wait first.
    waiting: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next_wait: AtomicU64,
    /// Closed to make room, and refused with no room to make (metrics).
    pub evicted: AtomicU64,
    pub refused: AtomicU64,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    conns: Arc<Conns>,
    /// Woken when the connection is evicted (made once, at its first wait).
    evict: Option<Arc<Notify>>,
}

impl Conns {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Conns {
            max: max.max(1),
            open: AtomicUsize::new(0),
            waiting: Mutex::new(BTreeMap::new()),
            next_wait: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits a new connection, evicting the longest-waiting one at the bound; None
    /// when every connection has a request in flight (refuse it).
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        if self.open.load(Ordering::Relaxed) >= self.max {
            let oldest = self.waiting.lock().ok().and_then(|mut w| w.pop_first());
            match oldest {
                // Its place frees when it has closed; meanwhile one over the bound.
                Some((_, evict)) => {
                    evict.notify_one();
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            conns: self.clone(),
            evict: None,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admitted {
    /// Runs `read` (waiting for the next request head); None if the connection was
    /// evicted meanwhile. Registered as waiting only if the first poll would block.
    pub async fn wait_for_head<F: Future>(&mut self, read: F) -> Option<F::Output> {
        let mut read = std::pin::pin!(read);
        if let Poll::Ready(v) = futures::poll!(read.as_mut()) {
            return Some(v);
        }
        let evict = self.evict.get_or_insert_with(Default::default).clone();
        let ticket = self.conns.next_wait.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut w) = self.conns.waiting.lock() {
            w.insert(ticket, evict.clone());
        }
        let out = tokio::select! {
            v = read => Some(v),
            () = evict.notified() => None,
        };
        // Evicted as the read completed (no longer registered): the eviction counted
        // on this connection closing, so it does.
        let still_mine = self
            .conns
            .waiting
            .lock()
            .is_ok_and(|mut w| w.remove(&ticket).is_some());
        out.filter(|_| still_mine)
    }
}

/// What a connection refused at the bound gets before its close.
pub const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 29\r\nconnection: close\r\n\r\nlb: too many open connections\n";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn at_the_bound_the_longest_waiting_connection_makes_room() {
        let conns = Conns::new(2);
        let mut a = conns.admit().expect("first");
        let mut b = conns.admit().expect("second");
        // a waits first, then b; neither has a head coming.
        let (a_tx, a_rx) = tokio::sync::oneshot::channel::<()>();
        let (b_tx, b_rx) = tokio::sync::oneshot::channel::<()>();
        let a_wait = tokio::spawn(async move {
            let r = a.wait_for_head(a_rx).await;
            drop(a);
            r.is_none()
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b_wait = tokio::spawn(async move { (b.wait_for_head(b_rx).await.is_none(), b) });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let c = conns.admit().expect("room made");
        assert!(a_wait.await.expect("a"), "the oldest wait was evicted");
        assert_eq!(
            (conns.open(), conns.evicted.load(Ordering::Relaxed)),
            (2, 1)
        );
        // b's head arrives: it is no longer waiting, so the next one is refused.
        b_tx.send(()).expect("b's head");
        let (evicted, b) = b_wait.await.expect("b");
        assert!(!evicted);
        assert!(conns.admit().is_none(), "every connection busy: refused");
        assert_eq!(conns.refused.load(Ordering::Relaxed), 1);
        drop((b, c, a_tx));
        assert_eq!(conns.open(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_head_already_there_never_registers() {
        let conns = Conns::new(1);
        let mut a = conns.admit().expect("first");
        assert_eq!(a.wait_for_head(async { 7 }).await, Some(7));
        assert!(a.evict.is_none() && conns.waiting.lock().expect("lock").is_empty());
        assert!(conns.admit().is_none(), "nothing waiting: refused");
    }
}
