//! Which endpoint of a destination a request goes to: the DestinationRule's load
//! balancer (Istio's default LEAST_REQUEST, ROUND_ROBIN, RANDOM) over the endpoints
//! outlier detection has not ejected; and what each answer tells outlier detection.
//! Outlier state is per endpoint address and outlives routing tables, so a reload
//! does not forget an ejection; LEAST_REQUEST's counts of requests in flight live in
//! the route destination (per endpoint, as Envoy's per cluster host: read per request
//! by index), so a new table starts them at zero.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::route::policy::{Balance, DestinationPolicy, Ejection, Outlier, Usable, rendezvous};
use crate::route::{Destination, Pick};

/// What the proxy knows of each endpoint.
#[derive(Default)]
pub struct Endpoints {
    states: RwLock<HashMap<SocketAddr, Arc<State>>>,
    /// Ejections so far (`lb_proxy_outlier_ejections_total`).
    pub ejections: prometheus_client::metrics::counter::Counter,
}

#[derive(Default)]
struct State {
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    errors_5xx: u32,
    errors_gateway: u32,
    ejection: Ejection,
}

/// How a try ended, for outlier detection.
#[derive(Debug, Clone, Copy)]
pub enum Answered {
    Status(u16),
    /// No answer: the connect failed, the connection reset or went silent.
    Nothing,
}

/// A request in flight to an endpoint of a destination (LEAST_REQUEST's count),
/// until dropped.
pub struct Active<'t>(&'t AtomicU32);

impl<'t> Active<'t> {
    /// Counts a request to `ep`, one of `endpoints` (whose counts are `counts`, a
    /// destination's at a port); `hint` is where the pick found it (a retry's endpoint
    /// is looked for).
    pub fn begin(
        counts: &'t [AtomicU32],
        endpoints: &[SocketAddr],
        ep: SocketAddr,
        hint: usize,
    ) -> Option<Self> {
        let index = if endpoints.get(hint) == Some(&ep) {
            hint
        } else {
            endpoints.iter().position(|e| *e == ep)?
        };
        let c = counts.get(index)?;
        c.fetch_add(1, Ordering::Relaxed);
        Some(Active(c))
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoints {
    fn get(&self, ep: SocketAddr) -> Option<Arc<State>> {
        self.states.read().ok()?.get(&ep).cloned()
    }

    fn state(&self, ep: SocketAddr) -> Arc<State> {
        if let Some(s) = self.get(ep) {
            return s;
        }
        let mut map = self.states.write().unwrap_or_else(|p| p.into_inner());
        map.entry(ep).or_default().clone()
    }

    fn ejected(&self, ep: SocketAddr, now: Instant) -> bool {
        // Under the read lock, no `Arc` count touched: this runs per request.
        let Ok(states) = self.states.read() else {
            return false;
        };
        states
            .get(&ep)
            .is_some_and(|s| s.health.lock().is_ok_and(|h| h.ejection.ejected(now)))
    }

    /// Notes how a try to `ep`, one of `endpoints` under `o`, ended; ejects `ep` when
    /// its errors in a row reach a threshold and the destination may lose it.
    pub fn report(&self, o: &Outlier, endpoints: &[SocketAddr], ep: SocketAddr, a: Answered) {
        let (is_5xx, is_gateway) = match a {
            Answered::Nothing => (true, true),
            Answered::Status(s) => (s >= 500, matches!(s, 502..=504)),
        };
        let state = self.state(ep);
        let now = Instant::now();
        {
            let mut h = state.health.lock().unwrap_or_else(|p| p.into_inner());
            h.errors_5xx = if is_5xx { h.errors_5xx + 1 } else { 0 };
            h.errors_gateway = if is_gateway { h.errors_gateway + 1 } else { 0 };
            let tripped = (o.consecutive_5xx > 0 && h.errors_5xx >= o.consecutive_5xx)
                || (o.consecutive_gateway > 0 && h.errors_gateway >= o.consecutive_gateway);
            if !tripped || h.ejection.ejected(now) {
                return;
            }
        }
        let ejected = endpoints.iter().filter(|e| self.ejected(**e, now)).count();
        if !o.may_eject(ejected, endpoints.len()) {
            return;
        }
        let mut h = state.health.lock().unwrap_or_else(|p| p.into_inner());
        let length = h.ejection.eject(o, now);
        (h.errors_5xx, h.errors_gateway) = (0, 0);
        self.ejections.inc();
        tracing::info!("outlier detection: {ep} ejected for {length:?} ({a:?})");
    }
}

/// The proxy's choice: a destination by weight, then an endpoint by the destination's
/// policy.
pub struct Live<'a>(pub &'a Endpoints);

impl Pick for Live<'_> {
    fn destination<'d>(&mut self, dests: &'d [Destination]) -> Option<&'d Destination> {
        crate::route::pick_weighted(dests)
    }

    fn endpoint(
        &mut self,
        dest: &Destination,
        policy: &DestinationPolicy,
        endpoints: &[SocketAddr],
        in_flight: &[AtomicU32],
        key: Option<u64>,
    ) -> Option<usize> {
        let n = endpoints.len();
        let among = |count, at: &dyn Fn(usize) -> usize| among(dest, policy, in_flight, count, at);
        // The common case pays nothing: one endpoint, no outlier detection.
        let Some(o) = &policy.outlier else {
            if let Some(k) = key {
                return rendezvous(k, endpoints.iter().copied().enumerate());
            }
            return (n > 0).then(|| among(n, &|i| i));
        };
        let now = Instant::now();
        let healthy: Vec<usize> = (0..n)
            .filter(|&i| !self.0.ejected(endpoints[i], now))
            .collect();
        match o.usable(healthy.len(), n) {
            Usable::Healthy => {}
            Usable::All => return Some(among(n, &|i| i)),
            Usable::None => return None,
        }
        if let Some(k) = key {
            return rendezvous(k, healthy.iter().map(|&i| (i, endpoints[i])));
        }
        Some(among(healthy.len(), &|i| healthy[i]))
    }

    fn fires(&mut self, percent: f64) -> bool {
        crate::route::decide::Random.fires(percent)
    }
}

/// One of `count` candidates (`at` maps a candidate to its endpoint index), by the
/// destination's balancer (`in_flight`: its endpoints' counts).
fn among(
    dest: &Destination,
    policy: &DestinationPolicy,
    in_flight: &[AtomicU32],
    count: usize,
    at: &dyn Fn(usize) -> usize,
) -> usize {
    if count == 1 {
        return at(0);
    }
    match policy.balance {
        Balance::Random => at(fastrand::usize(..count)),
        Balance::RoundRobin => at(dest.next.fetch_add(1, Ordering::Relaxed) % count),
        Balance::LeastRequest => {
            // Two distinct candidates from one draw (a thread-local RNG access each
            // showed in the instruction count).
            let r = fastrand::u64(..);
            let a = (r as usize) % count;
            let b = (a + 1 + ((r >> 32) as usize) % (count - 1)) % count;
            let (a, b) = (at(a), at(b));
            let load = |i: usize| in_flight.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
            if load(b) < load(a) { b } else { a }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outlier(n: u32) -> Outlier {
        Outlier {
            consecutive_5xx: n,
            consecutive_gateway: 0,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_millis(100),
            max_ejection_percent: 50,
            min_health_percent: 0,
        }
    }

    #[test]
    fn errors_in_a_row_eject_for_base_times_ejections_and_a_success_resets_the_count() {
        let e = Endpoints::default();
        let eps: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.2:1"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        let o = outlier(3);
        for a in [
            Answered::Status(503),
            Answered::Nothing,
            Answered::Status(200),
        ] {
            e.report(&o, &eps, eps[0], a);
        }
        assert!(!e.ejected(eps[0], Instant::now()), "the 200 broke the run");
        for _ in 0..3 {
            e.report(&o, &eps, eps[0], Answered::Status(500));
        }
        assert!(e.ejected(eps[0], Instant::now()));
        assert_eq!(e.ejections.get(), 1);
        // 50 % of two: the second cannot be ejected while the first is.
        for _ in 0..3 {
            e.report(&o, &eps, eps[1], Answered::Nothing);
        }
        assert!(!e.ejected(eps[1], Instant::now()));
        std::thread::sleep(Duration::from_millis(120));
        assert!(
            !e.ejected(eps[0], Instant::now()),
            "back after the ejection time"
        );
        for _ in 0..3 {
            e.report(&o, &eps, eps[0], Answered::Status(502));
        }
        let until = e
            .get(eps[0])
            .and_then(|s| s.health.lock().ok()?.ejection.until());
        let left = until
            .expect("ejected")
            .saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_millis(150),
            "twice the base the second time: {left:?}"
        );
    }

    #[test]
    fn least_request_prefers_the_idler_endpoint() {
        let e = Endpoints::default();
        let eps: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.2:1"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        let endpoints = [(1, eps.clone().into())].into_iter().collect();
        let dest = Destination::new("h".into(), None, "h".into(), endpoints);
        let counts = dest.in_flight_at(Some(1));
        let _busy = [0, 0].map(|i| Active::begin(counts, &eps, eps[0], i));
        let mut live = Live(&e);
        for _ in 0..50 {
            assert_eq!(
                live.endpoint(&dest, &dest.policy, &eps, counts, None),
                Some(1)
            );
        }
    }
}
