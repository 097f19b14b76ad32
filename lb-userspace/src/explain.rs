//! `lb explain`: one request, offline, through the same routing code as the live proxy.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use http::HeaderMap;
use serde::Serialize;

use lb_common::mode;

use crate::compile::{Plan, sock_addr};
use crate::proxy::h1;
use crate::route::{self, Action, Request, Verdict, decide::Forced};

/// The request to explain.
pub struct Query {
    pub host: String,
    pub path: String,
    pub method: String,
    pub headers: HeaderMap,
    /// The service address dialled; without it routing is Host-only.
    pub to: Option<SocketAddrV4>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Explanation {
    pub virtual_service: Option<String>,
    pub rule: Option<usize>,
    pub route_name: Option<String>,
    pub datapath: &'static str,
    pub action: &'static str,
    pub destinations: Vec<ExplainedDestination>,
    pub request: ExplainedRequest,
    pub response: Option<ExplainedResponse>,
    /// The rule's timeout, retries and fault, as the proxy applies them.
    pub policy: Option<ExplainedPolicy>,
    /// Why earlier rules did not match, and how the VirtualService was chosen.
    #[serde(skip)]
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ExplainedDestination {
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
    pub weight: u32,
    /// Endpoints it has at that port (0: requests picking it get 503).
    pub endpoints: usize,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ExplainedRequest {
    pub method: String,
    pub path: String,
    pub host: String,
}

/// A rule's traffic policy (durations in milliseconds, shares in percent).
#[derive(Debug, Serialize, PartialEq)]
pub struct ExplainedPolicy {
    pub timeout_ms: Option<u128>,
    /// Retries after the first try (Istio's default 2 when the rule sets none).
    pub retries: u32,
    pub per_try_timeout_ms: Option<u128>,
    pub retry_on: String,
    pub delay_ms: Option<u128>,
    pub delay_percent: Option<f64>,
    pub abort_status: Option<u16>,
    pub abort_percent: Option<f64>,
    /// Mirror destinations (label) and the share of requests copied to each.
    pub mirrors: Vec<(String, f64)>,
}

impl ExplainedPolicy {
    fn of(p: &route::policy::Policy, mirrors: &[(route::Destination, f64)]) -> Self {
        ExplainedPolicy {
            mirrors: mirrors.iter().map(|(d, s)| (d.label.clone(), *s)).collect(),
            timeout_ms: p.timeout.map(|t| t.as_millis()),
            retries: p.retry.attempts,
            per_try_timeout_ms: p.retry.per_try.map(|t| t.as_millis()),
            retry_on: p.retry.on.text.clone(),
            delay_ms: p.fault.delay.map(|(d, _)| d.as_millis()),
            delay_percent: p.fault.delay.map(|(_, s)| s),
            abort_status: p.fault.abort.map(|(s, _)| s),
            abort_percent: p.fault.abort.map(|(_, s)| s),
        }
    }

    fn render(&self) -> String {
        let mut parts = vec![match self.timeout_ms {
            Some(t) => format!("timeout {t} ms"),
            None => "no timeout".to_string(),
        }];
        parts.push(match (self.retries, self.per_try_timeout_ms) {
            (0, _) => "no retries".to_string(),
            (n, Some(t)) => format!("{n} retries ({t} ms each) on {}", self.retry_on),
            (n, None) => format!("{n} retries on {}", self.retry_on),
        });
        if let (Some(s), Some(p)) = (self.abort_status, self.abort_percent) {
            parts.push(format!("fault: {p}% of requests answered {s} (FI)"));
        }
        if let (Some(d), Some(p)) = (self.delay_ms, self.delay_percent) {
            parts.push(format!("fault: {p}% of requests delayed {d} ms (DI)"));
        }
        for (m, p) in &self.mirrors {
            parts.push(format!("mirror: {p}% of requests copied to {m}"));
        }
        parts.join("; ")
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ExplainedResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
}

/// Explains how lb routes `q` under `plan`: the proxy's front end, its rule
/// selection and its decision ([`route::decide`]), asked once per destination of the
/// rule so every share of the requests is shown.
pub fn explain(plan: &Plan, q: &Query) -> Explanation {
    let table = &*plan.proxy;
    // The proxy's front end first: the same verdict on the request head.
    let mut head: Vec<httparse::Header<'_>> = vec![httparse::Header {
        name: "host",
        value: q.host.as_bytes(),
    }];
    head.extend(q.headers.iter().map(|(n, v)| httparse::Header {
        name: n.as_str(),
        value: v.as_bytes(),
    }));
    let checked = match h1::request::checked(&q.method, &q.path, 1, &head, b"") {
        Ok(c) => c,
        Err(refusal) => return refused(q, refusal.status(), refusal.to_string()),
    };
    let authority = checked.authority.unwrap_or("");
    let req = Request {
        method: &q.method,
        scheme: "http",
        path_and_query: checked.target.path_and_query(),
        authority,
        headers: &q.headers,
        dialled: q.to,
        peer: None,
    };
    let sel = match table.select_explained(&req) {
        Ok(sel) => sel,
        Err(_) => {
            let r = h1::Refusal::BadPath;
            return refused(q, r.status(), r.to_string());
        }
    };
    let dialled = q.to.and_then(|to| plan.kernel.services.get(&sock_addr(to)));
    let dialled_mode = dialled.map(|s| s.mode == mode::PROXY);
    let datapath = match (dialled_mode, sel.vhost) {
        (Some(true), _) => "proxy",
        (Some(false), _) => "kernel",
        (None, Some(vh)) if vh.proxy_reason.is_none() => "kernel",
        (None, _) => "proxy",
    };
    let mut notes = Vec::new();
    match (sel.vhost, sel.by_dialled_service) {
        (Some(vh), false) => notes.push(format!("Host {:?} selects VirtualService {}", q.host, vh.name)),
        (Some(vh), true) => notes.push(format!("Host {:?} names no VirtualService host; the dialled service's VirtualService {} applies", q.host, vh.name)),
        (None, _) => notes.push(format!("Host {:?} names no VirtualService host{}", q.host, if q.to.is_some() { " and the dialled service has none" } else { " (no --to: Host-only)" })),
    }
    if let Some(vh) = sel.vhost {
        notes.push(match (&vh.proxy_reason, dialled) {
            (Some(r), _) => format!("datapath proxy: {r}"),
            // Weights only, but the dialled service takes the proxy for another reason.
            (None, Some(svc)) if svc.mode == mode::PROXY => format!(
                "datapath proxy: {}",
                crate::compile::reason::describe(svc.reason)
            ),
            (None, _) => "datapath kernel: weights only (per connection)".to_string(),
        });
    }
    notes.extend(sel.skipped.iter().map(|s| format!("skipped {s}")));
    // The Host as the proxy writes it (`Verdict::Upstream`'s host, or the client's).
    let host_as_sent = checked.host == Some(authority);
    let (path, host) = sel.rewritten(&req);
    let mut out = Explanation {
        virtual_service: sel.vhost.map(|v| v.name.clone()),
        rule: sel.rule.map(|(i, _)| i),
        route_name: sel.rule.and_then(|(_, r)| r.name.clone()),
        datapath,
        action: "no_route",
        destinations: Vec::new(),
        request: ExplainedRequest {
            method: q.method.clone(),
            path,
            host,
        },
        response: None,
        policy: sel.rule.and_then(|(_, r)| {
            matches!(r.action, Action::Route { .. })
                .then(|| ExplainedPolicy::of(&r.policy, &r.mirrors))
        }),
        notes,
    };
    let destinations = match sel.rule.map(|(_, r)| &r.action) {
        Some(Action::Route { destinations, .. }) => &destinations[..],
        _ => &[],
    };
    // lb's sticky subsets: the request's key decides the group, not a draw.
    if let Some(k) = sel.rule.and_then(|(_, r)| r.sticky.as_ref()) {
        out.notes.push(match k.of(&req) {
            Some(key) => format!(
                "sticky subsets: this request's key lands in {}",
                route::policy::by_weight(key, destinations, |d| d.weight)
                    .map_or("nothing", |d| d.label.as_str())
            ),
            None => format!("sticky subsets: the request has no {k:?} key, so a draw by weight"),
        });
    }
    // What the proxy decides for the share of each destination it may pick (weight
    // above 0, or the first when every weight is 0); a rule without destinations
    // (redirect, direct response, none) is decided once.
    let all_zero = destinations.iter().all(|d| d.weight == 0);
    let pickable: Vec<usize> = (0..destinations.len().max(1))
        .filter(|&i| {
            destinations
                .get(i)
                .is_none_or(|d| d.weight > 0 || (all_zero && i == 0))
        })
        .collect();
    let verdicts: Vec<Verdict<'_>> = pickable
        .iter()
        .map(|&i| route::decide(table, &sel, &req, host_as_sent, &mut Forced(i)))
        .collect();
    for (&i, v) in pickable.iter().zip(&verdicts) {
        if let (Some(d), Verdict::Upstream(t)) = (destinations.get(i), v)
            && let Some(c) = &t.set_cookie
        {
            out.notes.push(format!(
                "requests picking {} have no hash cookie: the answer sets one (Set-Cookie: {c})",
                d.label
            ));
        }
        if let (Some(d), Verdict::Local(l)) = (destinations.get(i), v) {
            out.notes.push(format!(
                "requests picking {} get {}: {}",
                d.label,
                l.status,
                l.body.trim_end()
            ));
        }
    }
    let dialled_port = q.to.map(|t| t.port());
    for d in destinations {
        let port = d.port_for(dialled_port);
        out.destinations.push(ExplainedDestination {
            host: d.host.clone(),
            subset: d.subset.clone(),
            port: port.unwrap_or(0),
            weight: d.weight,
            endpoints: port.and_then(|p| d.endpoints.get(p)).map_or(0, |e| e.len()),
        });
    }
    // Routed when any share is forwarded; otherwise every share gets lb's answer.
    if verdicts.iter().any(|v| matches!(v, Verdict::Upstream(_))) {
        out.action = "route";
        return out;
    }
    let Some(Verdict::Local(l)) = verdicts.first() else {
        return out;
    };
    out.action = match l.flag {
        "RD" => "redirect",
        "DR" => "direct_response",
        "FI" => "fault_abort",
        "UH" | "UF" => "route",
        _ => "no_route",
    };
    out.response = Some(ExplainedResponse {
        status: l.status,
        headers: l
            .location
            .iter()
            .map(|loc| ("location".to_string(), loc.clone()))
            .collect(),
    });
    out
}

/// The answer to a request lb's front end refuses before routing.
fn refused(q: &Query, status: u16, why: String) -> Explanation {
    Explanation {
        virtual_service: None,
        rule: None,
        route_name: None,
        datapath: "proxy",
        action: "refused",
        destinations: Vec::new(),
        request: ExplainedRequest {
            method: q.method.clone(),
            path: q.path.clone(),
            host: q.host.clone(),
        },
        response: Some(ExplainedResponse {
            status,
            headers: BTreeMap::new(),
        }),
        policy: None,
        notes: vec![format!("refused by the proxy's front end: {why}")],
    }
}

impl Explanation {
    /// A short human explanation.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for n in &self.notes {
            s.push_str(&format!("- {n}\n"));
        }
        match (self.rule, self.action) {
            (Some(i), a) => s.push_str(&format!(
                "=> rule {i}{} ({a})\n",
                self.route_name
                    .as_deref()
                    .map(|n| format!(" {n:?}"))
                    .unwrap_or_default()
            )),
            (None, "refused") => s.push_str("=> refused before routing\n"),
            (None, _) => s.push_str("=> no rule matches: 404\n"),
        }
        let total: u32 = self.destinations.iter().map(|d| d.weight).sum();
        for d in &self.destinations {
            let pct = if total > 0 {
                f64::from(d.weight) * 100.0 / f64::from(total)
            } else {
                0.0
            };
            s.push_str(&format!(
                "   {}{} port {} weight {} ({pct:.0}%), {} endpoint(s)\n",
                d.host,
                d.subset
                    .as_deref()
                    .map(|x| format!(" subset {x}"))
                    .unwrap_or_default(),
                d.port,
                d.weight,
                d.endpoints
            ));
        }
        s.push_str(&format!(
            "   backend receives: {} {} Host: {}\n",
            self.request.method, self.request.path, self.request.host
        ));
        if let Some(r) = &self.response {
            s.push_str(&format!(
                "   lb answers {}{}\n",
                r.status,
                r.headers
                    .get("location")
                    .map(|l| format!(" location {l}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(p) = &self.policy
            && self.datapath == "proxy"
        {
            s.push_str(&format!("   policy: {}\n", p.render()));
        }
        s.push_str(&format!("   datapath: {}\n", self.datapath));
        s
    }
}
