//! Outlier detection on the kernel path. `sock_ops` counts, per endpoint of a
//! kernel-path service whose DestinationRule sets `outlierDetection`, the connects
//! that failed in a row (refused, reset, given up before established) in `LB_HEALTH`;
//! the daemon reads it every [`KernelOutliers::period`], ejects an endpoint whose run
//! reaches the threshold (with the proxy's rules: `maxEjectionPercent`,
//! `minHealthPercent`, base time × ejections), and the applier rewrites only that
//! service without it, until the ejection ends (a new plan too is applied without the
//! endpoints ejected). Pure: the reads come in, the images to apply go out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_common::{Health, HealthKey, SockAddr4};

use crate::compile::{MapImage, Outliers, ServiceImage};
use crate::route::policy::{Ejection, Outlier, Usable};

/// The daemon reads `LB_HEALTH` at the smallest `interval` configured, within these.
const FASTEST: Duration = Duration::from_millis(20);
const SLOWEST: Duration = Duration::from_secs(1);

/// The kernel path's outlier detection state: kept across reloads, so a new plan
/// neither forgets an ejection nor brings an ejected endpoint back early.
#[derive(Default)]
pub struct KernelOutliers {
    /// Services with outlier detection: the compiled image and each subset's policy.
    watched: BTreeMap<SockAddr4, Watched>,
    ejections: HashMap<HealthKey, Ejection>,
}

struct Watched {
    compiled: ServiceImage,
    /// By subset id.
    outliers: BTreeMap<u32, Outlier>,
    /// What the maps hold: `compiled` without the endpoints ejected.
    live: Arc<ServiceImage>,
}

/// What one read of `LB_HEALTH` asks for.
#[derive(Debug, Default)]
pub struct Observed {
    /// Endpoints just ejected: their runs of failures start again from zero.
    pub reset: Vec<HealthKey>,
    /// Services whose endpoints changed, as they must be now.
    pub changed: MapImage,
}

/// The services of a plan being applied that have outlier detection.
pub struct Watching(BTreeMap<SockAddr4, Watched>);

impl Watching {
    /// What the maps must hold for `key`, if outlier detection changes it.
    pub fn live(&self, key: &SockAddr4) -> Option<&Arc<ServiceImage>> {
        self.0.get(key).map(|w| &w.live)
    }

    /// The services watched.
    pub fn keys(&self) -> impl Iterator<Item = &SockAddr4> {
        self.0.keys()
    }
}

impl KernelOutliers {
    /// A new plan's services with outlier detection, each without the endpoints
    /// ejected now; [`adopt`](Self::adopt) it once the plan is applied.
    pub fn plan(&self, image: &MapImage, outliers: &Outliers, now: Instant) -> Watching {
        let mut watching = BTreeMap::new();
        for (key, subsets) in outliers {
            let Some(svc) = image.services.get(key) else {
                continue;
            };
            watching.insert(
                *key,
                Watched {
                    compiled: (**svc).clone(),
                    live: Arc::new(self.filter(*key, svc, subsets, now)),
                    outliers: subsets.clone(),
                },
            );
        }
        Watching(watching)
    }

    /// The applied plan's services; the ejections of endpoints it no longer has end
    /// (one coming back is a new endpoint).
    pub fn adopt(&mut self, watching: Watching) {
        self.watched = watching.0;
        let watched = &self.watched;
        self.ejections.retain(|k, _| {
            watched.get(&k.service).is_some_and(|w| {
                w.compiled
                    .subsets
                    .iter()
                    .any(|s| s.endpoints.contains(&k.endpoint))
            })
        });
    }

    /// How often to read `LB_HEALTH` (None: no service asks for outlier detection).
    pub fn period(&self) -> Option<Duration> {
        self.watched
            .values()
            .flat_map(|w| w.outliers.values())
            .map(|o| o.interval)
            .min()
            .map(|i| i.clamp(FASTEST, SLOWEST))
    }

    /// Ejects the endpoints whose failed connects in a row (`health`, as read) reach
    /// their threshold, and returns the services whose endpoints changed since the
    /// last call, ejections ended included.
    pub fn observe(&mut self, health: &[(HealthKey, Health)], now: Instant) -> Observed {
        let mut out = Observed::default();
        for (key, h) in health {
            let Some(w) = self.watched.get(&key.service) else {
                continue;
            };
            // The first subset that holds the endpoint says how it is judged.
            let Some((sub, o)) = w.compiled.subsets.iter().find_map(|s| {
                let o = w.outliers.get(&s.id)?;
                s.endpoints.contains(&key.endpoint).then_some((s, o))
            }) else {
                continue;
            };
            let Some(threshold) = o.failures_to_eject() else {
                continue;
            };
            if h.failed_in_a_row < threshold
                || self.ejections.get(key).is_some_and(|e| e.ejected(now))
            {
                continue;
            }
            let ejected = sub
                .endpoints
                .iter()
                .filter(|ep| self.is_ejected(key.service, **ep, now))
                .count();
            if !o.may_eject(ejected, sub.endpoints.len()) {
                continue;
            }
            let length = self.ejections.entry(*key).or_default().eject(o, now);
            tracing::info!(
                service = %crate::datapath::plan_maps::addr(&key.service),
                endpoint = %crate::datapath::plan_maps::addr(&key.endpoint),
                failed_connects_in_a_row = h.failed_in_a_row,
                "kernel outlier detection: endpoint ejected for {length:?}"
            );
            out.reset.push(*key);
        }
        let keys: Vec<SockAddr4> = self.watched.keys().copied().collect();
        for key in keys {
            let w = &self.watched[&key];
            let live = self.filter(key, &w.compiled, &w.outliers, now);
            let w = self.watched.get_mut(&key).expect("listed above");
            if live != *w.live {
                w.live = Arc::new(live);
                out.changed.services.insert(key, w.live.clone());
            }
        }
        out
    }

    fn is_ejected(&self, service: SockAddr4, endpoint: SockAddr4, now: Instant) -> bool {
        self.ejections
            .get(&HealthKey { service, endpoint })
            .is_some_and(|e| e.ejected(now))
    }

    /// `svc` with the endpoints ejected at `now` left out of the subsets that have
    /// outlier detection (all kept below `minHealthPercent`).
    fn filter(
        &self,
        key: SockAddr4,
        svc: &ServiceImage,
        outliers: &BTreeMap<u32, Outlier>,
        now: Instant,
    ) -> ServiceImage {
        let mut out = svc.clone();
        for sub in &mut out.subsets {
            let Some(o) = outliers.get(&sub.id) else {
                continue;
            };
            let total = sub.endpoints.len();
            let healthy: Vec<SockAddr4> = sub
                .endpoints
                .iter()
                .copied()
                .filter(|ep| !self.is_ejected(key, *ep, now))
                .collect();
            match o.usable(healthy.len(), total) {
                Usable::Healthy => sub.endpoints = healthy,
                Usable::All => {}
                Usable::None => sub.endpoints.clear(),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::SubsetImage;

    fn addr(last: u8, port: u16) -> SockAddr4 {
        SockAddr4::new([127, 0, 0, last], port)
    }

    fn outlier(percent: u32) -> Outlier {
        Outlier {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            interval: Duration::from_millis(50),
            base_ejection: Duration::from_millis(100),
            max_ejection_percent: percent,
            min_health_percent: 0,
        }
    }

    fn image(endpoints: &[SockAddr4]) -> (MapImage, Outliers, SockAddr4) {
        let service = addr(100, 80);
        let mut image = MapImage::default();
        image.services.insert(
            service,
            std::sync::Arc::new(ServiceImage {
                name: "s".into(),
                namespace: "default".into(),
                mode: lb_common::mode::KERNEL,
                reason: 0,
                weight_scale: 1,
                flags: lb_common::service_flags::TRACK_HEALTH,
                slots: vec![7],
                subsets: vec![SubsetImage {
                    id: 7,
                    name: "v0".into(),
                    endpoints: endpoints.to_vec(),
                    flags: 0,
                    table: 0,
                }],
            }),
        );
        let outliers = Outliers::from([(service, BTreeMap::from([(7, outlier(50))]))]);
        (image, outliers, service)
    }

    fn failing(service: SockAddr4, endpoint: SockAddr4, in_a_row: u32) -> (HealthKey, Health) {
        (
            HealthKey { service, endpoint },
            Health {
                failed_in_a_row: in_a_row,
                failed: in_a_row,
                ..Default::default()
            },
        )
    }

    fn live(changed: &MapImage, service: SockAddr4) -> Vec<SockAddr4> {
        changed.services[&service].subsets[0].endpoints.clone()
    }

    #[test]
    fn a_run_of_failed_connects_ejects_for_the_ejection_time_then_brings_back() {
        let eps = [addr(1, 80), addr(2, 80)];
        let (img, outliers, svc) = image(&eps);
        let mut k = KernelOutliers::default();
        let t0 = Instant::now();
        k.adopt(k.plan(&img, &outliers, t0));
        assert_eq!(k.period(), Some(Duration::from_millis(50)));
        let o = k.observe(&[failing(svc, eps[0], 2)], t0);
        assert!(
            o.reset.is_empty() && o.changed.services.is_empty(),
            "below 3"
        );
        let o = k.observe(&[failing(svc, eps[0], 3)], t0);
        assert_eq!(
            o.reset,
            vec![HealthKey {
                service: svc,
                endpoint: eps[0]
            }]
        );
        assert_eq!(live(&o.changed, svc), vec![eps[1]]);
        // 50 % of two: the second may not go while the first is out.
        let o = k.observe(&[failing(svc, eps[1], 9)], t0 + Duration::from_millis(10));
        assert!(o.reset.is_empty() && o.changed.services.is_empty());
        // A reload meanwhile keeps the ejection.
        let (again, _, _) = image(&eps);
        let w = k.plan(&again, &outliers, t0 + Duration::from_millis(20));
        assert_eq!(
            w.live(&svc).expect("watched").subsets[0].endpoints,
            vec![eps[1]]
        );
        k.adopt(w);
        // Back after the base ejection time.
        let o = k.observe(&[], t0 + Duration::from_millis(101));
        assert_eq!(live(&o.changed, svc), eps.to_vec());
        // Ejected again at once: twice as long.
        let t1 = t0 + Duration::from_millis(110);
        let o = k.observe(&[failing(svc, eps[0], 3)], t1);
        assert_eq!(live(&o.changed, svc), vec![eps[1]]);
        let o = k.observe(&[], t1 + Duration::from_millis(150));
        assert!(o.changed.services.is_empty(), "still out at 150 ms of 200");
        let o = k.observe(&[], t1 + Duration::from_millis(201));
        assert_eq!(live(&o.changed, svc), eps.to_vec());
    }

    #[test]
    fn every_endpoint_out_empties_the_subset_unless_a_panic_threshold_keeps_all() {
        let eps = [addr(1, 80)];
        let (img, mut outliers, svc) = image(&eps);
        outliers.get_mut(&svc).expect("svc").insert(7, outlier(100));
        let mut k = KernelOutliers::default();
        let t0 = Instant::now();
        k.adopt(k.plan(&img, &outliers, t0));
        let o = k.observe(&[failing(svc, eps[0], 3)], t0);
        assert!(
            live(&o.changed, svc).is_empty(),
            "connects refused, as Istio's 503 UH"
        );
        let mut panic = outlier(100);
        panic.min_health_percent = 50;
        outliers.get_mut(&svc).expect("svc").insert(7, panic);
        let w = k.plan(&img, &outliers, t0);
        assert_eq!(
            w.live(&svc).expect("watched").subsets[0].endpoints,
            eps.to_vec()
        );
    }

    #[test]
    fn services_without_outlier_detection_are_never_read_nor_touched() {
        let eps = [addr(1, 80)];
        let (img, _, svc) = image(&eps);
        let mut k = KernelOutliers::default();
        let w = k.plan(&img, &Outliers::new(), Instant::now());
        assert!(w.live(&svc).is_none());
        k.adopt(w);
        assert_eq!(k.period(), None);
        let o = k.observe(&[failing(svc, eps[0], 100)], Instant::now());
        assert!(o.reset.is_empty() && o.changed.services.is_empty());
    }
}
