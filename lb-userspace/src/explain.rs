//! `lb explain`: one request, offline, through the same routing code as the live proxy.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use http::HeaderMap;
use serde::Serialize;

use crate::model::Model;
use crate::proxy::h1;
use crate::route::{self, Action, Request};

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
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ExplainedRequest {
    pub method: String,
    pub path: String,
    pub host: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ExplainedResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
}

/// Explains how lb routes `q` under `model`.
pub fn explain(model: &Model, q: &Query) -> Explanation {
    let table = &model.routes;
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
    let req = Request {
        method: &q.method,
        scheme: "http",
        path_and_query: checked.target.path_and_query(),
        authority: checked.authority.unwrap_or(""),
        headers: &q.headers,
        dialled: q.to,
    };
    let sel = match table.select_explained(&req) {
        Ok(sel) => sel,
        Err(e) => return refused(q, 400, e.to_string()),
    };
    let dialled_service =
        q.to.and_then(|to| model.services.iter().find(|s| s.frontend == to));
    let datapath = match (dialled_service, sel.vhost) {
        (Some(s), _) => {
            if s.proxy_reason.is_some() {
                "proxy"
            } else {
                "kernel"
            }
        }
        (None, Some(vh)) => {
            if vh.proxy_reason.is_some() {
                "proxy"
            } else {
                "kernel"
            }
        }
        (None, None) => "proxy",
    };
    let mut notes = Vec::new();
    match (sel.vhost, sel.by_dialled_service) {
        (Some(vh), false) => notes.push(format!("Host {:?} selects VirtualService {}", q.host, vh.name)),
        (Some(vh), true) => notes.push(format!("Host {:?} names no VirtualService host; the dialled service's VirtualService {} applies", q.host, vh.name)),
        (None, _) => notes.push(format!("Host {:?} names no VirtualService host{}", q.host, if q.to.is_some() { " and the dialled service has none" } else { " (no --to: Host-only)" })),
    }
    if let Some(vh) = sel.vhost {
        notes.push(match &vh.proxy_reason {
            Some(r) => format!("datapath proxy: {r}"),
            None => "datapath kernel: weights only (per connection)".to_string(),
        });
    }
    notes.extend(sel.skipped.iter().map(|s| format!("skipped {s}")));
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
        response: Some(ExplainedResponse {
            status: 404,
            headers: BTreeMap::new(),
        }),
        notes,
    };
    let Some((_, rule)) = sel.rule else {
        return out;
    };
    let dialled_port = q.to.map(|t| t.port());
    match &rule.action {
        Action::Route { destinations, .. } => {
            out.action = "route";
            out.response = None;
            let mut any_endpoint = false;
            for d in destinations {
                let port = d.port_for(dialled_port);
                any_endpoint |= d.weight > 0
                    && port
                        .and_then(|p| d.endpoints.get(&p))
                        .is_some_and(|e| !e.is_empty());
                out.destinations.push(ExplainedDestination {
                    host: d.host.clone(),
                    subset: d.subset.clone(),
                    port: port.unwrap_or(0),
                    weight: d.weight,
                });
            }
            if !any_endpoint {
                out.response = Some(ExplainedResponse {
                    status: 503,
                    headers: BTreeMap::new(),
                });
                out.notes
                    .push("no destination with weight has an endpoint: 503".into());
            }
        }
        Action::Redirect(rd) => {
            out.action = "redirect";
            let location = route::redirect_location(rd, &sel, &req);
            out.response = Some(ExplainedResponse {
                status: rd.code,
                headers: [("location".to_string(), location)].into(),
            });
        }
        Action::Direct { status, .. } => {
            out.action = "direct_response";
            out.response = Some(ExplainedResponse {
                status: *status,
                headers: BTreeMap::new(),
            });
        }
    }
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
                "   {}{} port {} weight {} ({pct:.0}%)\n",
                d.host,
                d.subset
                    .as_deref()
                    .map(|x| format!(" subset {x}"))
                    .unwrap_or_default(),
                d.port,
                d.weight
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
        s.push_str(&format!("   datapath: {}\n", self.datapath));
        s
    }
}
