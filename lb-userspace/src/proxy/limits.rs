//! A destination's `connectionPool` bounds (Envoy's circuit breakers): requests in
//! flight, connections in use (one request each on HTTP/1.1) with a bounded wait for
//! one, retries in progress. Past a bound the request gets 503 `UO` without reaching
//! a backend (a retry past `maxRetries` is not tried). The counts are per destination
//! (host, subset and its bounds), kept in the pool so a reload does not reset them
//! while the requests it counts are in flight. A destination without bounds pays
//! nothing.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::route::Destination;
use crate::route::policy::{DestinationPolicy, Limits};

/// Why a request was not admitted (its answer: 503 `UO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    #[error("http2MaxRequests requests in flight to the destination")]
    Requests,
    #[error("every connection in use and http1MaxPendingRequests waiting")]
    Pending,
}

/// Every destination's counts, by destination.
#[derive(Default)]
pub struct Breakers {
    by_destination: Mutex<HashMap<u64, Arc<Breaker>>>,
}

/// One destination's counts.
pub struct Breaker {
    limits: Limits,
    requests: AtomicU32,
    waiting: AtomicU32,
    retries: AtomicU32,
    /// `maxConnections` permits: a request holds one while it uses a connection.
    connections: Option<Arc<Semaphore>>,
}

/// A request admitted to a destination, counted until dropped.
pub struct Admitted {
    breaker: Arc<Breaker>,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.breaker.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry in progress, counted against `maxRetries` until dropped.
pub struct Retrying(Arc<Breaker>);

impl Drop for Retrying {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes one of `count` if fewer than `limit` are taken.
fn take(count: &AtomicU32, limit: Option<u32>) -> bool {
    let limit = limit.unwrap_or(u32::MAX);
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl Breakers {
    /// Admits a request to `d`: None when it has no bounds (nothing counted), else
    /// its admission — after waiting for a connection if all are in use and fewer
    /// than `http1MaxPendingRequests` wait.
    pub async fn admit(
        &self,
        d: &Destination,
        policy: &DestinationPolicy,
    ) -> Result<Option<Admitted>, Overflow> {
        let limits = policy.pool.limits;
        if !limits.any() {
            return Ok(None);
        }
        let breaker = self.breaker(d, limits);
        if !take(&breaker.requests, limits.requests) {
            return Err(Overflow::Requests);
        }
        // Counted from here: dropped on any way out.
        let mut admitted = Admitted {
            breaker: breaker.clone(),
            _connection: None,
        };
        if let Some(connections) = &breaker.connections {
            admitted._connection = match connections.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if !take(&breaker.waiting, limits.pending) {
                        return Err(Overflow::Pending);
                    }
                    let permit = connections.clone().acquire_owned().await;
                    breaker.waiting.fetch_sub(1, Ordering::Relaxed);
                    // The semaphore is never closed.
                    permit.ok()
                }
            };
        }
        Ok(Some(admitted))
    }

    fn breaker(&self, d: &Destination, limits: Limits) -> Arc<Breaker> {
        let key = foldhash::fast::FixedState::default().hash_one((&d.host, &d.subset, limits));
        let mut map = self
            .by_destination
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                Arc::new(Breaker {
                    limits,
                    requests: AtomicU32::new(0),
                    waiting: AtomicU32::new(0),
                    retries: AtomicU32::new(0),
                    connections: limits
                        .connections
                        .map(|n| Arc::new(Semaphore::new(n as usize))),
                })
            })
            .clone()
    }
}

impl Admitted {
    /// A retry, if fewer than `maxRetries` are in progress for the destination.
    pub fn retry(&self) -> Option<Retrying> {
        let b = &self.breaker;
        take(&b.retries, b.limits.retries).then(|| Retrying(b.clone()))
    }
}

/// Whether a retry may go (no bounds: always), and its count while it runs.
pub fn may_retry(admitted: &Option<Admitted>) -> Option<Option<Retrying>> {
    match admitted {
        None => Some(None),
        Some(a) => a.retry().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(limits: Limits) -> Destination {
        let mut d = Destination::new(
            "h".into(),
            Some("v0".into()),
            "v0".into(),
            Default::default(),
        );
        std::sync::Arc::make_mut(&mut d.policy).pool.limits = limits;
        d
    }

    #[tokio::test]
    async fn requests_past_the_bounds_overflow_and_a_freed_connection_takes_a_waiter() {
        let limits = Limits {
            connections: Some(1),
            pending: Some(1),
            requests: Some(3),
            retries: Some(1),
        };
        let b = Arc::new(Breakers::default());
        let d = destination(limits);
        let first = b
            .admit(&d, &d.policy)
            .await
            .expect("admitted")
            .expect("counted");
        // The second waits for the first's connection; the third finds the wait full.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move {
                let d = destination(limits);
                b.admit(&d, &d.policy).await.map(|a| a.is_some())
            }
        });
        let breaker = b.breaker(&d, limits);
        while breaker.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.admit(&d, &d.policy).await.err(), Some(Overflow::Pending));
        let retry = first.retry().expect("one retry");
        assert!(first.retry().is_none(), "maxRetries 1");
        drop(retry);
        assert!(first.retry().is_some());
        drop(first);
        assert_eq!(
            waiter.await.expect("task"),
            Ok(true),
            "took the freed connection"
        );
        // Without bounds nothing is counted.
        let free = destination(Limits::default());
        assert!(b.admit(&free, &free.policy).await.expect("ok").is_none());
    }

    #[tokio::test]
    async fn http2_max_requests_bounds_requests_in_flight() {
        let b = Breakers::default();
        let d = destination(Limits {
            requests: Some(2),
            ..Limits::default()
        });
        let a = b.admit(&d, &d.policy).await.expect("1");
        let c = b.admit(&d, &d.policy).await.expect("2");
        assert_eq!(b.admit(&d, &d.policy).await.err(), Some(Overflow::Requests));
        drop(a);
        assert!(
            b.admit(&d, &d.policy).await.is_ok(),
            "one finished, one more in"
        );
        drop(c);
    }
}
