//! The admin listener: `/ready`, `/source` (what the configuration is read from and
//! how current it is), `/config_dump` (the active plan), `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use lb_common::counters;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::Shared;
use crate::route::{Action, RouteTable, matchers::describe};

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&shared, req.uri().path())) }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(shared: &Shared, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/ready" => {
            let (ready, text) = shared.source.borrow().readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "text/plain", text)
        }
        "/source" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&*shared.source.borrow()).unwrap_or_default(),
        ),
        "/config_dump" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&dump(&shared.table.borrow())).unwrap_or_default(),
        ),
        "/metrics" => {
            let kernel = shared.kernel.as_ref().and_then(|k| k.lock().ok()).map(|k| {
                vec![
                    ("sk_msg_redirected", "Messages sk_msg redirected straight into the peer socket (client <-> proxy)", k.counter(counters::SK_MSG_REDIRECTED)),
                    ("proxy_handoffs", "Connects the kernel handed to the proxy", k.counter(counters::PROXY_HANDOFFS)),
                    ("proxy_fallbacks", "Proxy-path connects that found no proxy and took the kernel split", k.counter(counters::PROXY_FALLBACKS)),
                    ("sk_msg_stayed_on_tcp", "Sockets whose peer was not in the socket map at their first message; their bytes stay on TCP", k.counter(counters::SK_MSG_STAYED_ON_TCP)),
                    ("sk_msg_skipped", "Client connections kept off the socket map: their process's recent connections to the service carried one message each", k.counter(counters::SK_MSG_SKIPPED)),
                    ("xdp_proxy_flows", "North-south flows XDP handed to the proxy", k.counter(counters::XDP_PROXY_FLOWS)),
                    ("xdp_remote_passed", "North-south flows whose picked endpoint's node is behind an interface lb does not serve, left to the stack", k.counter(counters::XDP_REMOTE_PASSED)),
                    ("xdp_remote_flows", "North-south flows XDP forwarded to another node's endpoint (SNAT)", k.counter(counters::XDP_REMOTE_FLOWS)),
                    ("xdp_no_neigh", "North-south packets dropped while their next hop's link-layer address was resolved", k.counter(counters::XDP_NO_NEIGH)),
                    ("xdp_snat_exhausted", "New north-south flows to another node dropped: no SNAT port free", k.counter(counters::XDP_SNAT_EXHAUSTED)),
                    ("xdp_proxy_passed", "North-south packets to proxy-path services passed to the stack (the proxy listens on loopback only)", k.counter(counters::XDP_PROXY_PASSED)),
                ]
            });
            let conns = &shared.conns;
            let mut counters = kernel.unwrap_or_default();
            counters.push(("proxy_connections_evicted", "Connections waiting for a request head closed to make room for a new one at --max-connections", conns.evicted.load(Relaxed)));
            counters.push(("proxy_connections_refused", "Connections refused with 503 at --max-connections, every one held having a request in flight", conns.refused.load(Relaxed)));
            let mut gauges = shared.source.borrow().gauges();
            gauges.push((
                "proxy_connections",
                "Client connections the proxy holds",
                String::new(),
                conns.open() as u64,
            ));
            gauges.push((
                "proxy_connections_max",
                "--max-connections",
                String::new(),
                shared.front.bounds.max_connections as u64,
            ));
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                shared.metrics.render(&counters, &gauges),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /ready, /source, /config_dump or /metrics\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// The active routing table as JSON.
pub fn dump(t: &RouteTable) -> Value {
    let vhosts: Vec<Value> = t
        .vhosts
        .iter()
        .filter(|vh| !vh.is_unused())
        .map(|vh| {
            let rules: Vec<Value> = vh
                .rules
                .iter()
                .map(|r| {
                    let matches: Vec<Value> = r
                        .matches
                        .iter()
                        .map(|m| {
                            json!({
                                "uri": m.uri.as_ref().map(describe),
                                "method": m.method.as_ref().map(describe),
                                "authority": m.authority.as_ref().map(describe),
                                "headers": m.headers.iter().map(|(k, v)| format!("{k}: {}", describe(v))).collect::<Vec<_>>(),
                                "without_headers": m.without_headers.iter().map(|(k, v)| format!("{k}: {}", describe(v))).collect::<Vec<_>>(),
                                "query_params": m.query_params.iter().map(|(k, v)| format!("{k}: {}", describe(v))).collect::<Vec<_>>(),
                                "port": m.port,
                            })
                        })
                        .collect();
                    let action = match &r.action {
                        Action::Route { destinations, rewrite } => {
                            let none = crate::route::Rewrite::default();
                            let rewrite = rewrite.as_deref().unwrap_or(&none);
                            json!({
                            "route": destinations.iter().map(|d| json!({"host": d.host, "subset": d.subset, "port": d.port, "weight": d.weight, "endpoints": d.endpoints.iter().map(|(p, e)| (p.to_string(), e.iter().map(|a| a.to_string()).collect::<Vec<_>>())).collect::<std::collections::BTreeMap<_, _>>()})).collect::<Vec<_>>(),
                            "rewrite": {"uri": rewrite.uri, "uri_regex": rewrite.uri_regex.as_ref().map(|(r, w)| format!("{} -> {w}", r.as_str())), "authority": rewrite.authority},
                            })
                        }
                        Action::Redirect(rd) => json!({"redirect": {"uri": rd.uri, "authority": rd.authority, "scheme": rd.scheme, "port": rd.port, "code": rd.code}}),
                        Action::Direct { status, body } => json!({"direct_response": {"status": status, "body": body}}),
                    };
                    json!({"name": r.name, "match": matches, "action": action})
                })
                .collect();
            json!({"virtual_service": vh.name, "proxy_reason": vh.proxy_reason, "rules": rules})
        })
        .collect();
    let mut hosts: Vec<(&std::sync::Arc<str>, &usize)> = t.hosts.iter().collect();
    hosts.sort();
    json!({
        "virtual_hosts": vhosts,
        "hosts": hosts.into_iter().map(|(h, i)| (h.to_string(), Value::String(t.vhosts[*i].name.clone()))).collect::<serde_json::Map<_, _>>(),
        "services": t.services.iter().map(|(a, n)| (a.to_string(), Value::String(n.to_string()))).collect::<serde_json::Map<_, _>>(),
    })
}
