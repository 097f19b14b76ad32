//! Request routing for the proxy path — pure, shared by the live proxy and `lb explain`.
//!
//! The Host header selects the VirtualService (exact host, then wildcard); only when it
//! names none does the VirtualService bound to the dialled service apply (lb's fix for
//! the seed's `proxy_set_header Host $host` trap). Rules are tried in order; the first
//! whose match blocks (ORed, each an AND) hold wins. No rule: 404.

pub mod decide;
pub mod matchers;
pub mod path;
pub mod policy;
pub mod shards;

use crate::smallmap::PortMap;

use std::net::{SocketAddr, SocketAddrV4};

use http::HeaderMap;
use regex::Regex;

pub use decide::{Local, Pick, Target, Verdict, decide};
pub use matchers::{MatchBlock, RequestView, StrMatch};
use shards::{ChunkedVec, ShardedMap};

/// The proxy's routing table: one immutable snapshot per applied configuration. Its
/// maps hash with foldhash (looked up per request; SipHash showed in the profile):
/// their keys come from the configuration, so a client's Host can only miss.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Shared with the compiler's slices: a change rebuilds only its slice's vhosts.
    /// (The table's maps are in shards shared between its copies: shards.rs.)
    pub vhosts: ChunkedVec<std::sync::Arc<VirtualHost>>,
    /// Every exact name (and address) a VirtualService answers to → vhost index.
    pub hosts: ShardedMap<std::sync::Arc<str>, usize>,
    /// `*.example.com` patterns, longest first.
    pub wildcards: Vec<(String, usize)>,
    /// Dialled service address → vhost bound to that service.
    pub by_service: ShardedMap<SocketAddrV4, usize>,
    /// Whether any rule matches on headers: the lean path builds a request's header
    /// map only then.
    pub matches_headers: bool,
    /// Dialled service address → `ns/name` (metrics, unknown-host counting).
    pub services: ShardedMap<SocketAddrV4, std::sync::Arc<str>>,
    /// Every endpoint of every service: the proxy never forwards elsewhere. (How many
    /// of the compiler's slices name it: one drops out when its last slice does.)
    /// IPv4 only, as the model serves (an IPv6 endpoint is warned about and left
    /// out): 8 bytes a key where a `SocketAddr` is 32.
    pub endpoints: ShardedMap<SocketAddrV4, u32>,
    /// How request paths are normalised before matching and forwarding.
    pub normalization: path::Normalization,
}

#[derive(Debug)]
pub struct VirtualHost {
    /// `ns/name` of the VirtualService.
    pub name: String,
    pub rules: Vec<Rule>,
    /// Why its services take the proxy path (`lb status`, `lb explain`), None: kernel.
    pub proxy_reason: Option<String>,
}

impl VirtualHost {
    /// A place in the table no name leads to (its slice is gone).
    pub fn unused() -> Self {
        VirtualHost {
            name: String::new(),
            rules: Vec::new(),
            proxy_reason: None,
        }
    }

    pub fn is_unused(&self) -> bool {
        self.name.is_empty()
    }
}

#[derive(Debug)]
pub struct Rule {
    pub name: Option<String>,
    /// Empty: matches every request.
    pub matches: Vec<MatchBlock>,
    pub action: Action,
    pub edits: Edits,
    /// `timeout`, `retries` and `fault` (shared: see [`policy::shared`]).
    pub policy: std::sync::Arc<policy::Policy>,
    /// lb's sticky subsets (`lb.dev/sticky-subsets` on the VirtualService): the
    /// destination follows this key of the request, by weight, instead of a draw.
    pub sticky: Option<policy::HashKey>,
    /// `mirror` / `mirrors`: where a copy of each request goes, for a share (0–100 %)
    /// of the requests.
    pub mirrors: Vec<(Destination, f64)>,
}

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

/// A rule's or a destination's header edits, requests' and answers': most have none,
/// so they are boxed and absent then (two `HeaderOps` inline were 144 bytes of every
/// rule and destination of the route table).
#[derive(Debug, Default, Clone)]
pub struct Edits(Option<Box<[HeaderOps; 2]>>);

static NO_OPS: HeaderOps = HeaderOps {
    set: Vec::new(),
    add: Vec::new(),
    remove: Vec::new(),
};

impl Edits {
    pub fn new(request: HeaderOps, response: HeaderOps) -> Self {
        let none = request.is_empty() && response.is_empty();
        Edits((!none).then(|| Box::new([request, response])))
    }

    pub fn request(&self) -> &HeaderOps {
        self.0.as_ref().map_or(&NO_OPS, |e| &e[0])
    }

    pub fn response(&self) -> &HeaderOps {
        self.0.as_ref().map_or(&NO_OPS, |e| &e[1])
    }
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n, v.clone());
        }
        for (n, v) in &self.add {
            h.append(n, v.clone());
        }
    }
}

/// What a rule does (its rare parts boxed: 32 bytes instead of 128 in every rule).
#[derive(Debug)]
pub enum Action {
    Route {
        destinations: Vec<Destination>,
        /// None: nothing rewritten.
        rewrite: Option<Box<Rewrite>>,
    },
    Redirect(Box<Redirect>),
    Direct {
        status: u16,
        body: Option<String>,
    },
}

#[derive(Debug, Default)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub uri_regex: Option<(Regex, String)>,
    pub authority: Option<String>,
}

impl Rewrite {
    /// As a route holds it: None if it rewrites nothing.
    pub fn boxed(self) -> Option<Box<Rewrite>> {
        let none = self.uri.is_none() && self.uri_regex.is_none() && self.authority.is_none();
        (!none).then(|| Box::new(self))
    }
}

#[derive(Debug)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub port: Option<u16>,
    pub derive_from_request: bool,
    pub code: u16,
}

#[derive(Debug)]
pub struct Destination {
    /// Canonical host.
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
    /// Configured relative weight (a single destination gets everything).
    pub weight: u32,
    /// Endpoints per service port of the destination (selected by the subset).
    pub endpoints: PortMap<Box<[SocketAddr]>>,
    /// Name for metrics and logs: `v0`, or `host/v0` for another host.
    pub label: String,
    /// The DestinationRule's load balancer and outlier detection for it (shared: see
    /// [`policy::shared`]).
    pub policy: std::sync::Arc<policy::DestinationPolicy>,
    /// Ports whose `portLevelSettings` make their policy another one.
    pub port_policies: Box<[(u16, policy::DestinationPolicy)]>,
    /// Requests in flight to each endpoint, by port, as `endpoints` (LEAST_REQUEST's
    /// counts: per destination and endpoint, as Envoy's per cluster host; a new table
    /// starts them at 0).
    pub in_flight: PortMap<Box<[std::sync::atomic::AtomicU32]>>,
    /// The route destination's own header edits, applied before the rule's (which win,
    /// as Envoy's route-level edits win over a weighted cluster's by default).
    pub edits: Edits,
    /// ROUND_ROBIN's next endpoint.
    pub next: std::sync::atomic::AtomicUsize,
}

impl Destination {
    /// A destination of `host` (and `subset`) over `endpoints`: weight 1, no port
    /// named, Istio's default policy, no header edits — what compile starts from.
    pub fn new(
        host: String,
        subset: Option<String>,
        label: String,
        endpoints: PortMap<Box<[SocketAddr]>>,
    ) -> Self {
        Destination {
            in_flight: Self::counters(&endpoints),
            endpoints,
            host,
            subset,
            port: None,
            weight: 1,
            label,
            policy: <policy::DestinationPolicy as policy::Defaults>::defaults().clone(),
            port_policies: Box::default(),
            next: Default::default(),
            edits: Edits::default(),
        }
    }

    /// The endpoints a request dialled to port `dialled` goes to (empty: none).
    pub fn endpoints_for(&self, dialled: Option<u16>) -> &[SocketAddr] {
        self.port_for(dialled)
            .and_then(|p| self.endpoints.get(p))
            .map_or(&[][..], |e| &e[..])
    }

    /// Counters for `endpoints`, zeroed: one per endpoint of each port.
    pub fn counters(
        endpoints: &PortMap<Box<[SocketAddr]>>,
    ) -> PortMap<Box<[std::sync::atomic::AtomicU32]>> {
        endpoints
            .iter()
            .map(|(p, eps)| (p, eps.iter().map(|_| Default::default()).collect()))
            .collect()
    }

    /// The in-flight counts of the endpoints at `port` (as [`endpoints_for`]'s).
    ///
    /// [`endpoints_for`]: Self::endpoints_for
    pub fn in_flight_at(&self, port: Option<u16>) -> &[std::sync::atomic::AtomicU32] {
        port.and_then(|p| self.in_flight.get(p))
            .map_or(&[][..], |c| &c[..])
    }

    /// The policy at service port `port` (`portLevelSettings`, else the destination's).
    pub fn policy_at(&self, port: Option<u16>) -> &policy::DestinationPolicy {
        port.and_then(|p| self.port_policies.iter().find(|(q, _)| *q == p))
            .map_or(&*self.policy, |(_, pol)| pol)
    }

    /// The service port a request dialled to `dialled` goes to.
    pub fn port_for(&self, dialled: Option<u16>) -> Option<u16> {
        self.port
            .or_else(|| dialled.filter(|p| self.endpoints.contains_key(*p)))
            .or_else(|| (self.endpoints.len() == 1).then(|| self.endpoints.keys().next())?)
    }
}

/// A request as routing sees it.
pub struct Request<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// Path and query as received.
    pub path_and_query: &'a str,
    /// Host header (or :authority) as sent.
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    /// The service address the client dialled (from the original-destination map).
    pub dialled: Option<SocketAddrV4>,
    /// The client's address (`consistentHash.useSourceIp`).
    pub peer: Option<std::net::IpAddr>,
}

/// Which VirtualService and rule a request hits, and the request after rewrites.
#[derive(Debug)]
pub struct Selection<'t> {
    pub vhost: Option<&'t VirtualHost>,
    /// Why the vhost was chosen: the Host header, or the dialled service.
    pub by_dialled_service: bool,
    pub rule: Option<(usize, &'t Rule)>,
    /// Normalised path (no query) and the query with its `?`.
    pub path: String,
    pub query: String,
    /// Why earlier rules did not match (for `lb explain`).
    pub skipped: Vec<String>,
}

/// Host header to the name it is looked up by: lower case, no port, no trailing dot.
pub fn host_key(authority: &str) -> String {
    host_key_cow(authority).into_owned()
}

/// [`host_key`] without allocating when the Host is already in canonical form.
fn host_key_cow(authority: &str) -> std::borrow::Cow<'_, str> {
    // Common case: lower case, maybe a numeric port, no IPv6 brackets, no trailing dot.
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let canonical = !host.is_empty()
        && !host.ends_with('.')
        && host
            .bytes()
            .all(|b| b != b':' && !b.is_ascii_uppercase() && b != b'[');
    if canonical {
        return std::borrow::Cow::Borrowed(host);
    }
    std::borrow::Cow::Owned(host_key_slow(authority))
}

fn host_key_slow(authority: &str) -> String {
    let h = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .map(|s| format!("{s}]"))
            .unwrap_or_default()
    } else {
        authority
            .rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(authority, |(h, _)| h)
            .to_string()
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

impl RouteTable {
    /// The vhost the Host header names (exact, then the longest wildcard).
    pub fn vhost_by_host(&self, authority: &str) -> Option<usize> {
        let key = host_key_cow(authority);
        self.hosts.get(key.as_ref()).copied().or_else(|| {
            self.wildcards
                .iter()
                .find(|(w, _)| crate::hosts::wildcard_covers(w, &key))
                .map(|(_, i)| *i)
        })
    }

    /// Finds the VirtualService and rule for a request (the proxy's hot path: no
    /// account of skipped rules); Err: the path does not normalise (400).
    pub fn select<'t>(&'t self, req: &Request<'_>) -> Result<Selection<'t>, path::BadPath> {
        self.select_with(req, false)
    }

    /// [`select`](Self::select), saying in `skipped` why each earlier rule did not
    /// match (`lb explain`).
    pub fn select_explained<'t>(
        &'t self,
        req: &Request<'_>,
    ) -> Result<Selection<'t>, path::BadPath> {
        self.select_with(req, true)
    }

    fn select_with<'t>(
        &'t self,
        req: &Request<'_>,
        explain: bool,
    ) -> Result<Selection<'t>, path::BadPath> {
        let (raw_path, query) = path::split_query(req.path_and_query);
        let path = path::normalize(raw_path, self.normalization)?;
        let (vhost, by_dialled) = match self.vhost_by_host(req.authority) {
            Some(i) => (Some(&*self.vhosts[i]), false),
            None => (
                req.dialled
                    .and_then(|d| self.by_service.get(&d))
                    .map(|i| &*self.vhosts[*i]),
                true,
            ),
        };
        let mut sel = Selection {
            vhost,
            by_dialled_service: by_dialled && vhost.is_some(),
            rule: None,
            path,
            query: query.to_string(),
            skipped: Vec::new(),
        };
        let Some(vh) = vhost else { return Ok(sel) };
        let view = RequestView {
            method: req.method,
            scheme: req.scheme,
            authority: req.authority,
            path: &sel.path,
            query: query.strip_prefix('?').unwrap_or(""),
            headers: req.headers,
            port: req.dialled.map(|d| d.port()),
        };
        for (i, rule) in vh.rules.iter().enumerate() {
            if rule.matches.is_empty() {
                sel.rule = Some((i, rule));
                return Ok(sel);
            }
            // Reasons are put into words only for `lb explain` (not on the proxy's path).
            let mut reasons = Vec::new();
            for m in &rule.matches {
                match m.mismatch(&view) {
                    None => {
                        sel.rule = Some((i, rule));
                        return Ok(sel);
                    }
                    Some(why) if explain => reasons.push(why.to_string()),
                    Some(_) => {}
                }
            }
            if !explain {
                continue;
            }
            sel.skipped.push(format!(
                "rule {i}{}: {}",
                rule.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                reasons.join("; ")
            ));
        }
        Ok(sel)
    }
}

impl Selection<'_> {
    /// The path and query the backend receives (after `rewrite.uri` /
    /// `uriRegexRewrite`), and the authority (after `rewrite.authority`).
    pub fn rewritten(&self, req: &Request<'_>) -> (String, String) {
        let mut path = self.path.clone();
        let mut authority = req.authority.to_string();
        // `OPTIONS *` has no path to rewrite.
        if let Some((_, rule)) = self.rule
            && let Action::Route {
                rewrite: Some(rewrite),
                ..
            } = &rule.action
            && path != "*"
        {
            if let Some(uri) = &rewrite.uri {
                let matched = self
                    .matched_block(rule)
                    .map_or(1.min(path.len()), |m| m.matched_len(&path));
                path = path::rewrite_prefix(&path, matched, uri);
            } else if let Some((re, with)) = &rewrite.uri_regex {
                path = re.replace_all(&path, with.as_str()).into_owned();
            }
            if let Some(a) = &rewrite.authority {
                authority = a.clone();
            }
        }
        // A request without a Host value (HTTP/1.0 without Host, or an empty Host):
        // the upstream (HTTP/1.1) gets the address the client dialled.
        if authority.is_empty()
            && let Some(d) = req.dialled
        {
            authority = d.to_string();
        }
        (format!("{path}{}", self.query), authority)
    }

    fn matched_block<'r>(&self, rule: &'r Rule) -> Option<&'r MatchBlock> {
        // Re-run the blocks against the normalised path: the first that matches is the
        // one whose prefix the rewrite replaces (only uri conditions matter here).
        rule.matches.iter().find(|m| {
            m.uri
                .as_ref()
                .is_none_or(|u| u.matches(&self.path, m.ignore_uri_case))
        })
    }
}

/// Picks a destination by weight (per request).
pub fn pick_weighted(dests: &[Destination]) -> Option<&Destination> {
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return dests.first();
    }
    let mut n = fastrand::u64(0..total);
    for d in dests {
        let w = u64::from(d.weight);
        if n < w {
            return Some(d);
        }
        n -= w;
    }
    dests.last()
}

#[cfg(test)]
mod tests;

/// The `Location` of a redirect: Istio's `redirect` applied to the request (query kept).
pub fn redirect_location(rd: &Redirect, sel: &Selection<'_>, req: &Request<'_>) -> String {
    let scheme = rd.scheme.as_deref().unwrap_or(req.scheme);
    let host = rd
        .authority
        .clone()
        .unwrap_or_else(|| host_key(req.authority));
    let port = match (rd.port, rd.derive_from_request) {
        (Some(p), _) => Some(p),
        (None, true) => req
            .authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok()),
        (None, false) => None,
    };
    let path = rd.uri.clone().unwrap_or_else(|| sel.path.clone());
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{path}{}", sel.query)
}
