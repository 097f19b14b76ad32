//! What the stores keep of a Service and an EndpointSlice: only what lb reads
//! (catalog.rs), made from each object as its watch yields it. A node's lb holds every
//! Service and slice of the cluster; in a real cluster their managedFields, statuses,
//! owner references, uids and topology hints are most of each object, and
//! k8s-openapi's structs carry every field even when cut. (Of a pod lb keeps its
//! labels only: pod_labels.rs.)

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::catalog::{SERVICE_NAME_LABEL, is_tcp, is_udp};

/// A Service as lb keeps it: whether lb makes it a ServiceEntry (it has a spec and
/// is not an ExternalName, which names a DNS host lb does not resolve), its IPv4
/// addresses, and its ports.
#[derive(Debug, Clone, PartialEq)]
pub struct Svc {
    pub served: bool,
    /// Its IPv4 ClusterIPs.
    pub cluster_ips: Box<[Box<str>]>,
    /// Its external IPs and load-balancer ingress IPs: reached from outside the
    /// cluster, through the nodes an upstream router picks. Served at the Service's
    /// ports like the ClusterIPs, as kube-proxy serves them.
    pub external: Box<[Box<str>]>,
    pub ports: Box<[SvcPort]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SvcPort {
    /// "" if unnamed.
    pub name: Box<str>,
    pub port: i32,
    pub tcp: bool,
    /// UDP (served north-south in XDP); SCTP ports are neither.
    pub udp: bool,
    /// A numeric targetPort (a named one is resolved by the slices, per pod).
    pub target_port: Option<i32>,
    /// Its NodePort (a NodePort or LoadBalancer Service's).
    pub node_port: Option<i32>,
}

/// A Service as lb keeps it.
pub fn service(s: &Service) -> Arc<Svc> {
    let spec = s.spec.as_ref();
    let served = spec.is_some_and(|s| s.type_.as_deref() != Some("ExternalName"));
    let cluster_ips = spec.and_then(|s| {
        s.cluster_ips
            .clone()
            .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
    });
    let external_ips = spec.and_then(|s| s.external_ips.clone());
    let ingress_ips = (s.status.as_ref())
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| ingress.iter().filter_map(|i| i.ip.clone()).collect());
    // Headless Services ("None") have no address to steer; IPv6 ones are not steered.
    let v4 = |ip: &String| ip.parse::<std::net::Ipv4Addr>().is_ok();
    let external: Box<[Box<str>]> = [external_ips, ingress_ips]
        .into_iter()
        .flatten()
        .flatten()
        .filter(v4)
        .map(Into::into)
        .collect();
    let cluster_ips = cluster_ips.into_iter().flatten().filter(v4);
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| SvcPort {
            name: p.name.as_deref().unwrap_or_default().into(),
            port: p.port,
            tcp: is_tcp(p.protocol.as_deref()),
            udp: is_udp(p.protocol.as_deref()),
            target_port: match &p.target_port {
                Some(IntOrString::Int(t)) => Some(*t),
                _ => None,
            },
            node_port: p.node_port,
        });
    Arc::new(Svc {
        served,
        cluster_ips: cluster_ips.map(Into::into).collect(),
        external,
        ports: ports.collect(),
    })
}

/// An EndpointSlice as lb keeps it: its Service (if lb reads the slice: IPv4), its
/// TCP ports, and each endpoint's addresses, conditions and pod (a quarter of the
/// API object cut down).
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    pub service: Option<Box<str>>,
    /// (name, "" if unnamed; number)
    pub ports: Box<[(Box<str>, i32)]>,
    pub endpoints: Box<[SliceEndpoint]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SliceEndpoint {
    pub addresses: Box<[Box<str>]>,
    /// Its conditions as the API gives them (None: not said).
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    /// The pod it names: (namespace if given, name).
    pub pod: Option<(Option<Box<str>>, Box<str>)>,
}

/// An EndpointSlice as lb keeps it.
pub fn slice(s: &EndpointSlice) -> Arc<Slice> {
    let labels = s.metadata.labels.as_ref();
    let service = labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|_| s.address_type == "IPv4")
        .map(|n| n.as_str().into());
    // Ports by name (unique within a Service), TCP's and UDP's.
    let served = |p: &&EndpointPort| is_tcp(p.protocol.as_deref()) || is_udp(p.protocol.as_deref());
    let ports = s
        .ports
        .iter()
        .flatten()
        .filter(served)
        .filter_map(|p| Some((p.name.as_deref().unwrap_or_default().into(), p.port?)));
    let endpoints = s.endpoints.iter().map(|e| {
        let c = e.conditions.as_ref();
        SliceEndpoint {
            addresses: e.addresses.iter().map(|a| a.as_str().into()).collect(),
            ready: c.and_then(|c| c.ready),
            serving: c.and_then(|c| c.serving),
            terminating: c.and_then(|c| c.terminating),
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    Some((
                        r.namespace.as_deref().map(Into::into),
                        r.name.as_deref()?.into(),
                    ))
                }),
        }
    });
    Arc::new(Slice {
        service,
        ports: ports.collect(),
        endpoints: endpoints.collect(),
    })
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
    fn entry(svc: &Service, slice: &EndpointSlice) -> catalog::Entry {
        let labels = |_: &str, name: &str| {
            (name == "p0").then(|| Arc::new([("version", "v0".into())].into_iter().collect()))
        };
        let key = ("default", "backend");
        let slices = [super::slice(slice)];
        catalog::entry(
            key,
            &service(svc),
            &slices,
            &labels,
            "cluster.local",
            &mut Vec::new(),
        )
        .expect("an entry")
    }

    #[test]
    fn a_service_is_kept_as_lb_reads_it() {
        let (mut s, e) = full();
        let lean = Svc {
            served: true,
            cluster_ips: ["10.96.0.9".into()].into(),
            external: [].into(),
            ports: [SvcPort {
                name: "http".into(),
                port: 80,
                tcp: true,
                udp: false,
                target_port: Some(8080),
                node_port: None,
            }]
            .into(),
        };
        assert_eq!(*service(&s), lean);
        let full_entry = entry(&s, &e);
        assert_eq!(full_entry.spec.addresses, ["10.96.0.9"]);
        assert_eq!(full_entry.spec.endpoints.len(), 1, "the ready endpoint");
        assert!(full_entry.metadata.annotations.is_empty(), "no NodePort");
        // A LoadBalancer Service: its external and load-balancer IPs are served at its
        // ports, its NodePort at the node's addresses (the annotation the model reads).
        let spec = s.spec.as_mut().expect("spec");
        spec.type_ = Some("LoadBalancer".into());
        spec.external_ips = Some(vec!["192.0.2.7".into()]);
        spec.ports.as_mut().expect("ports")[0].node_port = Some(30785);
        s.status = serde_json::from_value(
            json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}, {"hostname": "lb.example"}]}}),
        )
        .expect("status");
        let lb_entry = entry(&s, &e);
        assert_eq!(
            lb_entry.spec.addresses,
            ["10.96.0.9", "192.0.2.7", "198.51.100.4"]
        );
        assert_eq!(
            lb_entry.metadata.annotations["lb.dev/node-ports"],
            "80:30785"
        );
        // Headless and IPv6 ClusterIPs are not steered; an ExternalName is no entry.
        let spec = s.spec.as_mut().expect("spec");
        spec.cluster_ips = Some(vec!["None".into(), "fd00::9".into()]);
        spec.external_ips = None;
        s.status = None;
        assert!(service(&s).cluster_ips.is_empty() && service(&s).external.is_empty());
        s.spec.as_mut().expect("spec").type_ = Some("ExternalName".into());
        assert!(!service(&s).served);
    }

    #[test]
    fn a_slice_is_kept_as_lb_reads_it() {
        let (_, mut e) = full();
        let endpoint = |address: &str, ready, terminating, pod: &str| SliceEndpoint {
            addresses: [address.into()].into(),
            ready: Some(ready),
            serving: Some(true),
            terminating: Some(terminating),
            pod: Some((Some("default".into()), pod.into())),
        };
        let lean = Slice {
            service: Some("backend".into()),
            ports: [("http".into(), 8080)].into(),
            endpoints: [
                endpoint("10.1.0.2", true, false, "p0"),
                endpoint("10.1.0.3", false, true, "p1"),
            ]
            .into(),
        };
        assert_eq!(*slice(&e), lean);
        // SCTP ports are not lb's; a reference to what is not a pod names no pod.
        let ports = e.ports.get_or_insert_default();
        ports[0].protocol = Some("SCTP".into());
        e.endpoints[0].target_ref.as_mut().expect("a pod").kind = Some("Node".into());
        let cut = slice(&e);
        assert!(cut.ports.is_empty());
        assert_eq!(cut.endpoints[0].pod, None);
        // An IPv6 slice is no Service's for lb.
        e.address_type = "IPv6".into();
        assert_eq!(slice(&e).service, None);
    }
}
