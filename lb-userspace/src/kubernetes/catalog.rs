//! Kubernetes Services as lb's catalogue reads services: a ServiceEntry per Service,
//! as Istio itself models them — the host `name.namespace.svc.<domain>`, the
//! ClusterIPs as the addresses the kernel steers, the TCP ports, and the endpoints of
//! its EndpointSlices labelled with their pods' labels (subsets select by them).
//! Pure: tested without an API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use crate::diagnostic::Diagnostic;
use crate::load::{self, Loaded};

/// The label an EndpointSlice names its Service by.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service's ServiceEntry as lb reads it.
pub fn loaded(entry: &serde_json::Value, diags: &mut Vec<Diagnostic>) -> Option<Loaded> {
    let mut l = load::load_object(entry, diags)?;
    // Named as the operator knows it.
    l.kind = "Service";
    Some(l)
}

/// The Service an EndpointSlice lists endpoints of, if lb reads it (IPv4).
pub fn service_of(slice: &EndpointSlice) -> Option<&str> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    (slice.address_type == "IPv4").then_some(name.as_str())
}

/// A Pod's labels, by namespace and name, if it is known.
pub type PodLabels<'a> = dyn Fn(&str, &str) -> Option<BTreeMap<String, String>> + 'a;

/// The ServiceEntry of a Service that has a ClusterIP or endpoints, as the API object
/// lb reads (None for an ExternalName Service: it names a DNS host, which lb does not
/// resolve), from its own EndpointSlices and their pods' labels. Every pod its
/// endpoints name is added to `pods` (known or not yet: its labels count once it is).
pub fn entry(
    svc: &Service,
    slices: &[Arc<EndpointSlice>],
    labels: &PodLabels<'_>,
    domain: &str,
    pods: &mut Vec<(String, String)>,
) -> Option<serde_json::Value> {
    let (name, ns) = (
        svc.metadata.name.as_deref()?,
        svc.metadata.namespace.as_deref()?,
    );
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    Some(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "hosts": [format!("{name}.{ns}.svc.{domain}")],
            "addresses": cluster_ips(spec),
            "ports": ports(spec),
            "resolution": "STATIC",
            "endpoints": endpoints(ns, slices, labels, unnamed_port(spec).as_deref(), pods),
        },
    }))
}

fn cluster_ips(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<String> {
    let ips = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default();
    // Headless Services ("None") have no address to steer; IPv6 ones are not steered.
    ips.into_iter()
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .collect()
}

/// A Service port's name as lb's catalogue keys it: its own, or one made from its
/// number for the single unnamed port a Service may have (its slices name it "").
fn port_name(name: Option<&str>, number: i32) -> String {
    match name {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("port-{number}"),
    }
}

/// The name lb gives the Service's unnamed port, if it has one (slices name it "").
fn unnamed_port(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Option<String> {
    spec.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().unwrap_or("").is_empty())
        .map(|p| port_name(None, p.port))
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
}

fn ports(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<serde_json::Value> {
    spec.ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(p.protocol.as_deref()))
        .map(|p| {
            // A numeric targetPort is the endpoints' port unless their slice says; a
            // named one is resolved by the slices (per pod), as kube-proxy does.
            let target = match &p.target_port {
                Some(IntOrString::Int(t)) => Some(*t),
                _ => None,
            };
            json!({
                "number": p.port,
                "name": port_name(p.name.as_deref(), p.port),
                "protocol": "TCP",
                "targetPort": target,
            })
        })
        .collect()
}

fn ready(e: &Endpoint) -> bool {
    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// Terminating but still serving: used only when nothing is ready (kube-proxy's
/// fallback), so a Service whose pods all terminate drains instead of refusing.
fn serving_terminating(e: &Endpoint) -> bool {
    e.conditions
        .as_ref()
        .is_some_and(|c| c.serving.unwrap_or(false) && c.terminating.unwrap_or(false))
}

fn endpoints(
    ns: &str,
    slices: &[Arc<EndpointSlice>],
    labels: &PodLabels<'_>,
    unnamed: Option<&str>,
    pods: &mut Vec<(String, String)>,
) -> Vec<serde_json::Value> {
    let all = || {
        slices
            .iter()
            .flat_map(|s| s.endpoints.iter().map(move |e| (&**s, e)))
    };
    let any_ready = all().any(|(_, e)| ready(e));
    let mut out: Vec<serde_json::Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (slice, e) in all() {
        let take = if any_ready {
            ready(e)
        } else {
            serving_terminating(e)
        };
        if !take {
            continue;
        }
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| Some((r.namespace.as_deref().unwrap_or(ns), r.name.as_deref()?)));
        let pod_labels = pod
            .and_then(|(ns, name)| labels(ns, name))
            .unwrap_or_default();
        if let Some((ns, name)) = pod {
            pods.push((ns.to_string(), name.to_string()));
        }
        let ports: BTreeMap<String, i32> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| is_tcp(p.protocol.as_deref()))
            .filter_map(|p| {
                let name = match p.name.as_deref() {
                    Some(n) if !n.is_empty() => n.to_string(),
                    _ => unnamed?.to_string(),
                };
                Some((name, p.port?))
            })
            .collect();
        for address in &e.addresses {
            // One endpoint per address, even when two slices list it mid-update.
            if seen.insert(address.clone()) {
                out.push(json!({"address": address, "ports": ports, "labels": pod_labels}));
            }
        }
    }
    out
}
