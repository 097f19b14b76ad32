//! VirtualService routes: which rule the kernel enforces for a service, and its weighted
//! destinations resolved to subsets and endpoints.

use std::net::SocketAddrV4;

use super::Invalid;
use crate::diagnostic::Diagnostic;
use crate::load::{Loaded, istio};

use super::Catalog;
use super::catalog::CatalogService;
use super::subsets::SubsetRules;
use crate::hosts;

/// One weighted destination of a rule, as written.
#[derive(Debug, Clone)]
pub struct WeightedDestination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
    /// Relative weight (Istio semantics: a single destination gets everything).
    pub weight: u32,
    /// Field path of the destination, for messages.
    pub path: String,
}

/// A resolved share of a service's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedSubset {
    /// Subset name (`v0`), `host/subset` for another host, `(all)` for no subset.
    pub name: String,
    pub weight: u32,
    pub endpoints: Vec<SocketAddrV4>,
    /// What the kernel path applies of the destination's DestinationRule.
    pub kernel: super::traffic::KernelPolicy,
}

/// A VirtualService's kernel-enforceable route: the weighted destinations of its
/// catch-all rule.
#[derive(Debug, Clone)]
pub struct KernelRoute {
    /// `ns/name` of the VirtualService.
    pub source: String,
    pub namespace: String,
    pub destinations: Vec<WeightedDestination>,
    /// Index of the resource in the loaded list.
    pub resource: usize,
}

/// Reads the weighted destinations of one route list, checking Istio's weight rules.
fn destinations<'a>(
    l: &Loaded,
    base: &str,
    items: impl Iterator<Item = (Option<&'a istio::Destination>, Option<i64>)>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<WeightedDestination>> {
    let items: Vec<_> = items.collect();
    let mut out = Vec::new();
    let mut ok = true;
    for (i, (dest, weight)) in items.iter().enumerate() {
        let path = format!("{base}[{i}]");
        let Some(dest) = dest else {
            diags.push(Diagnostic::error(
                l.at(&path),
                format!("{path}.destination"),
                Invalid::NoDestination,
            ));
            ok = false;
            continue;
        };
        let Some(host) = dest.host.as_deref().filter(|h| !h.is_empty()) else {
            diags.push(Diagnostic::error(
                l.at(&path),
                format!("{path}.destination.host"),
                Invalid::NoDestinationHost,
            ));
            ok = false;
            continue;
        };
        let w = weight.unwrap_or(0);
        if w < 0 {
            diags.push(Diagnostic::error(
                l.at(&format!("{path}.weight")),
                format!("{path}.weight"),
                Invalid::NegativeWeight(w),
            ));
            ok = false;
        }
        let port = match dest.port.as_ref().and_then(|p| p.number) {
            Some(n) => match u16::try_from(n).ok().filter(|p| *p != 0) {
                Some(p) => Some(p),
                None => {
                    let p = format!("{path}.destination.port.number");
                    diags.push(Diagnostic::error(l.at(&p), p, Invalid::PortRange(n)));
                    ok = false;
                    None
                }
            },
            None => None,
        };
        out.push(WeightedDestination {
            host: hosts::canonical(host, &l.namespace),
            subset: dest.subset.clone().filter(|s| !s.is_empty()),
            port,
            weight: u32::try_from(w.max(0)).unwrap_or(u32::MAX),
            path,
        });
    }
    if out.len() == 1 {
        // A single destination gets everything, whatever its weight says.
        out[0].weight = 1;
    } else if ok && !out.is_empty() && out.iter().all(|d| d.weight == 0) {
        diags.push(Diagnostic::error(l.at(base), base, Invalid::ZeroWeights));
        ok = false;
    }
    ok.then_some(out)
}

/// `super::warn_unenforced_at`, in this file's argument order.
fn warn_unenforced(l: &Loaded, path: &str, diags: &mut Vec<Diagnostic>, what: &str) {
    super::warn_unenforced_at(l, path, what, diags);
}

/// The annotation that forces the proxy path for a weight-only VirtualService (per
/// request weights for keep-alive clients).
pub const DATAPATH_ANNOTATION: &str = "lb.dev/datapath";

/// lb's sticky subsets: the annotation names the request key (`cookie:<name>`,
/// `header:<name>`, `query:<name>`, `source-ip`) that picks the destination by weight,
/// so a user stays in A or B for a whole test (Istio draws per request).
pub const STICKY_ANNOTATION: &str = "lb.dev/sticky-subsets";

/// Why a VirtualService's services take the proxy path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyReason {
    /// `lb.dev/datapath: proxy`: per-request weights for keep-alive clients.
    Annotation,
    /// A rule looks inside or changes requests (`spec.http[0] has match`).
    Rule(String),
    /// Another VirtualService's host that names no service (`bar.com`,
    /// `*.example.com`) routes here: clients reach that name by dialling this
    /// service's address, and only the Host tells the two apart.
    HostRouted {
        virtual_service: String,
        host: String,
    },
    /// A destination's consistent hash reads the request (`DestinationRule ns/name
    /// hashes by cookie user`).
    Hashed(String),
}

impl std::fmt::Display for ProxyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyReason::Annotation => write!(
                f,
                "annotation {DATAPATH_ANNOTATION}: proxy (per-request weights)"
            ),
            ProxyReason::Rule(why) => f.write_str(why),
            ProxyReason::HostRouted {
                virtual_service,
                host,
            } => write!(
                f,
                "VirtualService {virtual_service} routes Host {host} here (the Host picks the rules)"
            ),
            ProxyReason::Hashed(why) => write!(f, "{why} (only the proxy reads requests)"),
        }
    }
}

/// One HTTP rule, validated, destinations not yet resolved to endpoints.
#[derive(Debug)]
pub struct ParsedRule {
    pub name: Option<String>,
    pub matches: Vec<crate::route::MatchBlock>,
    pub action: super::http::ParsedAction,
    pub destinations: Vec<WeightedDestination>,
    pub request_headers: crate::route::HeaderOps,
    pub response_headers: crate::route::HeaderOps,
    /// `mirror` / `mirrors`, resolved, with the share of requests copied.
    pub mirrors: Vec<(WeightedDestination, f64)>,
    /// A destination's own header edits (request, response), by its field path.
    pub dest_headers:
        std::collections::BTreeMap<String, (crate::route::HeaderOps, crate::route::HeaderOps)>,
    pub policy: crate::route::policy::Policy,
}

/// A validated VirtualService.
#[derive(Debug)]
pub struct ParsedVs {
    pub source: String,
    pub hosts: Vec<String>,
    /// The catch-all rule's split: what the kernel enforces (or falls back to).
    pub kernel: Option<KernelRoute>,
    pub rules: Vec<ParsedRule>,
    /// Why this VirtualService needs the proxy; None: weights only, kernel path.
    pub proxy_reason: Option<ProxyReason>,
    /// The sticky-subsets key, if the annotation names one.
    pub sticky: Option<crate::route::policy::HashKey>,
    /// Index of the resource in the loaded list.
    pub resource: usize,
}

/// Reads a VirtualService: hosts, HTTP rules for the proxy, and the route the kernel
/// enforces (the first rule that matches every request). Destination hosts and subsets
/// must exist.
pub fn from_virtual_service(
    l: &Loaded,
    index: usize,
    spec: &istio::VirtualServiceSpec,
    catalog: &Catalog,
    subset_rules: &SubsetRules,
    diags: &mut Vec<Diagnostic>,
) -> Option<ParsedVs> {
    let errors_before = diags.iter().filter(|d| d.is_error()).count();
    if spec.hosts.is_empty() {
        diags.push(Diagnostic::error(
            l.at("spec.hosts"),
            "spec.hosts",
            Invalid::NoVirtualHost,
        ));
    }
    let mut hosts_out: Vec<String> = Vec::new();
    // As written, beside `hosts_out` (messages name what the operator wrote).
    let mut listed: Vec<String> = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if h == "*" {
            diags.push(Diagnostic::error(l.at(&p), &p, Invalid::MeshWildcard));
        } else if h.is_empty() {
            diags.push(Diagnostic::error(l.at(&p), &p, Invalid::EmptyHost));
        } else {
            let host = hosts::canonical(h, &l.namespace);
            // Listed before, or covered by a wildcard listed too: which rules a
            // request gets would depend on the order (Istio rejects it).
            let twice = hosts_out.iter().zip(&listed).find(|(o, _)| {
                **o == host || hosts::wildcard_covers(o, &host) || hosts::wildcard_covers(&host, o)
            });
            if let Some((_, other)) = twice {
                let problem = Invalid::HostListedTwice {
                    host: host.clone(),
                    other: other.clone(),
                };
                diags.push(Diagnostic::error(l.at(&p), &p, problem));
            }
            hosts_out.push(host);
            listed.push(h.clone());
        }
    }
    if spec.gateways.iter().any(|g| g != "mesh") {
        warn_unenforced(l, "spec.gateways", diags, "gateways");
    }
    if !spec.tls.is_empty() {
        warn_unenforced(l, "spec.tls", diags, "tls routes");
    }
    if !spec.export_to.is_empty() {
        warn_unenforced(l, "spec.exportTo", diags, "exportTo");
    }
    let mut proxy_reason = match l.annotation(DATAPATH_ANNOTATION).as_deref() {
        Some("proxy") => Some(ProxyReason::Annotation),
        Some("kernel") | None => None,
        Some(other) => {
            let p = format!("metadata.annotations.{DATAPATH_ANNOTATION}");
            diags.push(Diagnostic::error(
                l.at("metadata.annotations"),
                p,
                Invalid::UnknownDatapath(other.to_string()),
            ));
            None
        }
    };
    let sticky = l.annotation(STICKY_ANNOTATION).and_then(|text| {
        let key = crate::route::policy::HashKey::parse(&text);
        if key.is_none() {
            let p = format!("metadata.annotations.{STICKY_ANNOTATION}");
            diags.push(Diagnostic::error(
                l.at("metadata.annotations"),
                p,
                Invalid::BadStickyKey(text.clone()),
            ));
        }
        key
    });
    if sticky
        .as_ref()
        .is_some_and(|k| *k != crate::route::policy::HashKey::SourceIp)
        && proxy_reason.is_none()
    {
        // The key is in the request: only the proxy reads it (connect4 hashes the
        // source itself).
        proxy_reason = Some(ProxyReason::Rule(format!("annotation {STICKY_ANNOTATION}")));
    }
    let mut kernel: Option<Vec<WeightedDestination>> = None;
    let mut rules = Vec::new();
    let mut catch_all_at: Option<usize> = None;
    for (i, r) in spec.http.iter().enumerate() {
        let base = format!("spec.http[{i}]");
        if let Some(c) = catch_all_at {
            diags.push(Diagnostic::warning(
                l.at(&base),
                &base,
                Invalid::Unreachable(c),
            ));
        }
        let dests = destinations(
            l,
            &format!("{base}.route"),
            r.route.iter().map(|d| (d.destination.as_ref(), d.weight)),
            diags,
        );
        let dests = dests.map(|d| check_destinations(l, d, catalog, subset_rules, diags));
        if r.route.is_empty() && r.redirect.is_none() && r.direct_response.is_none() {
            if r.delegate.is_some() {
                diags.push(Diagnostic::error(
                    l.at(&format!("{base}.delegate")),
                    format!("{base}.delegate"),
                    Invalid::Delegate,
                ));
            } else {
                diags.push(Diagnostic::error(l.at(&base), &base, Invalid::NoAction));
            }
        }
        let action = super::http::action(l, &base, r, diags);
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            if let Some(b) = super::http::match_block(l, &format!("{base}.match[{j}]"), m, diags) {
                matches.push(b);
            }
        }
        let mut request_headers = super::http::header_ops(
            l,
            &format!("{base}.headers.request"),
            r.headers.as_ref().and_then(|h| h.request.as_ref()),
            diags,
        );
        // Setting Host (or `:authority`) is Istio's other way to rewrite the authority.
        let mut action = action;
        if let Some(i) = request_headers
            .set
            .iter()
            .position(|(n, _)| n == http::header::HOST)
            && let Some(super::http::ParsedAction::Route(rw)) = &mut action
        {
            let (_, v) = request_headers.set.remove(i);
            if rw.authority.is_some() {
                let p = format!("{base}.headers.request.set");
                diags.push(Diagnostic::error(l.at(&p), p, Invalid::AuthorityTwice));
            }
            rw.authority = v.to_str().ok().map(str::to_string);
        }
        let response_headers = super::http::header_ops(
            l,
            &format!("{base}.headers.response"),
            r.headers.as_ref().and_then(|h| h.response.as_ref()),
            diags,
        );
        // Per-destination header edits, by the destination's field path.
        let mut dest_headers = std::collections::BTreeMap::new();
        for (j, d) in r.route.iter().enumerate() {
            let Some(h) = &d.headers else { continue };
            let at = format!("{base}.route[{j}]");
            let ops =
                |which: &str, o: Option<&istio::HeaderOperations>, diags: &mut Vec<Diagnostic>| {
                    super::http::header_ops(l, &format!("{at}.headers.{which}"), o, diags)
                };
            let edits = (
                ops("request", h.request.as_ref(), diags),
                ops("response", h.response.as_ref(), diags),
            );
            dest_headers.insert(at, edits);
        }
        let policy = super::policy::policy(l, &base, r, diags);
        let mirrors = mirrors(l, &base, r, catalog, subset_rules, diags);
        for (field, set) in [("corsPolicy", r.cors_policy.is_some())] {
            if set {
                warn_unenforced(l, &format!("{base}.{field}"), diags, field);
            }
        }
        let needs = if !r.matches.is_empty() {
            Some("match")
        } else if r.rewrite.is_some() {
            Some("rewrite")
        } else if r.redirect.is_some() {
            Some("redirect")
        } else if r.direct_response.is_some() {
            Some("directResponse")
        } else if r.headers.is_some() || r.route.iter().any(|d| d.headers.is_some()) {
            Some("headers")
        } else if r.fault.is_some() {
            Some("fault")
        } else if r.mirror.is_some() || !r.mirrors.is_empty() {
            Some("mirror")
        } else if r.timeout.is_some() {
            Some("timeout")
        } else if r.retries.is_some() {
            Some("retries")
        } else {
            None
        };
        if let Some(what) = needs
            && proxy_reason.is_none()
        {
            proxy_reason = Some(ProxyReason::Rule(format!("{base} has {what}")));
        }
        let catch_all = r.matches.is_empty();
        if catch_all && catch_all_at.is_none() {
            catch_all_at = Some(i);
            if let Some(d) = dests
                .as_ref()
                .filter(|d| !d.is_empty() && r.redirect.is_none() && r.direct_response.is_none())
            {
                kernel = Some(d.clone());
            }
        }
        if let (Some(dests), Some(action), Some(policy)) = (dests, action, policy) {
            rules.push(ParsedRule {
                name: r.name.clone(),
                matches,
                action,
                destinations: dests,
                request_headers,
                response_headers,
                mirrors,
                dest_headers,
                policy,
            });
        }
    }
    for (i, r) in spec.tcp.iter().enumerate() {
        let base = format!("spec.tcp[{i}]");
        let Some(dests) = destinations(
            l,
            &format!("{base}.route"),
            r.route.iter().map(|d| (d.destination.as_ref(), d.weight)),
            diags,
        ) else {
            continue;
        };
        let dests = check_destinations(l, dests, catalog, subset_rules, diags);
        if !r.matches.is_empty() {
            warn_unenforced(l, &format!("{base}.match"), diags, "match");
        } else if kernel.is_none() && spec.http.is_empty() && !dests.is_empty() {
            kernel = Some(dests);
        }
    }
    if kernel.is_none() && catch_all_at.is_none() && !(spec.http.is_empty() && spec.tcp.is_empty())
    {
        diags.push(Diagnostic::warning(
            l.at("spec"),
            "spec",
            Invalid::NoCatchAll,
        ));
    }
    if diags.iter().filter(|d| d.is_error()).count() > errors_before {
        return None;
    }
    let source = format!("{}/{}", l.namespace, l.name);
    let kernel = kernel.map(|destinations| KernelRoute {
        source: source.clone(),
        namespace: l.namespace.clone(),
        destinations,
        resource: index,
    });
    Some(ParsedVs {
        source,
        hosts: hosts_out,
        kernel,
        rules,
        proxy_reason,
        sticky,
        resource: index,
    })
}

/// `mirror` (with `mirrorPercentage`, or the deprecated `mirrorPercent`; 100 % when
/// neither is set) or `mirrors` (each with its `percentage`), resolved as the route's
/// destinations are.
fn mirrors(
    l: &Loaded,
    base: &str,
    r: &istio::HttpRoute,
    catalog: &Catalog,
    subset_rules: &SubsetRules,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(WeightedDestination, f64)> {
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        diags.push(Diagnostic::error(
            l.at(base),
            base,
            Invalid::Both("mirror", "mirrors"),
        ));
    }
    let share = |p: Option<f64>, field: String, diags: &mut Vec<Diagnostic>| {
        let v = p.unwrap_or(100.0);
        if !(0.0..=100.0).contains(&v) {
            diags.push(Diagnostic::error(
                l.at(&field),
                field,
                Invalid::Percentage(v.to_string()),
            ));
        }
        v
    };
    let (list, at, shares): (Vec<_>, String, Vec<f64>) = match &r.mirror {
        Some(d) => {
            let p = r
                .mirror_percentage
                .as_ref()
                .and_then(|p| p.value)
                .or(r.mirror_percent.map(|n| n as f64));
            let s = share(p, format!("{base}.mirrorPercentage"), diags);
            (vec![(Some(d), Some(1))], format!("{base}.mirror"), vec![s])
        }
        None => {
            let shares = r
                .mirrors
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let p = m.percentage.as_ref().and_then(|p| p.value);
                    share(p, format!("{base}.mirrors[{i}].percentage"), diags)
                })
                .collect();
            // Weight 1 each: every mirror gets its copy (the share says how often).
            let list = r
                .mirrors
                .iter()
                .map(|m| (m.destination.as_ref(), Some(1)))
                .collect();
            (list, format!("{base}.mirrors"), shares)
        }
    };
    if list.is_empty() {
        return Vec::new();
    }
    let Some(dests) = destinations(l, &at, list.into_iter(), diags) else {
        return Vec::new();
    };
    let dests = check_destinations(l, dests, catalog, subset_rules, diags);
    // `destinations` names a lone `mirror` `{base}.mirror[0]`: its share is the first.
    dests
        .into_iter()
        .filter_map(|d| {
            let i = d
                .path
                .rsplit_once('[')?
                .1
                .trim_end_matches(']')
                .parse::<usize>()
                .ok()?;
            Some((d, *shares.get(i)?))
        })
        .collect()
}

/// Reports destinations whose host is not in the catalogue or whose subset no
/// DestinationRule defines; keeps the ones that resolve.
fn check_destinations(
    l: &Loaded,
    dests: Vec<WeightedDestination>,
    catalog: &Catalog,
    subset_rules: &SubsetRules,
    diags: &mut Vec<Diagnostic>,
) -> Vec<WeightedDestination> {
    let mut out = Vec::new();
    for mut d in dests {
        let Some(svc) = catalog.lookup(&d.host) else {
            let p = format!("{}.destination.host", d.path);
            diags.push(Diagnostic::error(
                l.at(&p),
                p,
                Invalid::HostUnknown(d.host.clone()),
            ));
            continue;
        };
        d.host = svc.host.clone();
        if let Some(subset) = &d.subset {
            let found = subset_rules
                .get(&svc.host)
                .and_then(|r| r.subsets.get(subset));
            if found.is_none() {
                let p = format!("{}.destination.subset", d.path);
                diags.push(Diagnostic::error(
                    l.at(&p),
                    p,
                    Invalid::SubsetUnknown {
                        host: d.host.clone(),
                        subset: subset.clone(),
                    },
                ));
                continue;
            }
        }
        out.push(d);
    }
    out
}

/// Endpoints of a (validated) destination on every port of its service.
pub fn endpoints_by_port(
    d: &WeightedDestination,
    catalog: &Catalog,
    subset_rules: &SubsetRules,
) -> crate::smallmap::PortMap<Box<[std::net::SocketAddr]>> {
    let Some(svc) = catalog.lookup(&d.host) else {
        return Default::default();
    };
    let all = crate::smallmap::Labels::default();
    let labels = d
        .subset
        .as_ref()
        .and_then(|s| subset_rules.get(&svc.host).and_then(|r| r.subsets.get(s)))
        .unwrap_or(&all);
    // The proxy's (TCP) ports: a UDP port of the same number is not its.
    svc.ports_of(false)
        .map(|p| {
            (
                p.number,
                svc.select(labels, p)
                    .into_iter()
                    .map(std::net::SocketAddr::V4)
                    .collect(),
            )
        })
        .collect()
}

/// The DestinationRule's traffic policy for a destination (Istio's defaults without
/// one), and its policy at each port whose `portLevelSettings` make it another.
pub fn destination_policy(
    d: &WeightedDestination,
    catalog: &Catalog,
    subset_rules: &SubsetRules,
) -> (
    crate::route::policy::DestinationPolicy,
    Vec<(u16, crate::route::policy::DestinationPolicy)>,
) {
    let Some((svc, rule)) = catalog
        .lookup(&d.host)
        .and_then(|svc| Some((svc, subset_rules.get(&svc.host)?)))
    else {
        return Default::default();
    };
    let subset = d.subset.as_deref();
    let policy = rule.policy(subset, None);
    let mut ports = Vec::new();
    if rule.has_port_policies(subset) {
        for p in svc.ports_of(false) {
            let at = rule.policy(subset, Some(p.number));
            if at != policy {
                ports.push((p.number, at));
            }
        }
    }
    (policy, ports)
}

/// The services that VirtualServices route to from a host that names no service (a
/// Host alias such as `bar.com`, or a wildcard): service host → (VirtualService
/// index, the alias). Clients reach such a name only by dialling some service's
/// address, so for those services the Host, not the address, picks the rules.
pub fn host_routed(
    parsed: &[ParsedVs],
    catalog: &Catalog,
) -> super::HashMap<String, (usize, String)> {
    let mut out = super::HashMap::default();
    for (i, vs) in parsed.iter().enumerate() {
        let Some(alias) = vs.hosts.iter().find(|h| catalog.lookup(h).is_none()) else {
            continue;
        };
        for d in vs.rules.iter().flat_map(|r| &r.destinations) {
            if let Some(svc) = catalog.lookup(&d.host) {
                out.entry(svc.host.clone()).or_insert((i, alias.clone()));
            }
        }
    }
    out
}

/// Resolves a route's destinations for traffic dialled to `dialled_port`.
pub fn resolve(
    route: &KernelRoute,
    l: &Loaded,
    dialled_port: &super::catalog::Port,
    own_host: &str,
    catalog: &Catalog,
    subset_rules: &SubsetRules,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<WeightedSubset>> {
    let mut out: Vec<WeightedSubset> = Vec::new();
    let mut ok = true;
    for d in &route.destinations {
        let Some(svc) = catalog.lookup(&d.host) else {
            let p = format!("{}.destination.host", d.path);
            diags.push(Diagnostic::error(
                l.at(&p),
                p,
                Invalid::HostUnknown(d.host.clone()),
            ));
            ok = false;
            continue;
        };
        let Some(port) = pick_port(svc, d.port, dialled_port.number, dialled_port.udp) else {
            let p = format!("{}.destination.port", d.path);
            let problem = match d.port {
                Some(port) => Invalid::NotAPort {
                    port,
                    host: svc.host.clone(),
                },
                None => Invalid::PortRequired(svc.host.clone()),
            };
            diags.push(Diagnostic::error(l.at(&p), p, problem));
            ok = false;
            continue;
        };
        let rule = subset_rules.get(&svc.host);
        let kernel = rule
            .map(|r| {
                let policy = r.policy(d.subset.as_deref(), Some(port.number));
                super::traffic::KernelPolicy::of(&policy, &r.source)
            })
            .unwrap_or_default();
        let (name, endpoints) = match &d.subset {
            None => ("(all)".to_string(), svc.select(&Default::default(), port)),
            Some(subset) => {
                let labels = rule.and_then(|r| r.subsets.get(subset));
                let Some(labels) = labels else {
                    let p = format!("{}.destination.subset", d.path);
                    diags.push(Diagnostic::error(
                        l.at(&p),
                        p,
                        Invalid::SubsetUnknown {
                            host: d.host.clone(),
                            subset: subset.clone(),
                        },
                    ));
                    ok = false;
                    continue;
                };
                let eps = svc.select(labels, port);
                if eps.is_empty() && d.weight > 0 {
                    let p = format!("{}.destination.subset", d.path);
                    let problem = Invalid::SubsetEmpty {
                        subset: subset.clone(),
                        host: svc.host.clone(),
                    };
                    diags.push(Diagnostic::warning(l.at(&p), p, problem));
                }
                (subset.clone(), eps)
            }
        };
        let name = if svc.host == own_host {
            name
        } else {
            format!("{}/{name}", hosts::short_name(&svc.host))
        };
        match out.iter_mut().find(|w| w.name == name) {
            Some(w) => w.weight += d.weight,
            None => out.push(WeightedSubset {
                name,
                weight: d.weight,
                endpoints,
                kernel,
            }),
        }
    }
    ok.then_some(out)
}

/// The destination port, of the dialled port's protocol (`udp`): the one named, else
/// the dialled one if the destination has it, else the destination's only port.
fn pick_port(
    svc: &CatalogService,
    named: Option<u16>,
    dialled: u16,
    udp: bool,
) -> Option<&super::catalog::Port> {
    let mut same = svc.ports_of(udp);
    let only = match (same.next(), same.next()) {
        (Some(p), None) => Some(p),
        _ => None,
    };
    let of = |n: u16| svc.ports_of(udp).find(|p| p.number == n);
    match named {
        Some(n) => of(n),
        None => of(dialled).or(only),
    }
}
