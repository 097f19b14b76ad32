//! Kubernetes Services as lb's catalogue reads services: a ServiceEntry per Service,
//! as Istio itself models them — the host `name.namespace.svc.<domain>`, the
//! ClusterIPs as the addresses the kernel steers, the TCP ports, and the endpoints of
//! its EndpointSlices labelled with their pods' labels (subsets select by them).
//! Pure: tested without an API server.

use std::sync::Arc;

use super::lean::{Slice, SliceEndpoint};
use crate::load::istio::{self, Metadata, ServiceEntrySpec, ServicePort, WorkloadEntry};
use crate::load::{Loaded, Resource, locate};
use crate::smallmap::{Labels, SmallMap};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label an EndpointSlice names its Service by.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service's ServiceEntry.
pub type Entry = istio::Resource<ServiceEntrySpec>;

/// A Service's ServiceEntry as lb reads it (named "Service", as the operator knows it).
pub fn loaded(entry: Entry) -> Loaded {
    let meta = &entry.metadata;
    let (namespace, name) = (meta.namespace.clone(), meta.name.clone());
    Loaded::new(
        Resource::ServiceEntry(Box::new(entry)),
        "Service",
        namespace.unwrap_or_default(),
        name.unwrap_or_default(),
        std::path::PathBuf::new(),
        locate::Document::detached(),
    )
}

/// A Pod's labels, by namespace and name, if it is known.
pub type PodLabels<'a> = dyn Fn(&str, &str) -> Option<Arc<Labels>> + 'a;

/// The ServiceEntry of a Service that has a ClusterIP or endpoints (None for an
/// ExternalName Service: it names a DNS host, which lb does not resolve), from its own
/// EndpointSlices and their pods' labels, typed as a file's would be (built directly:
/// a JSON tree read back through the schema was half of what a changed Service cost).
/// Every pod its endpoints name is added to `pods` (known or not yet: its labels
/// count once it is).
pub fn entry(
    svc: &Service,
    slices: &[Arc<Slice>],
    labels: &PodLabels<'_>,
    domain: &str,
    pods: &mut Vec<(String, String)>,
) -> Option<Entry> {
    let (name, ns) = (
        svc.metadata.name.as_deref()?,
        svc.metadata.namespace.as_deref()?,
    );
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    Some(istio::Resource {
        api_version: "networking.istio.io/v1".to_string(),
        kind: "ServiceEntry".to_string(),
        metadata: Metadata {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            ..Metadata::default()
        },
        spec: ServiceEntrySpec {
            hosts: vec![format!("{name}.{ns}.svc.{domain}")],
            addresses: cluster_ips(spec),
            ports: ports(spec),
            resolution: Some("STATIC".to_string()),
            endpoints: endpoints(ns, slices, labels, unnamed_port(spec).as_deref(), pods),
            ..ServiceEntrySpec::default()
        },
        status: None,
    })
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

pub(super) fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
}

fn ports(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<ServicePort> {
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
            ServicePort {
                number: p.port.into(),
                name: Some(port_name(p.name.as_deref(), p.port)),
                protocol: Some("TCP".to_string()),
                target_port: target.map(i64::from),
            }
        })
        .collect()
}

fn ready(e: &SliceEndpoint) -> bool {
    e.ready.unwrap_or(true)
}

/// Terminating but still serving: used only when nothing is ready (kube-proxy's
/// fallback), so a Service whose pods all terminate drains instead of refusing.
fn serving_terminating(e: &SliceEndpoint) -> bool {
    e.serving.unwrap_or(false) && e.terminating.unwrap_or(false)
}

fn endpoints(
    ns: &str,
    slices: &[Arc<Slice>],
    labels: &PodLabels<'_>,
    unnamed: Option<&str>,
    pods: &mut Vec<(String, String)>,
) -> Vec<WorkloadEntry> {
    let all = || {
        slices
            .iter()
            .flat_map(|s| s.endpoints.iter().map(move |e| (&**s, e)))
    };
    let any_ready = all().any(|(_, e)| ready(e));
    let mut out: Vec<WorkloadEntry> = Vec::new();
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
        let pod = (e.pod.as_ref()).map(|(pod_ns, name)| (pod_ns.as_deref().unwrap_or(ns), &**name));
        let pod_labels = pod
            .and_then(|(ns, name)| labels(ns, name))
            .unwrap_or_default();
        if let Some((ns, name)) = pod {
            pods.push((ns.to_string(), name.to_string()));
        }
        let ports: SmallMap<i64> = (slice.ports.iter())
            .filter_map(|(name, port)| {
                let name = if name.is_empty() { unnamed? } else { name };
                Some((name, (*port).into()))
            })
            .collect();
        for address in &e.addresses {
            // One endpoint per address, even when two slices list it mid-update.
            if seen.insert(address) {
                out.push(WorkloadEntry {
                    address: Some(address.to_string()),
                    ports: ports.clone(),
                    labels: pod_labels.clone(),
                    ..WorkloadEntry::default()
                });
            }
        }
    }
    // Kept while the Service is: no room to grow.
    out.shrink_to_fit();
    out
}
