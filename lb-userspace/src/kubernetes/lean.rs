//! What the stores keep of a Service and an EndpointSlice: only what lb reads
//! (catalog.rs), cut from each object as its watch yields it. A node's lb holds every
//! Service and slice of the cluster; in a real cluster their managedFields, statuses,
//! owner references, uids and topology hints are most of each object. (Of a pod lb
//! keeps its labels only: pod_labels.rs.)

use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::catalog::SERVICE_NAME_LABEL;

/// Name, namespace and resourceVersion (and labels when `labels`).
fn meta(m: &mut ObjectMeta, labels: bool) -> ObjectMeta {
    ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        resource_version: m.resource_version.take(),
        labels: if labels { m.labels.take() } else { None },
        ..ObjectMeta::default()
    }
}

/// Its type, ClusterIPs and ports.
pub fn service(s: &mut Service) {
    s.metadata = meta(&mut s.metadata, false);
    s.status = None;
    if let Some(spec) = &mut s.spec {
        let ports = spec.ports.take().map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    target_port: p.target_port,
                    ..ServicePort::default()
                })
                .collect()
        });
        *spec = ServiceSpec {
            type_: spec.type_.take(),
            cluster_ip: spec.cluster_ip.take(),
            cluster_ips: spec.cluster_ips.take(),
            ports,
            ..ServiceSpec::default()
        };
    }
}

/// Its Service's name label, address type, ports, and each endpoint's addresses,
/// conditions and pod.
pub fn slice(s: &mut EndpointSlice) {
    let mut m = meta(&mut s.metadata, true);
    if let Some(labels) = &mut m.labels {
        labels.retain(|k, _| k == SERVICE_NAME_LABEL);
    }
    s.metadata = m;
    for p in s.ports.iter_mut().flatten() {
        *p = EndpointPort {
            name: p.name.take(),
            port: p.port,
            protocol: p.protocol.take(),
            app_protocol: None,
        };
    }
    for e in &mut s.endpoints {
        *e = Endpoint {
            addresses: std::mem::take(&mut e.addresses),
            conditions: e.conditions.take(),
            target_ref: e.target_ref.take().map(|r| ObjectReference {
                kind: r.kind,
                namespace: r.namespace,
                name: r.name,
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::kubernetes::catalog;

    /// A Service and its slice as an API server gives them, with what lb does not
    /// read.
    fn full() -> (Service, EndpointSlice) {
        let managed =
            json!([{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}]);
        let service = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "backend", "namespace": "default", "uid": "u1", "resourceVersion": "7",
                         "labels": {"app": "backend"}, "annotations": {"a": "b"}, "managedFields": managed},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"],
                     "selector": {"app": "backend"}, "sessionAffinity": "None",
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "appProtocol": "http"}]},
            "status": {"loadBalancer": {}}});
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "backend-x", "namespace": "default", "uid": "u2",
                         "labels": {"kubernetes.io/service-name": "backend", "endpointslice.kubernetes.io/managed-by": "x"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "backend", "uid": "u1"}],
                         "managedFields": managed},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
            "endpoints": [
                {"addresses": ["10.1.0.2"], "conditions": {"ready": true, "serving": true, "terminating": false},
                 "nodeName": "node-1", "zone": "a", "hints": {"forZones": [{"name": "a"}]},
                 "targetRef": {"kind": "Pod", "namespace": "default", "name": "p0", "uid": "u3", "resourceVersion": "5"}},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true},
                 "targetRef": {"kind": "Pod", "namespace": "default", "name": "p1"}}]});
        (
            serde_json::from_value(service).expect("service"),
            serde_json::from_value(slice).expect("slice"),
        )
    }

    /// What lb makes of them (pod p0 labelled).
    fn entry(service: &Service, slice: &EndpointSlice) -> catalog::Entry {
        let labels = |_: &str, name: &str| {
            (name == "p0").then(|| Arc::new([("version", "v0".into())].into_iter().collect()))
        };
        catalog::entry(
            service,
            &[Arc::new(slice.clone())],
            &labels,
            "cluster.local",
            &mut Vec::new(),
        )
        .expect("an entry")
    }

    #[test]
    fn what_is_cut_is_what_lb_does_not_read() {
        let (mut s, mut e) = full();
        let before = entry(&s, &e);
        service(&mut s);
        slice(&mut e);
        assert_eq!(entry(&s, &e), before);
        // What is gone, as the API would say it.
        let json = |v: serde_json::Value| v.to_string();
        let (s, e) = (
            json(serde_json::to_value(&s).expect("json")),
            json(serde_json::to_value(&e).expect("json")),
        );
        for gone in [
            "managedFields",
            "uid",
            "ownerReferences",
            "annotations",
            "status",
            "selector",
            "appProtocol",
            "nodeName",
            "hints",
            "managed-by",
        ] {
            assert!(
                ![&s, &e].iter().any(|o| o.contains(gone)),
                "{gone}: {s}\n{e}"
            );
        }
    }
}
