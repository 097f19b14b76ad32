//! The applier without a kernel: golden write sequences (tests/apply), and a failure
//! injected at every write of an apply leaves the maps and the route table as before.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::fake::{Contents, FakeMaps};
use super::*;
use crate::compile::Plan;

/// The seed's service at `weights` (v0, v1), with v1 on `v1_endpoints`, and optionally
/// a second service.
fn config(weights: (u32, u32), v1_endpoints: &[&str], second: bool) -> String {
    let eps: String = v1_endpoints
        .iter()
        .map(|a| format!("  - {{address: {a}, labels: {{version: v1}}}}\n"))
        .collect();
    let mut out = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend-service}}
spec:
  hosts: [backend-service]
  addresses: [127.10.0.1]
  ports: [{{number: 10000, name: http}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.2, labels: {{version: v0}}}}
{eps}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend-dr}}
spec:
  host: backend-service
  subsets:
  - {{name: v0, labels: {{version: v0}}}}
  - {{name: v1, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend-vs}}
spec:
  hosts: [backend-service]
  http:
  - route:
    - {{destination: {{host: backend-service, subset: v0}}, weight: {}}}
    - {{destination: {{host: backend-service, subset: v1}}, weight: {}}}
",
        weights.0, weights.1
    );
    if second {
        out.push_str(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other}
spec:
  hosts: [other]
  addresses: [127.10.0.2]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.4}
",
        );
    }
    out
}

fn plan(yaml: &str) -> Plan {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), yaml).expect("write");
    let model = crate::model::load_dir(dir.path()).expect("valid").model;
    crate::compile::plan(model).expect("compiles")
}

fn applier(maps: FakeMaps) -> (Applier<FakeMaps>, watch::Receiver<Arc<RouteTable>>) {
    let (tx, rx) = watch::channel(Arc::new(RouteTable::default()));
    (Applier::adopt(maps, tx).expect("adopt"), rx)
}

/// Contents without the apply time (a clock reading).
fn timeless(c: &Contents) -> Contents {
    let mut c = c.clone();
    c.state.applied_at_ms = 0;
    c
}

#[test]
fn golden_write_sequences_add_change_and_remove() {
    let (mut a, _rx) = applier(FakeMaps::default());
    let steps = [
        ("the seed's 90/10", config((90, 10), &["127.0.0.3"], false)),
        (
            "70/30, a second v1 endpoint, another service",
            config((70, 30), &["127.0.0.3", "127.0.0.5"], true),
        ),
        (
            "the same again",
            config((70, 30), &["127.0.0.5", "127.0.0.3"], true),
        ),
        (
            "back to 90/10, the other service gone",
            config((90, 10), &["127.0.0.3"], false),
        ),
    ];
    let mut rendered = String::new();
    for (what, yaml) in &steps {
        let before = a.maps().log.len();
        let (report, garbage) = a.apply(&plan(yaml)).expect("applies");
        rendered.push_str(&format!("# {what}: {report:?}\n"));
        for line in &a.maps().log[before..] {
            rendered.push_str(line);
            rendered.push('\n');
        }
        let before = a.maps().log.len();
        a.collect_garbage(garbage);
        rendered.push_str("# after the grace period\n");
        for line in &a.maps().log[before..] {
            rendered.push_str(line);
            rendered.push('\n');
        }
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/apply/seed-sequence.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).expect("write golden");
    }
    let expected = std::fs::read_to_string(&path).expect("tests/apply/seed-sequence.txt");
    assert_eq!(
        rendered, expected,
        "UPDATE_GOLDEN=1 rewrites it; review the diff"
    );
}

#[test]
fn a_failure_at_any_write_leaves_maps_and_routes_as_before() {
    let first = plan(&config((90, 10), &["127.0.0.3"], true));
    let second = plan(&config((70, 30), &["127.0.0.3", "127.0.0.5"], false));
    // A clean run: how many writes the second apply makes, and what it leaves.
    let (mut clean, _rx) = applier(FakeMaps::default());
    clean.apply(&first).expect("first");
    let from = clean.maps().log.len();
    clean.apply(&second).expect("second");
    let writes = clean.maps().log.len() - from;
    let after_second = timeless(&clean.maps().contents);
    assert!(writes > 10, "{writes} writes");
    for i in 0..writes {
        let (mut a, rx) = applier(FakeMaps::default());
        a.apply(&first).expect("first");
        let before = a.maps().contents.clone();
        let table = rx.borrow().clone();
        let mut maps = std::mem::take(&mut a.maps);
        maps.fail_at = Some(maps.log.len() + i);
        a.maps = maps;
        let err = a.apply(&second).expect_err("fails");
        assert!(matches!(err, ApplyError::Step { .. }), "write {i}: {err}");
        assert_eq!(a.maps().contents, before, "write {i} failed: {err}");
        assert!(
            Arc::ptr_eq(&rx.borrow(), &table),
            "write {i}: the route table changed"
        );
        // The plan still applies afterwards, to the same contents as a clean run.
        a.apply(&second).expect("applies after the failure");
        assert_eq!(
            timeless(&a.maps().contents),
            after_second,
            "after failing at write {i}"
        );
        assert!(Arc::ptr_eq(&rx.borrow(), &second.proxy));
    }
}

#[test]
fn the_error_names_the_failed_step() {
    let (mut a, _rx) = applier(FakeMaps::default());
    a.maps.fail_at = Some(0);
    let err = a
        .apply(&plan(&config((90, 10), &["127.0.0.3"], false)))
        .expect_err("fails");
    assert_eq!(
        err.to_string(),
        "writing revision 1 of 127.10.0.1:10000: LB_ENDPOINTS 127.10.0.1:10000 r1 subset 954a47fb #0 = 127.0.0.2:10000: injected failure; rolled back, the running plan stays"
    );
}

#[test]
fn a_plan_over_capacity_writes_nothing() {
    let (mut a, rx) = applier(FakeMaps::default());
    let mut big = plan(&config((90, 10), &["127.0.0.3"], false));
    let kernel = Arc::make_mut(&mut big.kernel);
    let svc = kernel.services.values_mut().next().expect("one");
    Arc::make_mut(svc).subsets[0].endpoints =
        vec![Default::default(); (capacity::ENDPOINTS * lb_common::PER_ENTRY) as usize + 1];
    let err = a.apply(&big).expect_err("too big");
    assert!(
        matches!(
            err,
            ApplyError::Full {
                map: "LB_ENDPOINTS",
                ..
            }
        ),
        "{err}"
    );
    assert!(a.maps().log.is_empty());
    assert!(rx.borrow().vhosts.is_empty(), "no route table published");
}

#[test]
fn adopting_sweeps_revisions_no_service_uses() {
    let (mut a, _rx) = applier(FakeMaps::default());
    a.apply(&plan(&config((90, 10), &["127.0.0.3"], false)))
        .expect("first");
    // A daemon that died before its grace period: revision 1 is still there.
    a.apply(&plan(&config((50, 50), &["127.0.0.3"], false)))
        .expect("second");
    let mut maps = std::mem::take(&mut a.maps);
    // One entry of slots each (10 and 2 slots).
    assert_eq!(maps.contents.slots.len(), 2);
    maps.log.clear();
    let (b, _rx) = applier(maps);
    assert_eq!(
        b.maps().log,
        [
            "LB_SLOTS 127.10.0.1:10000 r1 #0 deleted",
            "LB_ENDPOINTS 127.10.0.1:10000 r1 subset 944a4668 #0 deleted",
            "LB_ENDPOINTS 127.10.0.1:10000 r1 subset 954a47fb #0 deleted",
        ]
    );
    assert_eq!(b.maps().contents.slots.len(), 1);
    // What it read back is what it wrote: the same plan again changes nothing.
    let mut b = b;
    let (report, _) = b
        .apply(&plan(&config((50, 50), &["127.0.0.3"], false)))
        .expect("same plan");
    assert_eq!(report.unchanged, 1);
}

/// A service served at a node address: each subset of more than one endpoint gets a
/// Maglev table after its endpoints (its slots say its size), read back as applied,
/// and collected with its revision.
#[test]
fn a_north_south_subset_has_its_maglev_table_after_its_endpoints() {
    let north_south = |v1: &[&str]| {
        let dir = tempfile::tempdir().expect("tmp");
        let yaml = config((50, 50), v1, false);
        std::fs::write(dir.path().join("c.yaml"), yaml).expect("write");
        let opts = crate::model::Options {
            node_addresses: vec!["127.10.0.1".parse().expect("addr")],
            ..Default::default()
        };
        let model = crate::model::load_dir_with(dir.path(), &mut Default::default(), &opts)
            .expect("valid")
            .model;
        crate::compile::plan(model).expect("compiles")
    };
    let (mut a, _rx) = applier(FakeMaps::default());
    a.apply(&north_south(&["127.0.0.3", "127.0.0.5"]))
        .expect("applies");
    let c = &a.maps().contents;
    let slot_of = |name: &str| {
        let sub = *c
            .subset_meta
            .iter()
            .find(|(_, m)| crate::datapath::plan_maps::c_str(&m.name) == name)
            .expect("subset")
            .0;
        let slot = (c.slots.values())
            .flat_map(|chunk| chunk.slots)
            .find(|s| s.subset == sub.subset)
            .expect("slot");
        (sub.subset, slot)
    };
    let (v0, v0_slot) = slot_of("v0");
    let (v1, v1_slot) = slot_of("v1");
    assert_eq!(
        (v0_slot.table, v1_slot.table),
        (0, 251),
        "one endpoint: no table"
    );
    // In key order, so chunk by chunk; a chunk's unused tail is zeroes.
    let entries = |subset: u32| -> Vec<SockAddr4> {
        (c.endpoints.iter())
            .filter(|(k, _)| k.subset == subset && k.revision == 1)
            .flat_map(|(_, chunk)| chunk.endpoints)
            .filter(|e| *e != SockAddr4::default())
            .collect()
    };
    assert_eq!(entries(v0).len(), 1);
    let v1_entries = entries(v1);
    assert_eq!(v1_entries.len(), 2 + 251);
    let held = |addr: [u8; 4]| v1_entries[2..].iter().filter(|e| e.addr == addr).count();
    assert_eq!(held([127, 0, 0, 3]) + held([127, 0, 0, 5]), 251);
    assert!(held([127, 0, 0, 3]).abs_diff(held([127, 0, 0, 5])) <= 1);
    // The kernel's pick lands in the table, on one of the subset's endpoints.
    for hash in [0, 1, 0xdead_beef, u32::MAX] {
        let index = lb_common::flow_endpoint_index(hash, &v1_slot) as usize;
        assert!((2..2 + 251).contains(&index), "{index}");
    }

    // Read back by the next daemon as applied: the same plan changes nothing.
    let maps = std::mem::take(&mut a.maps);
    let (mut b, _rx) = applier(maps);
    let (report, _) = b
        .apply(&north_south(&["127.0.0.3", "127.0.0.5"]))
        .expect("same plan");
    assert_eq!(report.unchanged, 1, "{report:?}");
    // A third endpoint: a new revision with its table; the old one collected whole.
    let (_, garbage) = b
        .apply(&north_south(&["127.0.0.3", "127.0.0.5", "127.0.0.6"]))
        .expect("third endpoint");
    b.collect_garbage(garbage);
    let c = &b.maps().contents;
    assert!(c.endpoints.keys().all(|k| k.revision == 2), "r1 collected");
    assert_eq!(
        c.endpoints.keys().filter(|k| k.subset == v1).count() as u32,
        lb_common::chunks(3 + 251)
    );
}
