//! A DestinationRule's `trafficPolicy` (top level, and per subset with Istio's
//! override: a subset's `loadBalancer` or `outlierDetection` replaces the top level's)
//! into what the proxy applies to a destination (the kernel path picks endpoints at
//! random whatever it says), validated as Istio does.

use std::time::Duration;

use super::Invalid;
use crate::diagnostic::Diagnostic;
use crate::load::{Loaded, istio};
use crate::route::policy::{Balance, ConnPool, DestinationPolicy, HashKey, Outlier};

/// What the kernel path applies of a destination's policy: `connect4` knows the
/// client, not the request, and sees connects, not answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPolicy {
    /// `consistentHash.useSourceIp`: the endpoint follows the client's hash.
    pub hash_source: bool,
    /// Ejects endpoints whose connects fail (refused, reset, given up) in a row.
    pub outlier: Option<Outlier>,
    /// Why only the proxy can follow the policy: a consistent hash on what the
    /// request carries (a header, cookie or query parameter), which `connect4` never
    /// sees.
    pub needs_proxy: Option<String>,
}

impl KernelPolicy {
    /// The kernel's share of `p`, the policy of DestinationRule `rule` (`ns/name`).
    pub fn of(p: &DestinationPolicy, rule: &str) -> Self {
        let needs_proxy = p.hash.as_ref().and_then(|h| {
            let key = match h {
                HashKey::Header(n) => format!("header {n}"),
                HashKey::Cookie(c) => format!("cookie {}", c.name),
                HashKey::Query(q) => format!("query parameter {q}"),
                HashKey::SourceIp => return None,
            };
            Some(format!("DestinationRule {rule} hashes by {key}"))
        });
        KernelPolicy {
            hash_source: p.hash == Some(HashKey::SourceIp),
            outlier: p.outlier.clone(),
            needs_proxy,
        }
    }
}

/// The groups one `trafficPolicy` sets (None: left to the level above).
#[derive(Debug, Clone, Default)]
pub struct Groups {
    /// `loadBalancer`: `simple`, or a `consistentHash` key.
    balance: Option<(Balance, Option<HashKey>)>,
    /// `outlierDetection`: Some(None) when set but invalid.
    outlier: Option<Option<Outlier>>,
    /// `connectionPool`.
    pool: Option<ConnPool>,
    /// `portLevelSettings` by port number.
    ports: std::collections::BTreeMap<u16, Groups>,
}

impl Groups {
    /// These groups at service port `port`: its `portLevelSettings` entry replaces
    /// them all — a group it leaves out is at its default, not inherited (Istio's
    /// `GetPortLevelTrafficPolicy`).
    fn at(&self, port: Option<u16>) -> std::borrow::Cow<'_, Groups> {
        match port.and_then(|p| self.ports.get(&p)) {
            Some(p) => std::borrow::Cow::Owned(Groups {
                balance: Some(p.balance.clone().unwrap_or_default()),
                outlier: Some(p.outlier.clone().flatten()),
                pool: Some(p.pool.unwrap_or_default()),
                ports: Default::default(),
            }),
            None => std::borrow::Cow::Borrowed(self),
        }
    }

    /// Whether any port has its own settings.
    pub fn has_ports(&self) -> bool {
        !self.ports.is_empty()
    }

    /// A subset's groups over the top level's at `port` (Istio's
    /// `MergeSubsetTrafficPolicy`: each level at the port first; then a group the
    /// subset sets replaces the top level's whole, and a subset's port-level entry
    /// replaces them all).
    pub fn over(&self, top: &Groups, port: Option<u16>) -> DestinationPolicy {
        let (own, top) = (self.at(port), top.at(port));
        own.merged(&top)
    }

    fn merged(&self, top: &Groups) -> DestinationPolicy {
        let (balance, hash) = self
            .balance
            .clone()
            .or_else(|| top.balance.clone())
            .unwrap_or_default();
        DestinationPolicy {
            balance,
            hash,
            outlier: self
                .outlier
                .clone()
                .or_else(|| top.outlier.clone())
                .flatten(),
            pool: self.pool.or(top.pool).unwrap_or_default(),
        }
    }
}

/// Reads one `trafficPolicy` at `base` (`spec.trafficPolicy`, or a subset's).
pub fn groups(
    l: &Loaded,
    base: &str,
    tp: &istio::TrafficPolicy,
    diags: &mut Vec<Diagnostic>,
) -> Groups {
    super::warn_unenforced(
        l,
        base,
        &[
            ("tls", tp.tls.is_some()),
            ("tunnel", tp.tunnel.is_some()),
            ("proxyProtocol", tp.proxy_protocol.is_some()),
            ("retryBudget", tp.retry_budget.is_some()),
        ],
        diags,
    );
    if tp
        .connection_pool
        .as_ref()
        .is_some_and(|c| c.tcp.is_none() && c.http.is_none())
    {
        let path = format!("{base}.connectionPool");
        diags.push(Diagnostic::error(
            l.at(&path),
            path,
            Invalid::EmptyConnectionPool,
        ));
    }
    // connect4 draws an endpoint at random (or hashes the source) and sees connects,
    // not answers: say so where the policy asks for more.
    let lb = tp.load_balancer.as_ref();
    let kernel_differs = [
        (
            "loadBalancer.simple",
            lb.and_then(|lb| lb.simple.as_deref())
                .is_some_and(|s| s != "RANDOM"),
        ),
        ("connectionPool", tp.connection_pool.is_some()),
    ];
    for (field, set) in kernel_differs {
        if set {
            let path = format!("{base}.{field}");
            diags.push(Diagnostic::warning(
                l.at(&path),
                path,
                Invalid::Unenforced {
                    field: field.to_string(),
                    consequence: " on the kernel path (weight-only routes pick endpoints at random there; the proxy path applies it)",
                },
            ));
        }
    }
    let mut ports = std::collections::BTreeMap::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let at = format!("{base}.portLevelSettings[{i}]");
        let Some(number) = pl.port.as_ref().and_then(|p| p.number).filter(|n| *n > 0) else {
            diags.push(Diagnostic::error(
                l.at(&at),
                format!("{at}.port"),
                Invalid::PortLevelWithoutPort,
            ));
            continue;
        };
        let Ok(number) = u16::try_from(number) else {
            diags.push(Diagnostic::error(
                l.at(&at),
                format!("{at}.port.number"),
                Invalid::PortLevelWithoutPort,
            ));
            continue;
        };
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            diags.push(Diagnostic::error(l.at(&at), at, Invalid::PortLevelEmpty));
            continue;
        }
        let as_policy = istio::TrafficPolicy {
            load_balancer: pl.load_balancer.clone(),
            connection_pool: pl.connection_pool.clone(),
            outlier_detection: pl.outlier_detection.clone(),
            tls: pl.tls.clone(),
            ..Default::default()
        };
        ports.insert(number, groups(l, &at, &as_policy, diags));
    }
    Groups {
        ports,
        balance: tp
            .load_balancer
            .as_ref()
            .map(|lb| balance(l, &format!("{base}.loadBalancer"), lb, diags)),
        outlier: tp
            .outlier_detection
            .as_ref()
            .map(|od| outlier(l, &format!("{base}.outlierDetection"), od, diags)),
        pool: tp
            .connection_pool
            .as_ref()
            .map(|cp| conn_pool(l, &format!("{base}.connectionPool"), cp, diags)),
    }
}

fn balance(
    l: &Loaded,
    base: &str,
    lb: &istio::LoadBalancerSettings,
    diags: &mut Vec<Diagnostic>,
) -> (Balance, Option<HashKey>) {
    let hash = lb
        .consistent_hash
        .as_ref()
        .and_then(|h| hash_key(l, &format!("{base}.consistentHash"), h, diags));
    (simple(l, base, lb, diags), hash)
}

/// `consistentHash`: one key; the ring's kind and size are read and left to lb's
/// rendezvous hashing, which keeps a key on its endpoint the same way.
fn hash_key(
    l: &Loaded,
    base: &str,
    h: &serde_yaml::Value,
    diags: &mut Vec<Diagnostic>,
) -> Option<HashKey> {
    let mut err = |f: String, problem: Invalid| {
        diags.push(Diagnostic::error(l.at(&f), f, problem));
        None
    };
    let Some(map) = h.as_mapping() else {
        return err(base.to_string(), Invalid::HashKeyCount);
    };
    let mut keys = Vec::new();
    for (k, v) in map {
        let field = k.as_str().unwrap_or("");
        let key = match field {
            "httpHeaderName" => match v
                .as_str()
                .map(|n| http::HeaderName::from_bytes(n.as_bytes()))
            {
                Some(Ok(n)) => Some(HashKey::Header(n)),
                _ => {
                    return err(
                        format!("{base}.{field}"),
                        Invalid::HashHeader(format!("{v:?}")),
                    );
                }
            },
            "httpCookie" => {
                let Some(name) = v
                    .get("name")
                    .and_then(serde_yaml::Value::as_str)
                    .filter(|n| !n.is_empty())
                else {
                    return err(format!("{base}.httpCookie.name"), Invalid::CookieName);
                };
                let ttl = match v.get("ttl").map(|t| t.as_str().unwrap_or("")) {
                    None => None,
                    // 0s: a session cookie (no Max-Age), as Envoy's.
                    Some("0s" | "0") => Some(Duration::ZERO),
                    Some(t) => match super::policy::checked_duration(t) {
                        Ok(d) => Some(d),
                        Err(e) => return err(format!("{base}.httpCookie.ttl"), e),
                    },
                };
                let path = v.get("path").and_then(serde_yaml::Value::as_str);
                Some(HashKey::Cookie(crate::route::policy::Cookie {
                    name: name.to_string(),
                    generate: ttl.map(|t| (t, path.map(str::to_string))),
                }))
            }
            "useSourceIp" => v.as_bool().unwrap_or(false).then_some(HashKey::SourceIp),
            "httpQueryParameterName" => v
                .as_str()
                .filter(|n| !n.is_empty())
                .map(|n| HashKey::Query(n.to_string())),
            "ringHash" | "maglev" | "minimumRingSize" => None,
            other => {
                return err(
                    format!("{base}.{other}"),
                    Invalid::HashField(other.to_string()),
                );
            }
        };
        keys.extend(key);
    }
    if keys.len() != 1 {
        return err(base.to_string(), Invalid::HashKeyCount);
    }
    keys.pop()
}

fn simple(
    l: &Loaded,
    base: &str,
    lb: &istio::LoadBalancerSettings,
    diags: &mut Vec<Diagnostic>,
) -> Balance {
    super::warn_unenforced(
        l,
        base,
        &[
            ("localityLbSetting", lb.locality_lb_setting.is_some()),
            ("warmupDurationSecs", lb.warmup_duration_secs.is_some()),
            ("warmup", lb.warmup.is_some()),
        ],
        diags,
    );
    match lb.simple.as_deref() {
        None | Some("UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN") => Balance::LeastRequest,
        Some("ROUND_ROBIN") => Balance::RoundRobin,
        Some("RANDOM") => Balance::Random,
        Some("PASSTHROUGH") => {
            // The client dialled the service address, not an endpoint: nothing to pass
            // through to.
            super::warn_unenforced_at(l, &format!("{base}.simple"), "PASSTHROUGH", diags);
            Balance::Random
        }
        Some(other) => {
            let path = format!("{base}.simple");
            diags.push(Diagnostic::error(
                l.at(&path),
                path,
                Invalid::UnknownBalance(other.to_string()),
            ));
            Balance::LeastRequest
        }
    }
}

/// `connectionPool`: the connect and idle timeouts, requests per connection and the
/// circuit breakers (`maxConnections`, `http1MaxPendingRequests`, `http2MaxRequests`,
/// `maxRetries`) are enforced; its other fields are warned about.
fn conn_pool(
    l: &Loaded,
    base: &str,
    cp: &istio::ConnectionPoolSettings,
    diags: &mut Vec<Diagnostic>,
) -> ConnPool {
    let mut out = ConnPool::default();
    for (group, v) in [("tcp", &cp.tcp), ("http", &cp.http)] {
        let Some(map) = v.as_ref().and_then(serde_yaml::Value::as_mapping) else {
            continue;
        };
        for (k, v) in map {
            let field = k.as_str().unwrap_or("");
            let path = format!("{base}.{group}.{field}");
            match (group, field) {
                ("tcp", "connectTimeout") | ("http", "idleTimeout") => {
                    match super::policy::checked_duration(v.as_str().unwrap_or("")) {
                        Ok(d) if field == "connectTimeout" => out.connect_timeout = Some(d),
                        Ok(d) => out.idle_timeout = Some(d),
                        Err(e) => diags.push(Diagnostic::error(l.at(&path), path, e)),
                    }
                }
                ("http", "maxRequestsPerConnection")
                | ("tcp", "maxConnections")
                | ("http", "http1MaxPendingRequests" | "http2MaxRequests" | "maxRetries") => {
                    let n = match count(v) {
                        Some(n) if n >= 0 => u32::try_from(n).unwrap_or(u32::MAX),
                        _ => {
                            let problem = Invalid::NegativeCount(field.to_string());
                            diags.push(Diagnostic::error(l.at(&path), path, problem));
                            continue;
                        }
                    };
                    // 0 leaves the default (no limit), as Istio reads these.
                    let n = (n > 0).then_some(n);
                    let limits = &mut out.limits;
                    match field {
                        "maxRequestsPerConnection" => out.max_requests = n,
                        "maxConnections" => limits.connections = n,
                        "http1MaxPendingRequests" => limits.pending = n,
                        "http2MaxRequests" => limits.requests = n,
                        _ => limits.retries = n,
                    }
                }
                _ => super::warn_unenforced_at(l, &path, field, diags),
            }
        }
    }
    out
}

/// A count such as `consecutive5xxErrors` (a number, or `{value: n}` as protobuf's
/// wrapper types are sometimes written).
fn count(v: &serde_yaml::Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.get("value").and_then(serde_yaml::Value::as_i64))
}

/// Reads `outlierDetection` with Istio's defaults; None if a field is invalid.
fn outlier(
    l: &Loaded,
    base: &str,
    od: &istio::OutlierDetection,
    diags: &mut Vec<Diagnostic>,
) -> Option<Outlier> {
    let mut errors = Vec::new();
    let consecutive = |f: &str,
                       v: Option<&serde_yaml::Value>,
                       default: u32,
                       errors: &mut Vec<_>| match v.map(count) {
        None => default,
        Some(Some(n)) if n >= 0 => u32::try_from(n).unwrap_or(u32::MAX),
        Some(_) => {
            errors.push((f.to_string(), Invalid::NegativeConsecutive));
            default
        }
    };
    let duration = |f: &str, v: Option<&str>, default: u64, errors: &mut Vec<_>| {
        let checked = v.map_or(
            Ok(Duration::from_secs(default)),
            super::policy::checked_duration,
        );
        checked.unwrap_or_else(|e| {
            errors.push((f.to_string(), e));
            Duration::from_secs(default)
        })
    };
    let percent = |f: &str, v: Option<i64>, default: u32, errors: &mut Vec<_>| match v {
        None => default,
        Some(n @ 0..=100) => n as u32,
        Some(_) => {
            errors.push((f.to_string(), Invalid::PercentRange(f.to_string())));
            default
        }
    };
    let o = Outlier {
        consecutive_5xx: consecutive(
            "consecutive5xxErrors",
            od.consecutive_5xx_errors.as_ref(),
            5,
            &mut errors,
        ),
        consecutive_gateway: consecutive(
            "consecutiveGatewayErrors",
            od.consecutive_gateway_errors.as_ref(),
            0,
            &mut errors,
        ),
        interval: duration("interval", od.interval.as_deref(), 10, &mut errors),
        base_ejection: duration(
            "baseEjectionTime",
            od.base_ejection_time.as_deref(),
            30,
            &mut errors,
        ),
        max_ejection_percent: percent(
            "maxEjectionPercent",
            od.max_ejection_percent,
            10,
            &mut errors,
        ),
        min_health_percent: percent("minHealthPercent", od.min_health_percent, 0, &mut errors),
    };
    super::warn_unenforced(
        l,
        base,
        &[
            ("consecutiveErrors", od.consecutive_errors.is_some()),
            (
                "consecutiveLocalOriginFailures",
                od.consecutive_local_origin_failures.is_some(),
            ),
            (
                "splitExternalLocalOriginErrors",
                od.split_external_local_origin_errors == Some(true),
            ),
        ],
        diags,
    );
    let ok = errors.is_empty();
    for (f, problem) in errors {
        let path = format!("{base}.{f}");
        diags.push(Diagnostic::error(l.at(&path), path, problem));
    }
    ok.then_some(o)
}
