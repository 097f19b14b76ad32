//! Kubernetes Services as lb's catalogue reads services: a ServiceEntry per Service,
//! as Istio itself models them — the host `name.namespace.svc.<domain>`, the
//! ClusterIPs (and external and load-balancer IPs) as the addresses the kernel steers,
//! the TCP ports, their NodePorts (lb's `lb.dev/node-ports` annotation), and the
//! endpoints of its EndpointSlices labelled with their pods' labels (subsets select
//! by them).
//! Pure: tested without an API server.

use std::sync::Arc;

use super::lean::{Slice, SliceEndpoint, Svc};
use crate::load::istio::{self, Metadata, ServiceEntrySpec, ServicePort, WorkloadEntry};
use crate::load::{Loaded, Resource, locate};
use crate::smallmap::{Labels, SmallMap};

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
        std::path::Path::new(""),
        locate::Document::detached(),
    )
}

/// A pod as the index of which Services name it keeps it: a hash of its namespace and
/// name (100,000 pods' names twice over were a tenth of the daemon's memory). Two
/// pods with the same hash only make a change to one read the other's Services again.
pub fn pod_id(namespace: &str, name: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0).hash_one((namespace, name))
}

/// A Pod's labels, by namespace and name, if it is known.
pub type PodLabels<'a> = dyn Fn(&str, &str) -> Option<Arc<Labels>> + 'a;

/// The ServiceEntry of Service `ns/name` (None unless lb serves it: see
/// [`Svc::served`]), from its own EndpointSlices and their pods' labels, typed as a
/// file's would be (built directly: a JSON tree read back through the schema was half
/// of what a changed Service cost). Every pod its endpoints name is added to `pods` as
/// a [`pod_id`] (known or not yet: its labels count once it is).
pub fn entry(
    (ns, name): (&str, &str),
    svc: &Svc,
    slices: &[Arc<Slice>],
    labels: &PodLabels<'_>,
    domain: &str,
    pods: &mut Vec<u64>,
) -> Option<Entry> {
    if !svc.served {
        return None;
    }
    Some(istio::Resource {
        api_version: "networking.istio.io/v1".to_string(),
        kind: "ServiceEntry".to_string(),
        metadata: Metadata {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            annotations: node_ports(svc).into_iter().chain(external(svc)).collect(),
            ..Metadata::default()
        },
        spec: ServiceEntrySpec {
            hosts: vec![format!("{name}.{ns}.svc.{domain}")],
            addresses: (svc.cluster_ips.iter().chain(&svc.external))
                .map(|ip| ip.to_string())
                .collect(),
            ports: ports(svc),
            resolution: Some("STATIC".to_string()),
            endpoints: endpoints(ns, slices, labels, unnamed_port(svc).as_deref(), pods),
            ..ServiceEntrySpec::default()
        },
        status: None,
    })
}

/// A Service port's name as lb's catalogue keys it: its own, or one made from its
/// number for the single unnamed port a Service may have (its slices name it "").
fn port_name(name: &str, number: i32) -> String {
    if name.is_empty() {
        format!("port-{number}")
    } else {
        name.to_string()
    }
}

/// The name lb gives the Service's unnamed port, if it has one (slices name it "").
fn unnamed_port(svc: &Svc) -> Option<String> {
    let unnamed = svc.ports.iter().find(|p| p.name.is_empty());
    unnamed.map(|p| port_name("", p.port))
}

pub(super) fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
}

pub(super) fn is_udp(protocol: Option<&str>) -> bool {
    protocol.is_some_and(|p| p.eq_ignore_ascii_case("UDP"))
}

/// The Service's external and load-balancer IPs, as the model reads them.
fn external(svc: &Svc) -> Option<(String, String)> {
    (!svc.external.is_empty()).then(|| {
        (
            crate::model::catalog::EXTERNAL_ADDRESSES_ANNOTATION.to_string(),
            svc.external.join(","),
        )
    })
}

/// The NodePorts of the Service's TCP and UDP ports, as the model reads them.
fn node_ports(svc: &Svc) -> Option<(String, String)> {
    let pairs: Vec<String> = (svc.ports.iter().filter(|p| p.tcp || p.udp))
        .filter_map(|p| {
            let udp = if p.udp { "/udp" } else { "" };
            Some(format!("{}{udp}:{}", p.port, p.node_port?))
        })
        .collect();
    (!pairs.is_empty()).then(|| {
        (
            crate::model::catalog::NODE_PORTS_ANNOTATION.to_string(),
            pairs.join(","),
        )
    })
}

fn ports(svc: &Svc) -> Vec<ServicePort> {
    (svc.ports.iter().filter(|p| p.tcp || p.udp))
        .map(|p| ServicePort {
            number: p.port.into(),
            name: Some(port_name(&p.name, p.port)),
            protocol: Some(if p.udp { "UDP" } else { "TCP" }.to_string()),
            // The endpoints' port unless their slice says.
            target_port: p.target_port.map(i64::from),
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
    pods: &mut Vec<u64>,
) -> Vec<WorkloadEntry> {
    let any_ready = slices.iter().flat_map(|s| s.endpoints.iter()).any(ready);
    let mut out: Vec<WorkloadEntry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for slice in slices {
        // One copy of the slice's ports for all its endpoints.
        let ports: SmallMap<i64> = (slice.ports.iter())
            .filter_map(|(name, port)| {
                let name = if name.is_empty() { unnamed? } else { name };
                Some((name, (*port).into()))
            })
            .collect();
        for e in slice.endpoints.iter() {
            let take = if any_ready {
                ready(e)
            } else {
                serving_terminating(e)
            };
            if !take {
                continue;
            }
            let pod =
                (e.pod.as_ref()).map(|(pod_ns, name)| (pod_ns.as_deref().unwrap_or(ns), &**name));
            let pod_labels = pod
                .and_then(|(ns, name)| labels(ns, name))
                .unwrap_or_default();
            if let Some((ns, name)) = pod {
                pods.push(pod_id(ns, name));
            }
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
    }
    // Kept while the Service is: no room to grow.
    out.shrink_to_fit();
    out
}
