//! Model: the loaded resources validated into what lb enforces — one [`Service`] per
//! service address and port, with its weighted subsets resolved to endpoints.
//!
//! Follows Istio's semantics (shared/ISTIO-SEMANTICS.md); where Istio only warns about
//! a conflict (two VirtualServices for one host), lb rejects the configuration.

pub mod accept;
pub mod catalog;
pub mod http;
mod invalid;
pub mod own;
pub mod policy;
pub mod routes;
pub mod slices;
pub mod subsets;
pub mod traffic;

use std::collections::BTreeMap;

pub(crate) use crate::fasthash::HashMap;
use crate::hosts;
use std::net::SocketAddrV4;
use std::path::Path;
use std::sync::Arc;

use crate::diagnostic::{self, Diagnostic};
use crate::load::{self, Loaded, Resource};

pub use invalid::Invalid;
pub use routes::WeightedSubset;

/// The configuration could not be turned into a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The directory could not be read.
    #[error(transparent)]
    Load(#[from] load::LoadError),
    /// The configuration has errors (each one line, errors first).
    #[error("{} error(s) in the configuration:\n{}", count_errors(.diagnostics), render(.diagnostics))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

fn count_errors(d: &[Diagnostic]) -> usize {
    d.iter().filter(|d| d.is_error()).count()
}

fn render(d: &[Diagnostic]) -> String {
    d.iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Warns, for each field that is set, that it is valid Istio lb does not enforce yet
/// (`base`: the path of the fields' parent).
pub(crate) fn warn_unenforced(
    l: &Loaded,
    base: &str,
    fields: &[(&str, bool)],
    diags: &mut Vec<Diagnostic>,
) {
    for (field, set) in fields {
        if *set {
            warn_unenforced_at(l, &format!("{base}.{field}"), field, diags);
        }
    }
}

/// Warns that `what`, at `path`, is valid Istio lb does not enforce yet.
pub(crate) fn warn_unenforced_at(l: &Loaded, path: &str, what: &str, diags: &mut Vec<Diagnostic>) {
    diags.push(Diagnostic::warning(
        l.at(path),
        path,
        Invalid::unenforced(what),
    ));
}

/// A service address the kernel steers, with its resolved split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Display name (`backend-service`).
    pub name: String,
    pub namespace: String,
    /// Canonical host.
    pub host: String,
    /// The address and port clients dial.
    pub frontend: SocketAddrV4,
    /// Weighted subsets (relative weights, some may be 0).
    pub split: Vec<WeightedSubset>,
    /// The VirtualService that sets the split (`ns/name`), if any.
    pub virtual_service: Option<String>,
    /// Why connects go to the proxy; None: weights only, the kernel path.
    pub proxy_reason: Option<routes::ProxyReason>,
    /// lb's sticky subsets keyed by the source: connect4 picks the subset by the
    /// client's hash too.
    pub sticky_source: bool,
    /// Served at a node address (a NodePort, or a ServiceEntry address of an
    /// `--xdp-iface` interface) or an external one (`lb.dev/external-addresses`: a
    /// load-balancer IP) while lb serves XDP: reached from outside through `lb_xdp`,
    /// whose flows pick endpoints from Maglev tables.
    pub north_south: bool,
    /// A UDP port: split by weight in XDP (north-south) only, never by the proxy
    /// (its rules are HTTP's) nor at connect (`connect4` steers TCP).
    pub udp: bool,
}

/// What lb enforces: the services the kernel steers, and the validated
/// VirtualServices the proxy's route table is compiled from.
#[derive(Debug, Default)]
pub struct Model {
    /// Sorted by frontend.
    pub services: Vec<Service>,
    /// Valid VirtualServices, in the order they were loaded.
    pub virtual_services: Vec<routes::ParsedVs>,
    /// Canonical service host → the VirtualService bound to it (index into
    /// `virtual_services`).
    pub bindings: HashMap<String, usize>,
    pub catalog: Catalog,
    pub subset_rules: subsets::SubsetRules,
    /// Istio's `pathNormalization` (the route table applies it to every request).
    pub normalization: crate::route::path::Normalization,
}

/// A valid model and the warnings found on the way.
#[derive(Debug)]
pub struct Validated {
    pub model: Model,
    pub warnings: Vec<Diagnostic>,
}

/// The catalogue of services by every name they answer to.
#[derive(Debug, Default)]
pub struct Catalog {
    pub services: Vec<Arc<catalog::CatalogService>>,
    by_alias: HashMap<String, usize>,
}

impl Catalog {
    /// The service a canonical host names (any of its forms).
    pub fn lookup(&self, host: &str) -> Option<&catalog::CatalogService> {
        self.by_alias.get(host).map(|i| &*self.services[*i])
    }
}

/// What a reload reuses from the previous one (the daemon keeps it): the parse of
/// unchanged files and the slices of the last build; within a reload, the catalogue
/// services of ServiceEntry documents.
#[derive(Default)]
pub struct Cache {
    /// Each file's documents (their text; typed forms while a slice needs them).
    pub parse: load::Cache,
    /// By document (`Arc` address; the memo holds the `Arc`, so the address stays its).
    service_entries: HashMap<usize, ServiceEntryMemo>,
    /// The slices of the last build (a change rebuilds the slices it touches).
    slices: slices::SliceCache,
}

impl Cache {
    /// A reload is over: the catalogue services go, unless every change rebuilds
    /// every slice (a wildcard host makes one slice of all). A slice is built again
    /// only when a document of its own changed, and reading its one ServiceEntry
    /// again costs a few µs; kept, they were ~12 MB of 10,000 services' idle memory.
    /// Freed here, before the compile, not after the apply: the compile's
    /// allocations fill the pages they leave (10,000 services idled 9 MiB lower).
    fn reloaded(&mut self) {
        if !self.slices.is_wild() {
            self.service_entries = HashMap::default();
        }
    }
}

/// A valid configuration as slices (see slices.rs) and the warnings found on the way.
#[derive(Debug)]
pub struct Sliced {
    pub slices: Arc<Vec<Arc<slices::Slice>>>,
    /// What changed since the slices handed out before (slices.rs).
    pub changes: Option<slices::Changes>,
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug)]
struct ServiceEntryMemo {
    /// Held so the address keying this entry cannot be reused by another document.
    _doc: Arc<Loaded>,
    services: Vec<Arc<catalog::CatalogService>>,
    /// Every name each service answers to (host forms, addresses).
    names: Vec<Vec<String>>,
    diags: Vec<Diagnostic>,
}

/// What the model needs besides the configuration: settings of the running lb that
/// change what is valid or how requests are read.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Istio's `pathNormalization` (the route table applies it to every request).
    pub normalization: crate::route::path::Normalization,
    /// lb's own listeners: no endpoint may be one of them.
    pub own: own::OwnListeners,
    /// The node's addresses its services' NodePorts are served at (those of the
    /// `--xdp-iface` interfaces; none: NodePorts are not served).
    pub node_addresses: Vec<std::net::Ipv4Addr>,
}

/// Loads and validates the configuration directory (default options).
pub fn load_dir(dir: &Path) -> Result<Validated, ModelError> {
    load_dir_with(dir, &mut Cache::default(), &Options::default())
}

/// [`load_dir`] with `opts`, reusing what the previous load of `cache` can lend.
pub fn load_dir_with(
    dir: &Path,
    cache: &mut Cache,
    opts: &Options,
) -> Result<Validated, ModelError> {
    let (loaded, mut diags) = cache.parse.load_dir(dir)?;
    let model = build_with(
        &loaded.to_vec(),
        &mut cache.service_entries,
        &mut diags,
        opts,
    );
    diagnostic::sort(&mut diags);
    if diags.iter().any(Diagnostic::is_error) {
        return Err(ModelError::Invalid { diagnostics: diags });
    }
    Ok(Validated {
        model,
        warnings: diags,
    })
}

/// Builds the model from loaded resources, appending every problem to `diags`.
pub fn build(loaded: &[Arc<Loaded>], diags: &mut Vec<Diagnostic>) -> Model {
    build_for(loaded, diags, &Options::default())
}

/// [`build`] with `opts`.
pub fn build_for(loaded: &[Arc<Loaded>], diags: &mut Vec<Diagnostic>, opts: &Options) -> Model {
    build_with(loaded, &mut HashMap::default(), diags, opts)
}

fn build_with(
    loaded: &[Arc<Loaded>],
    memo: &mut HashMap<usize, ServiceEntryMemo>,
    diags: &mut Vec<Diagnostic>,
    opts: &Options,
) -> Model {
    forget_unloaded(loaded, memo);
    build_part(loaded, memo, diags, opts)
}

/// Documents no longer loaded leave the memo.
fn forget_unloaded(loaded: &[Arc<Loaded>], memo: &mut HashMap<usize, ServiceEntryMemo>) {
    let live: crate::fasthash::HashSet<usize> =
        loaded.iter().map(|l| Arc::as_ptr(l) as usize).collect();
    memo.retain(|k, _| live.contains(k));
}

/// [`build_with`] for some of the loaded documents (a slice): the memo keeps the rest.
fn build_part(
    loaded: &[Arc<Loaded>],
    memo: &mut HashMap<usize, ServiceEntryMemo>,
    diags: &mut Vec<Diagnostic>,
    opts: &Options,
) -> Model {
    check_duplicates(loaded, diags);
    let catalog = build_catalog(loaded, memo, diags);
    own::check(&catalog, &opts.own, diags);
    let subset_rules = build_subset_rules(loaded, &catalog, diags);
    let parsed = parse_virtual_services(loaded, &catalog, &subset_rules, diags);
    let bindings = bind_virtual_services(loaded, &parsed, &catalog, diags);
    let host_routed = routes::host_routed(&parsed, &catalog);

    let mut services = Vec::new();
    let mut frontends: BTreeMap<(SocketAddrV4, bool), &str> = BTreeMap::new();
    for svc in &catalog.services {
        for (frontend, port) in svc.frontends(&opts.node_addresses) {
            if let Some(other) = frontends.insert((frontend, port.udp), &svc.host) {
                if other != svc.host {
                    let l = &svc.doc;
                    diags.push(Diagnostic::error(
                        l.at("spec.addresses"),
                        "spec.addresses",
                        Invalid::AddressTaken {
                            address: frontend,
                            first: other.to_string(),
                            second: svc.host.clone(),
                        },
                    ));
                }
                continue;
            }
            let vs = bindings.get(&svc.host).map(|i| &parsed[*i]);
            let split = match vs.and_then(|v| v.kernel.as_ref()) {
                Some(route) => {
                    let l = &loaded[route.resource];
                    let resolved =
                        routes::resolve(route, l, port, &svc.host, &catalog, &subset_rules, diags);
                    match resolved {
                        Some(split) => split,
                        None => continue,
                    }
                }
                // No VirtualService (or no catch-all rule): even over every endpoint.
                None => vec![WeightedSubset {
                    name: "(all)".into(),
                    weight: 1,
                    endpoints: svc.select(&Default::default(), port),
                    kernel: subset_rules
                        .get(&svc.host)
                        .map(|r| {
                            let policy = r.policy(None, Some(port.number));
                            traffic::KernelPolicy::of(&policy, &r.source)
                        })
                        .unwrap_or_default(),
                }],
            };
            let hashed = split.iter().find_map(|s| s.kernel.needs_proxy.clone());
            services.push(Service {
                name: hosts::short_name(&svc.host).to_string(),
                namespace: svc.namespace.clone(),
                host: svc.host.clone(),
                frontend,
                split,
                virtual_service: vs.map(|v| v.source.clone()),
                // UDP is split by weight in XDP only: no rule reads a datagram.
                proxy_reason: vs
                    .and_then(|v| v.proxy_reason.clone())
                    .or_else(|| {
                        let (i, host) = host_routed.get(&svc.host)?;
                        (bindings.get(&svc.host) != Some(i)).then(|| {
                            routes::ProxyReason::HostRouted {
                                virtual_service: parsed[*i].source.clone(),
                                host: host.clone(),
                            }
                        })
                    })
                    .or_else(|| hashed.map(routes::ProxyReason::Hashed))
                    .filter(|_| !port.udp),
                sticky_source: !port.udp
                    && vs
                        .is_some_and(|v| v.sticky == Some(crate::route::policy::HashKey::SourceIp)),
                // Served in XDP (node addresses known) and reached through the nodes.
                north_south: opts.node_addresses.contains(frontend.ip())
                    || (!opts.node_addresses.is_empty() && svc.external.contains(frontend.ip())),
                udp: port.udp,
            });
        }
    }
    services.sort_by_key(|s| (s.frontend, s.udp));
    Model {
        services,
        virtual_services: parsed,
        bindings,
        catalog,
        subset_rules,
        normalization: opts.normalization,
    }
}

fn parse_virtual_services(
    loaded: &[std::sync::Arc<Loaded>],
    catalog: &Catalog,
    subset_rules: &subsets::SubsetRules,
    diags: &mut Vec<Diagnostic>,
) -> Vec<routes::ParsedVs> {
    let mut out = Vec::new();
    for (i, l) in loaded.iter().enumerate() {
        let r = l.resource();
        let Resource::VirtualService(vs) = &*r else {
            continue;
        };
        if let Some(p) = routes::from_virtual_service(l, i, &vs.spec, catalog, subset_rules, diags)
        {
            out.push(p);
        }
    }
    out
}

fn check_duplicates(loaded: &[std::sync::Arc<Loaded>], diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<(&str, &str, &str), &Loaded> =
        HashMap::with_capacity_and_hasher(loaded.len(), Default::default());
    for l in loaded {
        if let Some(first) = seen.insert((l.kind, &l.namespace, &l.name), l) {
            diags.push(Diagnostic::error(
                l.at("metadata.name"),
                "metadata.name",
                Invalid::Duplicate {
                    kind: l.kind,
                    namespace: l.namespace.clone(),
                    name: l.name.clone(),
                    at: format!("{}:{}", first.file.display(), first.doc.first_line),
                },
            ));
        }
    }
}

fn build_catalog(
    loaded: &[Arc<Loaded>],
    memo: &mut HashMap<usize, ServiceEntryMemo>,
    diags: &mut Vec<Diagnostic>,
) -> Catalog {
    let mut cat = Catalog::default();
    for l in loaded {
        let r = l.resource();
        let Resource::ServiceEntry(se) = &*r else {
            continue;
        };
        let m = memo.entry(Arc::as_ptr(l) as usize).or_insert_with(|| {
            let mut own = Vec::new();
            let mut services: Vec<_> = catalog::from_service_entry(l, &se.spec, &mut own)
                .into_iter()
                .map(Arc::new)
                .collect();
            // Collected in place: room for 27 `Arc`s in each `CatalogService`'s place.
            services.shrink_to_fit();
            let names = services
                .iter()
                .map(|svc| {
                    let mut names = hosts::aliases(&svc.host);
                    names.extend(svc.addresses.iter().map(|a| a.to_string()));
                    names
                })
                .collect();
            ServiceEntryMemo {
                _doc: l.clone(),
                services,
                names,
                diags: own,
            }
        });
        diags.extend(m.diags.iter().cloned());
        for (svc, names) in m.services.iter().zip(&m.names) {
            if let Some(&j) = cat.by_alias.get(&svc.host) {
                let other = &cat.services[j];
                diags.push(Diagnostic::error(
                    l.at("spec.hosts"),
                    "spec.hosts",
                    Invalid::HostTaken {
                        host: svc.host.clone(),
                        by: other.source.clone(),
                    },
                ));
                continue;
            }
            let idx = cat.services.len();
            for n in names {
                if !cat.by_alias.contains_key(n) {
                    cat.by_alias.insert(n.clone(), idx);
                }
            }
            cat.services.push(svc.clone());
        }
    }
    cat
}

fn build_subset_rules(
    loaded: &[std::sync::Arc<Loaded>],
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> subsets::SubsetRules {
    let mut rules = subsets::SubsetRules::default();
    for (i, l) in loaded.iter().enumerate() {
        let r = l.resource();
        let Resource::DestinationRule(dr) = &*r else {
            continue;
        };
        let Some(mut rule) = subsets::from_destination_rule(l, i, &dr.spec, diags) else {
            continue;
        };
        match catalog.lookup(&rule.host) {
            Some(svc) => rule.host = svc.host.clone(),
            None => diags.push(Diagnostic::warning(
                l.at("spec.host"),
                "spec.host",
                Invalid::RuleHostUnknown(rule.host.clone()),
            )),
        }
        if let Some(other) = rules.get(&rule.host) {
            diags.push(Diagnostic::error(
                l.at("spec.host"),
                "spec.host",
                Invalid::RuleHostTaken {
                    host: rule.host.clone(),
                    by: other.source.clone(),
                },
            ));
            continue;
        }
        rules.insert(rule.host.clone(), rule);
    }
    rules
}

/// Binds each VirtualService to the catalogue services its hosts name (host → index
/// into `parsed`); two VirtualServices for one host are an error naming both.
fn bind_virtual_services(
    loaded: &[std::sync::Arc<Loaded>],
    parsed: &[routes::ParsedVs],
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> HashMap<String, usize> {
    let mut owner: HashMap<String, String> = HashMap::default();
    let mut bound = HashMap::default();
    for (vs_i, vs) in parsed.iter().enumerate() {
        let l = &loaded[vs.resource];
        for (h_i, h) in vs.hosts.iter().enumerate() {
            if let Some(why) = hosts::invalid(h) {
                let p = format!("spec.hosts[{h_i}]");
                let host = h.chars().take(64).collect();
                diags.push(Diagnostic::error(
                    l.at(&p),
                    p,
                    Invalid::HostName { host, why },
                ));
                continue;
            }
            let matched: Vec<String> = match catalog.lookup(h) {
                Some(svc) => vec![svc.host.clone()],
                None if h.starts_with('*') => catalog
                    .services
                    .iter()
                    .filter(|s| hosts::wildcard_covers(h, &s.host))
                    .map(|s| s.host.clone())
                    .collect(),
                // A host that names no service (api.wilsontest.com) is a Host-header alias.
                None => Vec::new(),
            };
            let claim = if matched.is_empty() {
                vec![h.clone()]
            } else {
                matched.clone()
            };
            for c in claim {
                match owner.get(&c) {
                    Some(other) if *other != vs.source => {
                        let p = format!("spec.hosts[{h_i}]");
                        let problem = Invalid::HostTwice {
                            first: other.clone(),
                            second: vs.source.clone(),
                            host: c.clone(),
                        };
                        diags.push(Diagnostic::error(l.at(&p), p, problem));
                    }
                    _ => {
                        owner.insert(c, vs.source.clone());
                    }
                }
            }
            for t in matched {
                bound.entry(t).or_insert(vs_i);
            }
        }
    }
    bound
}
