//! Golden map images: each folder of tests/golden holds a config and `expected.txt`,
//! the rendered image. `UPDATE_GOLDEN=1 cargo test` rewrites them (review the diff).

use std::path::PathBuf;

use super::*;
use crate::model::{self, Service, WeightedSubset};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

#[test]
fn golden_images() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden")
        .map(|e| e.expect("entry").path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "golden cases missing");
    for case in cases {
        let validated =
            model::load_dir(&case).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let rendered = compile(&validated.model).expect("compiles").render();
        let expected_path = case.join("expected.txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, &rendered).expect("write golden");
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        assert_eq!(rendered, expected, "golden image of {}", case.display());
    }
}

fn service(split: Vec<(&str, u32, usize)>) -> Model {
    let frontend: SocketAddrV4 = "127.10.0.1:80".parse().expect("addr");
    Model {
        services: vec![Service {
            name: "s".into(),
            namespace: "default".into(),
            host: "s.default.svc.cluster.local".into(),
            frontend,
            split: split
                .into_iter()
                .map(|(name, weight, n)| WeightedSubset {
                    name: name.into(),
                    weight,
                    endpoints: (0..n)
                        .map(|i| SocketAddrV4::new([127, 0, 0, 2 + i as u8].into(), 80))
                        .collect(),
                    kernel: Default::default(),
                })
                .collect(),
            virtual_service: None,
            proxy_reason: None,
            sticky_source: false,
            north_south: false,
            udp: false,
        }],
        ..Default::default()
    }
}

#[test]
fn weights_are_reduced_by_their_gcd() {
    let image = compile(&service(vec![("v0", 90, 7), ("v1", 10, 3)])).expect("compiles");
    let s = image.services.values().next().expect("one service");
    assert_eq!((s.slots.len(), s.weight_scale), (10, 10));
    assert_eq!(s.slots_of(s.subsets[0].id), 9);
    assert_eq!(s.subsets[0].endpoints.len(), 7);
}

#[test]
fn zero_weight_subsets_get_no_slot_but_stay_listed() {
    let image = compile(&service(vec![("v0", 0, 1), ("v1", 100, 1)])).expect("compiles");
    let s = image.services.values().next().expect("one service");
    assert_eq!(s.slots.len(), 1);
    assert_eq!(s.subsets.len(), 2);
    assert_eq!(s.slots_of(s.subsets[0].id), 0);
}

#[test]
fn coprime_weights_beyond_the_slot_bound_are_rejected() {
    let err = compile(&service(vec![("v0", 4999, 1), ("v1", 1, 1)])).expect_err("5000 slots");
    assert!(err.to_string().contains("need 5000 slots"), "{err}");
}

#[test]
fn subset_ids_are_stable_and_distinct() {
    let a = compile(&service(vec![("v0", 1, 1), ("v1", 1, 1)])).expect("compiles");
    let b = compile(&service(vec![("v1", 3, 1)])).expect("compiles");
    let (a, b) = (
        a.services.values().next().expect("a"),
        b.services.values().next().expect("b"),
    );
    assert_ne!(a.subsets[0].id, a.subsets[1].id);
    assert_eq!(
        a.subsets[1].id, b.subsets[0].id,
        "same name, same id across plans"
    );
}

/// The kernel path's share of a DestinationRule: each subset's outlier detection goes
/// to the plan; a Host alias routing to a service puts it on the proxy, and its own
/// name still routes to its endpoints there.
#[test]
fn kernel_policies_and_host_aliases_in_the_plan() {
    let dir = golden_dir().join("kernel-policy");
    let validated = model::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let plan = plan(validated.model).expect("compiles");
    let hashed = sock_addr("127.10.40.1:80".parse().expect("addr"));
    let subsets = &plan.outliers[&hashed];
    assert_eq!(subsets.len(), 2, "the top level's, for both subsets");
    assert!(subsets.values().all(|o| o.consecutive_5xx == 5));
    let aliased = sock_addr("127.10.40.2:80".parse().expect("addr"));
    let img = &plan.kernel.services[&aliased];
    assert_eq!((img.mode, img.reason), (mode::PROXY, reason::HOST_ROUTED));
    assert!(!plan.outliers.contains_key(&aliased));
    let q = |host: &str, path: &str| crate::explain::Query {
        host: host.into(),
        path: path.into(),
        method: "GET".into(),
        headers: Default::default(),
        to: Some("127.10.40.2:80".parse().expect("addr")),
    };
    let e = crate::explain::explain(&plan, &q("bar.example.com", "/bar/x"));
    assert_eq!(
        (
            e.virtual_service.as_deref(),
            e.request.path.as_str(),
            e.datapath
        ),
        (Some("default/alias"), "/baz/x", "proxy")
    );
    let e = crate::explain::explain(&plan, &q("aliased", "/y"));
    assert_eq!(e.action, "route", "{e:?}");
    assert_eq!(e.destinations.len(), 1);
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("default/alias routes Host bar.example.com here")),
        "{:?}",
        e.notes
    );
}

/// Served at a node address (lb run --xdp-iface): the UDP NodePort is a frontend of
/// its own, its subsets of more than one endpoint with Maglev tables; the TCP port has
/// no NodePort, and the ClusterIP's subsets no table (east-west: connect4 picks).
#[test]
fn a_udp_node_port_is_served_at_the_node_addresses_with_maglev_tables() {
    let opts = model::Options {
        node_addresses: vec!["10.250.0.1".parse().expect("addr")],
        ..Default::default()
    };
    let validated = model::load_dir_with(
        &golden_dir().join("udp-dns"),
        &mut Default::default(),
        &opts,
    )
    .expect("valid");
    let rendered = compile(&validated.model).expect("compiles").render();
    let node = rendered
        .split("service ")
        .find(|s| s.starts_with("10.250.0.1:30053/udp "))
        .unwrap_or_else(|| panic!("no UDP NodePort: {rendered}"));
    assert!(node.contains("mode=1"), "{node}");
    assert!(
        node.contains("subset v0 id=0x954a47fb slots=9 maglev=251 endpoints="),
        "{node}"
    );
    assert!(
        node.contains("subset v1 id=0x944a4668 slots=1 endpoints=[10.244.0.5:5353]"),
        "{node}"
    );
    assert!(!rendered.contains("10.250.0.1:53"), "{rendered}");
    assert_eq!(rendered.matches("maglev=").count(), 1, "{rendered}");
}
