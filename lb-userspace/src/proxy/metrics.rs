//! Prometheus metrics of the proxy: requests per service, subset and response code.

use crate::fasthash::HashMap;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::datapath::OrigDst;
use crate::route::{Destination, RouteTable};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub subset: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    pub engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: String,
}

/// (dialled service, destination address in the table, response code).
type CounterKey = (Option<SocketAddrV4>, usize, u16);

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    /// Requests answered by the lean HTTP/1.1 path and by hyper: how much traffic takes
    /// the fast path (HTTP/1.0 clients, upgrades, h2c and local answers go to hyper).
    pub lean: Counter,
    pub hyper: Counter,
    /// Requests sent again by the rules' retry policies (Envoy's `upstream_rq_retry`).
    pub retries: Counter,
    /// Copies sent by `mirror` rules, and copies dropped (too many in flight, or a
    /// request body lb did not keep).
    pub mirrored: Counter,
    pub mirror_dropped: Counter,
    /// Accepted connections by where their original destination was found, in the
    /// order of [`OrigDst::SOURCES`] (created up front: no label hashing per accept).
    orig_dst: [Counter; 3],
    /// Accepted connections: [main listener, deferred listener].
    accepted: [Counter; 2],
    /// Requests the front end refused, by reason (rare: labels built per refusal).
    refused: Family<RefusalLabels, Counter>,
    /// Counters by (routing table, dialled service, destination, code), so a request
    /// bumps an atomic instead of building and hashing label strings. Keys use the
    /// addresses of the table's entries; the cache is emptied when the table changes.
    cache: Mutex<(usize, HashMap<CounterKey, Counter>)>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lb");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests handled by the proxy, by service, subset and response code",
            requests.clone(),
        );
        let engines = Family::<EngineLabels, Counter>::default();
        registry.register(
            "proxy_engine_requests",
            "Requests answered by each of the proxy's engines (lean HTTP/1.1 path, hyper)",
            engines.clone(),
        );
        let orig_dst = Family::<SourceLabels, Counter>::default();
        registry.register(
            "proxy_original_destinations",
            "Accepted connections by where the service they dialled was found (port_slot: shared memory; hash: a syscall, the port's slot held by another client address; none: not handed over by connect4)",
            orig_dst.clone(),
        );
        let orig_dst =
            OrigDst::SOURCES.map(|source| orig_dst.get_or_create(&SourceLabels { source }).clone());
        let listeners = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "proxy_accepted",
            "Connections accepted by the proxy, by listener (main: clients that join the sk_msg socket map, or dialling the proxy itself; deferred: the others, accepted once their request has arrived)",
            listeners.clone(),
        );
        let accepted = ["main", "deferred"].map(|listener| {
            listeners
                .get_or_create(&ListenerLabels { listener })
                .clone()
        });
        let refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "proxy_refused",
            "Requests lb refused before routing (malformed or ambiguous framing, Host, target, limits, loops), by reason; none reached a backend",
            refused.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "proxy_upstream_retries",
            "Requests sent again to an upstream by a rule's retry policy (Istio's default: 2 retries on connect failures and 503s)",
            retries.clone(),
        );
        let mirrored = Counter::default();
        registry.register(
            "proxy_mirrored",
            "Copies of requests sent to mirror destinations (answers thrown away)",
            mirrored.clone(),
        );
        let mirror_dropped = Counter::default();
        registry.register(
            "proxy_mirror_dropped",
            "Copies of requests not sent: 1,024 in flight already, or a body lb did not keep (over 64 KiB, or on hyper's path)",
            mirror_dropped.clone(),
        );
        let engine = |name: &str| {
            engines
                .get_or_create(&EngineLabels {
                    engine: name.into(),
                })
                .clone()
        };
        Self {
            registry,
            requests,
            lean: engine("lean"),
            hyper: engine("hyper"),
            retries,
            mirrored,
            mirror_dropped,
            orig_dst,
            accepted,
            refused,
            cache: Mutex::new((0, HashMap::default())),
        }
    }
}

impl Metrics {
    /// The proxy's metrics, with those `pool` keeps (outlier ejections).
    pub fn with(pool: &super::pool::Pool) -> Self {
        let mut m = Metrics::default();
        m.registry.register(
            "proxy_outlier_ejections",
            "Endpoints ejected by DestinationRules' outlier detection",
            pool.endpoints.ejections.clone(),
        );
        m
    }

    /// Counts an accepted connection.
    pub fn accepted(&self, deferred: bool) {
        self.accepted[usize::from(deferred)].inc();
    }

    /// Counts an accepted connection's original-destination lookup.
    pub fn original_destination(&self, found: OrigDst) {
        self.orig_dst[found.index()].inc();
    }

    /// Counts a request the front end refused.
    pub fn refused(&self, r: crate::proxy::h1::Refusal) {
        self.refused
            .get_or_create(&RefusalLabels {
                reason: format!("{r:?}"),
            })
            .inc();
    }

    /// Counts one request.
    pub fn count(
        &self,
        table: &Arc<RouteTable>,
        dialled: Option<SocketAddrV4>,
        dest: Option<&Destination>,
        code: u16,
    ) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let table_id = Arc::as_ptr(table) as usize;
        if cache.0 != table_id {
            *cache = (table_id, HashMap::default());
        }
        let key = (
            dialled,
            dest.map_or(0, |d| d as *const Destination as usize),
            code,
        );
        let counter = cache.1.entry(key).or_insert_with(|| {
            let service = dialled
                .and_then(|d| table.services.get(&d).map(|s| s.to_string()))
                .unwrap_or_else(|| "-".into());
            let subset = dest.map_or_else(|| "-".to_string(), |d| d.label.clone());
            self.requests
                .get_or_create(&RequestLabels {
                    service,
                    subset,
                    code,
                })
                .clone()
        });
        counter.inc();
    }

    /// OpenMetrics text, with counters kept outside the registry (the kernel's, read
    /// from the maps; the connection bounds') and gauges (name, help, labels, value)
    /// added.
    pub fn render(
        &self,
        counters: &[(&str, &str, u64)],
        gauges: &[(&str, &str, String, u64)],
    ) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        let body = out.strip_suffix("# EOF\n").unwrap_or(&out).to_string();
        let mut body = body;
        for (name, help, v) in counters {
            body.push_str(&format!(
                "# HELP lb_{name} {help}\n# TYPE lb_{name} counter\nlb_{name}_total {v}\n"
            ));
        }
        let mut last = "";
        for (name, help, labels, v) in gauges {
            if *name != last {
                body.push_str(&format!(
                    "# HELP lb_{name} {help}\n# TYPE lb_{name} gauge\n"
                ));
                last = name;
            }
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            body.push_str(&format!("lb_{name}{labels} {v}\n"));
        }
        body.push_str("# EOF\n");
        body
    }
}
