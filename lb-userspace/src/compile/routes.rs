//! Compiles the proxy's [`RouteTable`] from the model's VirtualServices: every name a
//! Host may use, the rules with their destinations' endpoints resolved per port.

use crate::hosts;
use crate::model::Model;
use crate::model::catalog::CatalogService;
use crate::model::http::ParsedAction;
use crate::model::routes::{WeightedDestination, destination_policy, endpoints_by_port};
use crate::route::policy::{self, Defaults};
use crate::route::{Action, Destination, Edits, RouteTable, Rule, VirtualHost};

/// Every name a Host header may use for a catalogue service: its host in every form,
/// the short name, and its addresses.
fn names_of(svc: &CatalogService) -> Vec<String> {
    let mut names = hosts::aliases(&svc.host);
    names.push(hosts::short_name(&svc.host).to_string());
    names.extend(svc.addresses.iter().map(|a| a.to_string()));
    names
}

/// A route destination: its endpoints and DestinationRule policy resolved.
fn resolved(
    d: &WeightedDestination,
    label: String,
    catalog: &crate::model::Catalog,
    subset_rules: &crate::model::subsets::SubsetRules,
) -> Destination {
    let (policy, port_policies) = destination_policy(d, catalog, subset_rules);
    let endpoints = endpoints_by_port(d, catalog, subset_rules);
    Destination {
        port: d.port,
        weight: d.weight,
        policy: policy::shared(policy),
        port_policies: port_policies.into_boxed_slice(),
        ..Destination::new(d.host.clone(), d.subset.clone(), label, endpoints)
    }
}

pub fn build(model: Model) -> RouteTable {
    let Model {
        services,
        virtual_services: parsed,
        bindings,
        catalog,
        subset_rules,
        normalization,
    } = model;
    let (catalog, subset_rules) = (&catalog, &subset_rules);
    let mut t = RouteTable {
        normalization,
        ..RouteTable::default()
    };
    // The proxy serves TCP: a UDP port (split in XDP only) is not its.
    let services: Vec<_> = services.into_iter().filter(|s| !s.udp).collect();
    for svc in &services {
        t.services.insert(
            svc.frontend,
            format!("{}/{}", svc.namespace, svc.name).into(),
        );
        if let Some(i) = bindings.get(&svc.host) {
            t.by_service.insert(svc.frontend, *i);
        }
    }
    for (idx, vs) in parsed.into_iter().enumerate() {
        for h in &vs.hosts {
            if h.starts_with('*') {
                t.wildcards.push((h.clone(), idx));
                continue;
            }
            let names = catalog.lookup(h).map_or_else(|| vec![h.clone()], names_of);
            for n in names {
                t.hosts.or_insert(n.into(), idx);
            }
        }
        let mut rules: Vec<Rule> = vs
            .rules
            .into_iter()
            .map(|r| {
                let destination = |d: &WeightedDestination| {
                    let subset = d.subset.clone().unwrap_or_else(|| "(all)".into());
                    let label = if vs.hosts.contains(&d.host) {
                        subset
                    } else {
                        format!("{}/{subset}", hosts::short_name(&d.host))
                    };
                    let (request, response) =
                        r.dest_headers.get(&d.path).cloned().unwrap_or_default();
                    Destination {
                        edits: Edits::new(request, response),
                        ..resolved(d, label, catalog, subset_rules)
                    }
                };
                let mirrors = r
                    .mirrors
                    .iter()
                    .map(|(d, share)| (destination(d), *share))
                    .collect();
                let action = match r.action {
                    ParsedAction::Route(rewrite) => Action::Route {
                        destinations: r.destinations.iter().map(destination).collect(),
                        rewrite: rewrite.boxed(),
                    },
                    ParsedAction::Redirect(rd) => Action::Redirect(Box::new(rd)),
                    ParsedAction::Direct { status, body } => Action::Direct { status, body },
                };
                Rule {
                    name: r.name,
                    matches: r.matches,
                    action,
                    edits: Edits::new(r.request_headers, r.response_headers),
                    policy: policy::shared(r.policy),
                    sticky: vs.sticky.clone(),
                    mirrors,
                }
            })
            .collect();
        // Collected in place, the rules keep the parsed rules' allocation (a
        // `ParsedRule` is 11 `Rule`s: 2 KB held by every VirtualService).
        rules.shrink_to_fit();
        t.vhosts.push(std::sync::Arc::new(VirtualHost {
            name: vs.source,
            rules,
            proxy_reason: vs.proxy_reason.map(|r| r.to_string()),
        }));
    }
    // A service on the proxy path without a VirtualService of its own (another's Host
    // alias routes to it, or its DestinationRule hashes by the request): its own name
    // and address route to all its endpoints.
    for svc in &services {
        if t.by_service.contains_key(&svc.frontend) {
            continue;
        }
        let Some(reason) = &svc.proxy_reason else {
            continue;
        };
        let d = WeightedDestination {
            host: svc.host.clone(),
            subset: None,
            port: None,
            weight: 100,
            path: String::new(),
        };
        let idx = t.vhosts.len();
        t.vhosts.push(std::sync::Arc::new(VirtualHost {
            name: format!("{}/{} (its endpoints)", svc.namespace, svc.name),
            rules: vec![Rule {
                name: None,
                matches: Vec::new(),
                action: Action::Route {
                    destinations: vec![resolved(&d, "(all)".into(), catalog, subset_rules)],
                    rewrite: None,
                },
                edits: Edits::default(),
                policy: policy::Policy::defaults().clone(),
                sticky: None,
                mirrors: Vec::new(),
            }],
            proxy_reason: Some(reason.to_string()),
        }));
        t.by_service.insert(svc.frontend, idx);
        if let Some(c) = catalog.lookup(&svc.host) {
            for n in names_of(c) {
                t.hosts.or_insert(n.into(), idx);
            }
        }
    }
    t.wildcards.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
    // Headers are read into a map only where something looks at them: a header
    // match, or a header or cookie the request is hashed by.
    let reads =
        |k: &Option<crate::route::policy::HashKey>| k.as_ref().is_some_and(|k| k.reads_headers());
    t.matches_headers = t.vhosts.iter().flat_map(|vh| &vh.rules).any(|r| {
        r.matches
            .iter()
            .any(|m| !m.headers.is_empty() || !m.without_headers.is_empty())
            || reads(&r.sticky)
            || match &r.action {
                Action::Route { destinations, .. } => destinations.iter().any(|d| {
                    reads(&d.policy.hash) || d.port_policies.iter().any(|(_, p)| reads(&p.hash))
                }),
                _ => false,
            }
    });
    for vh in t.vhosts.iter() {
        for r in &vh.rules {
            if let Action::Route { destinations, .. } = &r.action {
                for d in destinations.iter().chain(r.mirrors.iter().map(|(m, _)| m)) {
                    t.endpoints
                        .extend(d.endpoints.values().flatten().filter_map(|e| match e {
                            std::net::SocketAddr::V4(a) => Some((*a, 1)),
                            std::net::SocketAddr::V6(_) => None,
                        }));
                }
            }
        }
    }
    t
}
