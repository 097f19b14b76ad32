//! VirtualService routes: which rule the kernel enforces for a service, and its weighted
//! destinations resolved to subsets and endpoints.

use std::net::SocketAddrV4;

use crate::diagnostic::Diagnostic;
use crate::load::{Loaded, istio};

use super::catalog::CatalogService;
use super::subsets::SubsetRule;
use super::{Catalog, hosts};

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
                "destination is required",
            ));
            ok = false;
            continue;
        };
        let Some(host) = dest.host.as_deref().filter(|h| !h.is_empty()) else {
            diags.push(Diagnostic::error(
                l.at(&path),
                format!("{path}.destination.host"),
                "destination.host is required",
            ));
            ok = false;
            continue;
        };
        let w = weight.unwrap_or(0);
        if w < 0 {
            diags.push(Diagnostic::error(
                l.at(&format!("{path}.weight")),
                format!("{path}.weight"),
                format!("weight {w} < 0"),
            ));
            ok = false;
        }
        let port = match dest.port.as_ref().and_then(|p| p.number) {
            Some(n) => match u16::try_from(n).ok().filter(|p| *p != 0) {
                Some(p) => Some(p),
                None => {
                    let p = format!("{path}.destination.port.number");
                    diags.push(Diagnostic::error(
                        l.at(&p),
                        p,
                        format!("port number {n} is out of range 1-65535"),
                    ));
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
        diags.push(Diagnostic::error(
            l.at(base),
            base,
            "total destination weight = 0: at least one weight must be positive",
        ));
        ok = false;
    }
    ok.then_some(out)
}

fn warn_unenforced(l: &Loaded, path: &str, diags: &mut Vec<Diagnostic>, what: &str) {
    diags.push(Diagnostic::warning(
        l.at(path),
        path,
        format!("{what} is valid Istio but lb does not enforce it yet"),
    ));
}

/// Reads a VirtualService: its hosts and the route the kernel enforces (the first rule
/// that matches every request). Rules that look inside requests are reported as not
/// enforced yet.
pub fn from_virtual_service(
    l: &Loaded,
    index: usize,
    spec: &istio::VirtualServiceSpec,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Vec<String>, Option<KernelRoute>)> {
    let mut ok = true;
    if spec.hosts.is_empty() {
        diags.push(Diagnostic::error(
            l.at("spec.hosts"),
            "spec.hosts",
            "virtual service must have at least one host",
        ));
        ok = false;
    }
    let mut hosts_out = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if h == "*" {
            diags.push(Diagnostic::error(
                l.at(&p),
                &p,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            ));
            ok = false;
        } else if h.is_empty() {
            diags.push(Diagnostic::error(l.at(&p), &p, "host must not be empty"));
            ok = false;
        } else {
            hosts_out.push(hosts::canonical(h, &l.namespace));
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
    let mut kernel: Option<Vec<WeightedDestination>> = None;
    for (i, r) in spec.http.iter().enumerate() {
        let base = format!("spec.http[{i}]");
        let dests = destinations(
            l,
            &format!("{base}.route"),
            r.route.iter().map(|d| (d.destination.as_ref(), d.weight)),
            diags,
        );
        let Some(dests) = dests else {
            ok = false;
            continue;
        };
        if dests.is_empty()
            && r.redirect.is_none()
            && r.direct_response.is_none()
            && r.delegate.is_none()
        {
            diags.push(Diagnostic::error(
                l.at(&base),
                &base,
                "HTTP route or redirect or directResponse is required",
            ));
            ok = false;
        }
        let catch_all = r.matches.is_empty();
        for (field, set) in [
            ("match", !r.matches.is_empty()),
            ("rewrite", r.rewrite.is_some()),
            ("redirect", r.redirect.is_some()),
            ("directResponse", r.direct_response.is_some()),
            ("delegate", r.delegate.is_some()),
            ("timeout", r.timeout.is_some()),
            ("retries", r.retries.is_some()),
            ("fault", r.fault.is_some()),
            ("mirror", r.mirror.is_some() || !r.mirrors.is_empty()),
            ("corsPolicy", r.cors_policy.is_some()),
            (
                "headers",
                r.headers.is_some() || r.route.iter().any(|d| d.headers.is_some()),
            ),
        ] {
            if set {
                warn_unenforced(l, &format!("{base}.{field}"), diags, field);
            }
        }
        if catch_all && kernel.is_none() && !dests.is_empty() {
            kernel = Some(dests);
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
            ok = false;
            continue;
        };
        if !r.matches.is_empty() {
            warn_unenforced(l, &format!("{base}.match"), diags, "match");
        } else if kernel.is_none() && !dests.is_empty() {
            kernel = Some(dests);
        }
    }
    if ok && kernel.is_none() && !(spec.http.is_empty() && spec.tcp.is_empty()) {
        diags.push(Diagnostic::warning(l.at("spec"), "spec", "no rule matches every request: the kernel balances this service evenly over all its endpoints"));
    }
    ok.then(|| {
        let route = kernel.map(|destinations| KernelRoute {
            source: format!("{}/{}", l.namespace, l.name),
            namespace: l.namespace.clone(),
            destinations,
            resource: index,
        });
        (hosts_out, route)
    })
}

/// Resolves a route's destinations for traffic dialled to `dialled_port`.
pub fn resolve(
    route: &KernelRoute,
    l: &Loaded,
    dialled_port: u16,
    own_host: &str,
    catalog: &Catalog,
    subset_rules: &[SubsetRule],
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
                format!("Referenced host not found: {:?}", d.host),
            ));
            ok = false;
            continue;
        };
        let Some(port) = pick_port(svc, d.port, dialled_port) else {
            let p = format!("{}.destination.port", d.path);
            let msg = match d.port {
                Some(n) => format!("port {n} is not a port of {}", svc.host),
                None => format!(
                    "destination port is required: {} has several ports",
                    svc.host
                ),
            };
            diags.push(Diagnostic::error(l.at(&p), p, msg));
            ok = false;
            continue;
        };
        let (name, endpoints) = match &d.subset {
            None => ("(all)".to_string(), svc.select(&Default::default(), port)),
            Some(subset) => {
                let rule = subset_rules.iter().find(|r| r.host == svc.host);
                let labels = rule.and_then(|r| r.subsets.get(subset));
                let Some(labels) = labels else {
                    let p = format!("{}.destination.subset", d.path);
                    diags.push(Diagnostic::error(
                        l.at(&p),
                        p,
                        format!(
                            "Referenced host+subset in destinationrule not found: \"{}+{subset}\"",
                            d.host
                        ),
                    ));
                    ok = false;
                    continue;
                };
                let eps = svc.select(labels, port);
                if eps.is_empty() && d.weight > 0 {
                    let p = format!("{}.destination.subset", d.path);
                    diags.push(Diagnostic::warning(l.at(&p), p, format!("subset {subset:?} selects no endpoint of {}: connects picking it are refused (ECONNREFUSED)", svc.host)));
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
            }),
        }
    }
    ok.then_some(out)
}

/// The destination port: the one named, else the dialled one if the destination has
/// it, else the destination's only port.
fn pick_port(
    svc: &CatalogService,
    named: Option<u16>,
    dialled: u16,
) -> Option<&super::catalog::Port> {
    match named {
        Some(n) => svc.port(n),
        None => svc
            .port(dialled)
            .or_else(|| (svc.ports.len() == 1).then(|| &svc.ports[0])),
    }
}
