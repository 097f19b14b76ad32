//! The cluster's objects to lb's model, without an API server: the seed's Service,
//! Pods and EndpointSlice (tests/kubernetes/seed.yaml) compile to the seed's 90/10
//! split; endpoint conditions as kube-proxy reads them; ports by name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::catalog::{Cluster, PodLabels, entries, loaded};
use crate::load::{self, Loaded, Resource};
use crate::model::accept::{self, Input, LastGood};

/// The documents of a multi-document YAML text, as JSON values.
fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect()
}

fn seed() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/kubernetes/seed.yaml");
    docs(&std::fs::read_to_string(path).expect("seed.yaml"))
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<Arc<T>> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| Arc::new(serde_json::from_value(d.clone()).expect(kind)))
        .collect()
}

fn pods(docs: &[Value]) -> PodLabels {
    docs.iter()
        .filter(|d| d["kind"] == "Pod")
        .map(|d| {
            let m = &d["metadata"];
            let labels: BTreeMap<String, String> =
                serde_json::from_value(m["labels"].clone()).unwrap_or_default();
            (
                (
                    m["namespace"].as_str().expect("ns").to_string(),
                    m["name"].as_str().expect("name").to_string(),
                ),
                Arc::new(labels),
            )
        })
        .collect()
}

/// What the source hands the model for `docs`.
fn snapshot(docs: &[Value]) -> (Vec<Arc<Loaded>>, Vec<crate::diagnostic::Diagnostic>) {
    let (services, slices) = (
        of_kind::<Service>(docs, "Service"),
        of_kind::<EndpointSlice>(docs, "EndpointSlice"),
    );
    let pods = pods(docs);
    let mut diags = Vec::new();
    let cluster = Cluster {
        services: &services,
        slices: &slices,
        pods: &pods,
        domain: "cluster.local",
    };
    let mut out: Vec<Arc<Loaded>> = entries(&cluster)
        .into_iter()
        .filter_map(|(_, entry)| loaded(&entry, &mut diags))
        .map(Arc::new)
        .collect();
    for d in docs {
        if d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("networking.istio.io/"))
            && let Some(l) = load::load_object(d, &mut diags)
        {
            out.push(Arc::new(l));
        }
    }
    (out, diags)
}

/// The endpoints of the one ServiceEntry made from `docs`: (address, port, version).
fn endpoints(docs: &[Value]) -> Vec<(String, i64, String)> {
    let (objects, diags) = snapshot(docs);
    assert!(diags.is_empty(), "{diags:?}");
    let r = objects[0].resource();
    let Resource::ServiceEntry(se) = &*r else {
        panic!("a ServiceEntry first");
    };
    se.spec
        .endpoints
        .iter()
        .map(|e| {
            (
                e.address.clone().unwrap_or_default(),
                e.ports.iter().next().map_or(0, |(_, p)| *p),
                e.labels
                    .get("version")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn the_seeds_cluster_compiles_to_its_90_10_split() {
    let (objects, diags) = snapshot(&seed());
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(objects[0].kind, "Service");
    let (v, rejected) = accept::build(
        Input::default(),
        Input {
            loaded: objects,
            diags,
        },
        &mut LastGood::default(),
        &mut Default::default(),
        &Default::default(),
    )
    .expect("valid");
    assert!(rejected.is_empty());
    let plan =
        crate::compile::slices::plan_slices(&v.slices, Default::default(), &mut Default::default())
            .expect("compiles");
    assert_eq!(
        plan.kernel.render(),
        "service 127.10.14.1:11400 default/backend-service mode=1 slots=10 scale=10\n  subset v0 id=0x954a47fb slots=9 endpoints=[127.0.0.2:11400]\n  subset v1 id=0x944a4668 slots=1 endpoints=[127.0.0.3:11400]\n"
    );
}

fn slice_endpoint<'d>(docs: &'d mut [Value], address: &str) -> &'d mut Value {
    let slice = docs
        .iter_mut()
        .find(|d| d["kind"] == "EndpointSlice")
        .expect("a slice");
    slice["endpoints"]
        .as_array_mut()
        .expect("endpoints")
        .iter_mut()
        .find(|e| e["addresses"][0] == address)
        .expect("the endpoint")
}

#[test]
fn endpoints_follow_their_conditions_as_kube_proxy_does() {
    let mut docs = seed();
    // Not ready: out. Terminating: out while anything is ready.
    slice_endpoint(&mut docs, "127.0.0.3")["conditions"] =
        serde_json::json!({"ready": false, "serving": true, "terminating": true});
    assert_eq!(
        endpoints(&docs),
        [("127.0.0.2".to_string(), 11400, "v0".to_string())]
    );
    // Nothing ready: the serving, terminating ones drain rather than refuse.
    slice_endpoint(&mut docs, "127.0.0.2")["conditions"] =
        serde_json::json!({"ready": false, "serving": false, "terminating": true});
    assert_eq!(
        endpoints(&docs),
        [("127.0.0.3".to_string(), 11400, "v1".to_string())]
    );
    // No conditions at all: ready (the API's default).
    slice_endpoint(&mut docs, "127.0.0.2")
        .as_object_mut()
        .expect("object")
        .remove("conditions");
    assert_eq!(endpoints(&docs).len(), 1);
    assert_eq!(endpoints(&docs)[0].0, "127.0.0.2");
}

#[test]
fn ports_resolve_by_name_per_slice_and_unnamed_ports_match() {
    let mut docs = seed();
    // A named targetPort that pods expose at different numbers: one slice each.
    let mut second = docs
        .iter()
        .find(|d| d["kind"] == "EndpointSlice")
        .expect("slice")
        .clone();
    second["metadata"]["name"] = "backend-service-zzzzz".into();
    second["ports"][0]["port"] = 11401.into();
    second["endpoints"] = serde_json::json!([{"addresses": ["127.0.0.4"], "targetRef": {"kind": "Pod", "namespace": "default", "name": "backend-7c9d8-abcde"}}]);
    docs.push(second);
    let mut got = endpoints(&docs);
    got.sort();
    assert_eq!(
        got,
        [
            ("127.0.0.2".to_string(), 11400, "v0".to_string()),
            ("127.0.0.3".to_string(), 11400, "v1".to_string()),
            ("127.0.0.4".to_string(), 11401, "v0".to_string()),
        ]
    );
    // A single unnamed port: the slice's port named "" is that port.
    for d in docs.iter_mut() {
        if d["kind"] == "Service" {
            d["spec"]["ports"] = serde_json::json!([{"port": 80, "targetPort": 11400}]);
        }
        if d["kind"] == "EndpointSlice" {
            d["ports"][0]["name"] = "".into();
        }
    }
    assert!(endpoints(&docs).iter().all(|(_, p, _)| *p >= 11400));
}

#[test]
fn headless_and_external_name_services_have_no_address_to_steer() {
    let mut docs = seed();
    for d in docs.iter_mut().filter(|d| d["kind"] == "Service") {
        d["spec"]["clusterIP"] = "None".into();
        d["spec"]["clusterIPs"] = serde_json::json!(["None"]);
    }
    let (objects, _) = snapshot(&docs);
    let r = objects[0].resource();
    let Resource::ServiceEntry(se) = &*r else {
        panic!("a ServiceEntry");
    };
    assert!(se.spec.addresses.is_empty());
    assert_eq!(se.spec.endpoints.len(), 2, "still a destination");
    for d in docs.iter_mut().filter(|d| d["kind"] == "Service") {
        d["spec"] = serde_json::json!({"type": "ExternalName", "externalName": "db.example.com"});
    }
    let (objects, _) = snapshot(&docs);
    assert!(objects.iter().all(|o| o.kind != "Service"));
}

#[test]
fn an_istio_object_that_does_not_parse_names_itself_and_its_field() {
    let mut docs = seed();
    let vs = docs
        .iter_mut()
        .find(|d| d["kind"] == "VirtualService")
        .expect("vs");
    vs["spec"]["http"][0]["rout"] = vs["spec"]["http"][0]["route"].clone();
    let (_, diags) = snapshot(&docs);
    assert_eq!(
        diags.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "VirtualService default/backend-vs: spec.http[0].rout: unknown field \"rout\" (did you mean \"route\"?)"
        ]
    );
}
