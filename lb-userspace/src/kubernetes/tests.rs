//! The cluster's objects to lb's model, without an API server: the seed's Service,
//! Pods and EndpointSlice (tests/kubernetes/seed.yaml) compile to the seed's 90/10
//! split; endpoint conditions as kube-proxy reads them; ports by name; and a snapshot
//! that reads again only what the watches touched equals one that reads everything.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

use super::ISTIO_KINDS;
use super::lean::{Slice, Svc};
use super::pod_labels;
use super::snapshot::{Reader, Snapshot, Stores, Touched, Versioned};
use super::store;
use crate::load::{Loaded, Resource};
use crate::model::accept::{self, Input, LastGood};
use crate::smallmap::Labels;

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

/// A cluster in reflector stores, kept as the watches keep them, with what each
/// event touched.
struct Cluster {
    stores: Stores,
    services: store::Writer<Service, Arc<Svc>>,
    slices: store::Writer<EndpointSlice, Arc<Slice>>,
    pods: store::Writer<PartialObjectMeta<Pod>, Arc<Labels>>,
    istio: Vec<store::Writer<DynamicObject, Versioned>>,
    touched: Touched,
    /// The resourceVersion given out last, as an API server counts.
    version: u64,
}

impl Cluster {
    fn new() -> Self {
        let (services, services_w) = store::store(super::lean::service);
        let (slices, slices_w) = store::store(super::lean::slice);
        let (pods, pods_w) = pod_labels::store();
        let (istio, writers) = ISTIO_KINDS
            .iter()
            .map(|(kind, _)| {
                let (store, w) = store::store(Versioned::of);
                ((*kind, store), w)
            })
            .unzip();
        Cluster {
            stores: Stores {
                services,
                slices,
                pods,
                istio,
            },
            services: services_w,
            slices: slices_w,
            pods: pods_w,
            istio: writers,
            touched: Touched::default(),
            version: 0,
        }
    }

    /// `doc` added or modified (or deleted), as its watch tells it.
    fn event(&mut self, doc: &Value, delete: bool) {
        let mut doc = doc.clone();
        self.version += 1;
        doc["metadata"]["resourceVersion"] = self.version.to_string().into();
        if doc["metadata"]["namespace"].is_null() {
            doc["metadata"]["namespace"] = "default".into();
        }
        let t = &mut self.touched;
        match doc["kind"].as_str().expect("kind") {
            "Service" => apply(&mut self.services, t, "Service", doc, delete),
            "EndpointSlice" => apply(&mut self.slices, t, "EndpointSlice", doc, delete),
            "Pod" => apply::<PartialObjectMeta<Pod>, _>(&mut self.pods, t, "Pod", doc, delete),
            kind => {
                let i = ISTIO_KINDS
                    .iter()
                    .position(|(k, _)| *k == kind)
                    .expect("an Istio kind");
                apply(&mut self.istio[i], t, ISTIO_KINDS[i].0, doc, delete);
            }
        }
    }

    /// What a reader that read everything before reads now.
    fn read_all(&self) -> Snapshot {
        Reader::default().snapshot(&self.stores, Touched::default(), "cluster.local")
    }
}

fn apply<K, T>(
    w: &mut store::Writer<K, T>,
    t: &mut Touched,
    kind: &'static str,
    doc: Value,
    delete: bool,
) where
    K: kube::Resource + serde::de::DeserializeOwned,
{
    let object: K = serde_json::from_value(doc).expect(kind);
    let event = if delete {
        Event::Delete(object)
    } else {
        Event::Apply(object)
    };
    w.apply_watcher_event(&event);
    t.event(kind, &event);
}

/// What the source hands the model for `docs`.
fn snapshot(docs: &[Value]) -> (Vec<Arc<Loaded>>, Vec<crate::diagnostic::Diagnostic>) {
    let mut c = Cluster::new();
    for d in docs {
        c.event(d, false);
    }
    let s = c.read_all();
    (s.objects.to_vec(), s.diags)
}

/// The one Service among `objects`.
fn service(objects: &[Arc<Loaded>]) -> &Loaded {
    let mut services = objects.iter().filter(|o| o.kind == "Service");
    let one = services.next().expect("a Service");
    assert!(services.next().is_none(), "one Service");
    one
}

/// The endpoints of the one ServiceEntry made from `docs`: (address, port, version).
fn endpoints(docs: &[Value]) -> Vec<(String, i64, String)> {
    let (objects, diags) = snapshot(docs);
    assert!(diags.is_empty(), "{diags:?}");
    let r = service(&objects).resource();
    let Resource::ServiceEntry(se) = &*r else {
        panic!("a ServiceEntry");
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
    service(&objects);
    let (v, rejected) = accept::build(
        Input::default(),
        Input {
            loaded: objects.into(),
            diags,
        },
        &mut LastGood::default(),
        &mut Default::default(),
        &Default::default(),
    )
    .expect("valid");
    assert!(rejected.is_empty());
    let plan = crate::compile::slices::plan_slices(
        &v.slices,
        None,
        Default::default(),
        &mut Default::default(),
    )
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

/// A LoadBalancer Service with the same number on TCP and UDP (as kube-dns has), a
/// NodePort on each: two services to the model at each address, the UDP one at its
/// own key, split by the seed's weights, its endpoints on the slice's UDP port; SCTP
/// ports are not lb's. The NodePorts and the load-balancer IP are north-south (Maglev
/// tables), the ClusterIP not.
#[test]
fn a_services_udp_port_is_a_udp_service_of_its_own() {
    let mut docs = seed();
    for d in docs.iter_mut() {
        if d["kind"] == "Service" {
            d["spec"]["type"] = "LoadBalancer".into();
            d["status"] =
                serde_json::json!({"loadBalancer": {"ingress": [{"ip": "10.250.0.100"}]}});
            d["spec"]["ports"] = serde_json::json!([
                {"name": "http", "port": 11400, "protocol": "TCP", "targetPort": "http", "nodePort": 30785},
                {"name": "dns", "port": 11400, "protocol": "UDP", "targetPort": "dns", "nodePort": 30785},
                {"name": "sctp", "port": 11402, "protocol": "SCTP"}
            ]);
        }
        if d["kind"] == "EndpointSlice" {
            d["ports"] = serde_json::json!([
                {"name": "http", "port": 11400, "protocol": "TCP"},
                {"name": "dns", "port": 5353, "protocol": "UDP"}
            ]);
        }
    }
    let (objects, diags) = snapshot(&docs);
    assert!(diags.is_empty(), "{diags:?}");
    let r = service(&objects).resource();
    let Resource::ServiceEntry(se) = &*r else {
        panic!("a ServiceEntry");
    };
    let annotation = |name| se.metadata.annotations.get(name).map(String::as_str);
    assert_eq!(
        annotation(crate::model::catalog::NODE_PORTS_ANNOTATION),
        Some("11400:30785,11400/udp:30785")
    );
    assert_eq!(
        annotation(crate::model::catalog::EXTERNAL_ADDRESSES_ANNOTATION),
        Some("10.250.0.100")
    );
    let opts = crate::model::Options {
        node_addresses: vec!["10.250.0.1".parse().expect("addr")],
        ..Default::default()
    };
    let mut diags = Vec::new();
    let model = crate::model::build_for(&objects, &mut diags, &opts);
    assert!(diags.is_empty(), "{diags:?}");
    let keys: Vec<(String, bool)> = (model.services.iter())
        .map(|s| {
            let key = crate::compile::image::show(&crate::compile::service_key(s));
            (key, s.north_south)
        })
        .collect();
    let expected = [
        ("10.250.0.1:30785", true),
        ("10.250.0.1:30785/udp", true),
        ("10.250.0.100:11400", true),
        ("10.250.0.100:11400/udp", true),
        ("127.10.14.1:11400", false),
        ("127.10.14.1:11400/udp", false),
    ];
    assert_eq!(keys, expected.map(|(k, n)| (k.to_string(), n)));
    let udp = model
        .services
        .iter()
        .find(|s| s.udp)
        .expect("a UDP service");
    let weights: Vec<_> = (udp.split.iter())
        .map(|w| (w.name.as_str(), w.weight))
        .collect();
    assert_eq!(weights, [("v0", 90), ("v1", 10)]);
    assert!(udp.proxy_reason.is_none());
    assert!(
        udp.split
            .iter()
            .flat_map(|w| &w.endpoints)
            .all(|e| e.port() == 5353),
        "{:?}",
        udp.split
    );
}

#[test]
fn headless_and_external_name_services_have_no_address_to_steer() {
    let mut docs = seed();
    for d in docs.iter_mut().filter(|d| d["kind"] == "Service") {
        d["spec"]["clusterIP"] = "None".into();
        d["spec"]["clusterIPs"] = serde_json::json!(["None"]);
    }
    let (objects, _) = snapshot(&docs);
    let r = service(&objects).resource();
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

/// What a snapshot hands the model, by value: each object's kind, name and typed
/// resource, then the problems.
fn described(s: &Snapshot) -> Vec<String> {
    s.objects
        .iter()
        .map(|o| format!("{} {}/{} {:?}", o.kind, o.namespace, o.name, o.resource()))
        .chain(s.diags.iter().map(ToString::to_string))
        .collect()
}

/// One of a small cluster's objects, made at random: Services (some ExternalName),
/// EndpointSlices that move between Services and change address type, pods whose
/// labels change, and VirtualServices (some that do not parse).
fn random_object(rng: &mut fastrand::Rng) -> Value {
    let ns = ["default", "team-b"][rng.usize(..2)];
    match rng.usize(..4) {
        0 => {
            let i = rng.usize(..4);
            let spec = if rng.u8(..) < 30 {
                json!({"type": "ExternalName", "externalName": "db.example.com"})
            } else {
                json!({"clusterIP": format!("10.96.0.{i}"),
                       "ports": [{"name": "http", "port": 80 + rng.u16(..2), "targetPort": 8080}]})
            };
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": format!("svc{i}"), "namespace": ns}, "spec": spec})
        }
        1 => {
            let endpoints: Vec<Value> = (0..rng.usize(..4))
                .map(|_| {
                    let p = rng.usize(..6);
                    json!({"addresses": [format!("10.1.0.{p}")],
                           "conditions": {"ready": rng.u8(..) < 200},
                           "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("pod{p}")}})
                })
                .collect();
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": format!("slice{}", rng.usize(..5)), "namespace": ns,
                                "labels": {"kubernetes.io/service-name": format!("svc{}", rng.usize(..4))}},
                   "addressType": if rng.u8(..) < 20 { "IPv6" } else { "IPv4" },
                   "ports": [{"name": "http", "port": 8080 + rng.i32(0..2), "protocol": "TCP"}],
                   "endpoints": endpoints})
        }
        2 => json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("pod{}", rng.usize(..6)), "namespace": ns,
                                 "labels": {"version": format!("v{}", rng.usize(..2))}}}),
        _ => {
            let field = if rng.u8(..) < 40 { "rout" } else { "route" };
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": format!("vs{}", rng.usize(..3)), "namespace": ns},
                   "spec": {"hosts": [format!("svc{}", rng.usize(..4))],
                            "http": [{field: [{"destination": {"host": format!("svc{}", rng.usize(..4))}}]}]}})
        }
    }
}

/// Any sequence of watch events read where they touched (with a relist now and then)
/// hands the model what reading every object does; objects nothing touched keep their
/// `Arc`.
#[test]
fn changes_read_where_touched_equal_a_full_read() {
    let mut rng = fastrand::Rng::with_seed(18);
    let mut cluster = Cluster::new();
    let mut reader = Reader::default();
    let mut live: Vec<Value> = Vec::new();
    let mut before: Vec<Arc<Loaded>> = Vec::new();
    let (mut reused, mut services) = (0, 0);
    for step in 0..400 {
        for _ in 0..rng.usize(1..=3) {
            if !live.is_empty() && rng.u8(..) < 50 {
                let gone = live.swap_remove(rng.usize(..live.len()));
                cluster.event(&gone, true);
                continue;
            }
            let o = random_object(&mut rng);
            let id = |v: &Value| {
                let m = &v["metadata"];
                (v["kind"].clone(), m["namespace"].clone(), m["name"].clone())
            };
            live.retain(|l| id(l) != id(&o));
            cluster.event(&o, false);
            live.push(o);
        }
        let touched = if rng.u8(..) < 15 {
            cluster.touched.take();
            Touched::default()
        } else {
            cluster.touched.take()
        };
        let got = reader.snapshot(&cluster.stores, touched, "cluster.local");
        assert_eq!(
            described(&got),
            described(&cluster.read_all()),
            "step {step}"
        );
        reused += got
            .objects
            .iter()
            .filter(|o| before.iter().any(|b| Arc::ptr_eq(b, o)))
            .count();
        services += got.objects.iter().filter(|o| o.kind == "Service").count();
        before = got.objects.to_vec();
    }
    // Most objects are untouched at each step: they are handed out as they were.
    assert!(reused * 2 > services, "{reused} reused of {services}");
}

/// A relist gives every object again: an Istio object with the same resourceVersion
/// keeps what was read of it (the model rebuilds nothing for it); a new version is
/// read again.
#[test]
fn a_relist_keeps_what_was_read_of_unchanged_istio_objects() {
    let mut c = Cluster::new();
    let vs = |weight: u32| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "v", "namespace": "default"},
               "spec": {"hosts": ["h"], "http": [{"route": [{"destination": {"host": "h"}, "weight": weight}]}]}})
    };
    assert!(
        !c.touched.is_empty(),
        "nothing read yet: everything is to read"
    );
    c.event(&vs(100), false);
    let mut reader = Reader::default();
    let read = |reader: &mut Reader, c: &mut Cluster| {
        let s = reader.snapshot(&c.stores, c.touched.take(), "cluster.local");
        let vs = s
            .objects
            .to_vec()
            .into_iter()
            .find(|o| o.kind == "VirtualService");
        vs.expect("the VirtualService")
    };
    let first = read(&mut reader, &mut c);
    // A wake-up for events the snapshot took finds nothing pending.
    assert!(c.touched.is_empty());
    let mut listed = vs(100);
    listed["metadata"]["resourceVersion"] = c.version.to_string().into();
    let listed: DynamicObject = serde_json::from_value(listed).expect("an object");
    let i = ISTIO_KINDS.iter().position(|(k, _)| *k == "VirtualService");
    let w = &mut c.istio[i.expect("a kind")];
    for event in [Event::Init, Event::InitApply(listed), Event::InitDone] {
        w.apply_watcher_event(&event);
        c.touched.event("VirtualService", &event);
    }
    assert!(Arc::ptr_eq(&first, &read(&mut reader, &mut c)));
    c.event(&vs(100), false);
    assert!(!c.touched.is_empty());
    assert!(!Arc::ptr_eq(&first, &read(&mut reader, &mut c)));
}

/// The endpoints of one EndpointSlice share one copy of its ports, in the ServiceEntry
/// and in the model's catalogue (a copy each was most of a Service's memory).
#[test]
fn a_slices_endpoints_share_one_copy_of_its_ports() {
    let (objects, diags) = snapshot(&seed());
    assert!(diags.is_empty(), "{diags:?}");
    let doc = (objects.iter())
        .find(|o| o.kind == "Service")
        .expect("a Service");
    let r = doc.resource();
    let Resource::ServiceEntry(se) = &*r else {
        panic!("a ServiceEntry");
    };
    let [a, b] = &se.spec.endpoints[..] else {
        panic!("two endpoints: {:?}", se.spec.endpoints);
    };
    assert_eq!(a.ports.get("http"), Some(&11400));
    assert!(a.ports.same(&b.ports), "{:?} {:?}", a.ports, b.ports);
    let mut diags = Vec::new();
    let services = crate::model::catalog::from_service_entry(doc, &se.spec, &mut diags);
    let [x, y] = &services[0].endpoints[..] else {
        panic!("two endpoints: {:?}", services[0].endpoints);
    };
    assert_ne!(x.address, y.address);
    assert!(x.ports.same(&y.ports), "{:?} {:?}", x.ports, y.ports);
}
