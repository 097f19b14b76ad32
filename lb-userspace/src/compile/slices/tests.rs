//! A property: any sequence of changes, applied slice by slice (each step reusing the
//! slices and plans of the step before, as the daemon does), gives what a full build
//! of the final state gives — the same problems, or the same map image, outlier
//! detection and route table.

use std::sync::Arc;

use super::*;
use crate::apply::fake::FakeMaps;
use crate::diagnostic::{self, Diagnostic};
use crate::load::{self, Loaded};
use crate::model::{self, accept};

const SERVICES: usize = 6;

/// Object `slot` (a ServiceEntry, DestinationRule or VirtualService of one service) in
/// form `variant` (0: absent); some forms clash with others on purpose.
fn object(slot: usize, variant: u64) -> Option<String> {
    let (k, kind) = (slot / 3, slot % 3);
    let next = (k + 1) % SERVICES;
    let head = |kind: &str, name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: t}}\nspec:\n"
        )
    };
    let text = match (kind, variant) {
        (_, 0) => return None,
        (0, v) => {
            // Form 3 takes service 0's address.
            let ip = if v == 3 { 1 } else { k + 1 };
            let extra = if v == 2 {
                "  - {address: 127.0.0.9, labels: {version: v1}, ports: {http: 8081}}\n"
            } else {
                ""
            };
            let hosts = if v == 4 {
                format!("[s{k}, x{k}.example.org]")
            } else {
                format!("[s{k}]")
            };
            format!(
                "{}  hosts: {hosts}\n  addresses: [127.30.0.{ip}]\n  ports: [{{number: 80, name: http}}]\n  endpoints:\n  - {{address: 127.0.0.2, labels: {{version: v0}}}}\n  - {{address: 127.0.0.3, labels: {{version: v1}}}}\n{extra}",
                head("ServiceEntry", &format!("s{k}"))
            )
        }
        (1, v) => {
            let host = if v == 4 {
                format!("s{next}")
            } else {
                format!("s{k}")
            };
            let policy = match v {
                2 => {
                    "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n"
                }
                3 => {
                    "  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s}}\n"
                }
                _ => "",
            };
            format!(
                "{}  host: {host}\n{policy}  subsets: [{{name: v0, labels: {{version: v0}}}}, {{name: v1, labels: {{version: v1}}}}]\n",
                head("DestinationRule", &format!("s{k}"))
            )
        }
        (_, v) => {
            let name = if v == 6 {
                "shared".to_string()
            } else {
                format!("s{k}")
            };
            let hosts = if v == 4 {
                format!("[s{k}, alias{}.example.org]", k % 2)
            } else {
                format!("[s{k}]")
            };
            let dest = if v == 5 {
                format!("s{next}")
            } else {
                format!("s{k}")
            };
            let subset = if v == 3 { "v9" } else { "v1" };
            let matches = if v == 2 {
                "  - match: [{headers: {x-canary: {exact: \"1\"}}}]\n    route: [{destination: {host: DEST, subset: v1}}]\n".replace("DEST", &dest)
            } else {
                String::new()
            };
            format!(
                "{}  hosts: {hosts}\n  http:\n{matches}  - route:\n    - {{destination: {{host: {dest}, subset: v0}}, weight: {}}}\n    - {{destination: {{host: {dest}, subset: {subset}}}, weight: {}}}\n",
                head("VirtualService", &name),
                90 - v * 10,
                10 + v * 10
            )
        }
    };
    Some(text)
}

fn parse(slot: usize, text: &str) -> Arc<Loaded> {
    let (mut out, mut diags) = (Vec::new(), Vec::new());
    let file = format!("{slot:02}.yaml");
    load::load_text(std::path::Path::new(&file), text, &mut out, &mut diags);
    assert!(diags.is_empty(), "{text}: {diags:?}");
    Arc::new(out.pop().expect("one document"))
}

fn said(d: &[Diagnostic]) -> Vec<String> {
    d.iter().map(ToString::to_string).collect()
}

/// A route table in a form that compares: what each name, address and wildcard leads
/// to, and the rules of each vhost.
fn describe(t: &RouteTable) -> String {
    let vh = |i: &usize| format!("{:?}", t.vhosts[*i]);
    let sorted = |it: &mut dyn Iterator<Item = String>| {
        let mut v: Vec<String> = it.collect();
        v.sort();
        v
    };
    let hosts = sorted(&mut t.hosts.iter().map(|(h, i)| format!("{h} -> {}", vh(i))));
    let by = sorted(
        &mut t
            .by_service
            .iter()
            .map(|(a, i)| format!("{a} -> {}", vh(i))),
    );
    let services = sorted(&mut t.services.iter().map(|(a, n)| format!("{a} {n}")));
    let endpoints = sorted(&mut t.endpoints.keys().map(ToString::to_string));
    let wild: Vec<String> = t
        .wildcards
        .iter()
        .map(|(w, i)| format!("{w} -> {}", vh(i)))
        .collect();
    format!(
        "{hosts:#?}\n{by:#?}\n{services:?}\n{endpoints:?}\n{wild:?}\nheaders={} vhosts={}",
        t.matches_headers,
        t.vhosts.iter().filter(|v| !v.is_unused()).count()
    )
}

/// What the maps hold, revisions aside (an incremental applier counts them up).
fn held(a: &crate::apply::Applier<FakeMaps>) -> Vec<String> {
    let services = crate::datapath::plan_maps::read_services(&a.maps().contents).expect("reads");
    (services.iter())
        .map(|(k, p)| {
            let e = p.entry;
            format!(
                "{k:?} {} {} {} {:?}",
                e.mode, e.flags, e.slot_count, p.image
            )
        })
        .collect()
}

#[test]
fn changes_applied_slice_by_slice_equal_a_full_build() {
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let opts = model::Options::default();
    let mut reuse = crate::run::Reuse::default();
    let mut last_good = accept::LastGood::default();
    let mut slots: Vec<Option<Arc<Loaded>>> = (0..SERVICES * 3)
        .map(|s| object(s, u64::from(s % 3 != 2) + u64::from(s % 3 == 2)).map(|t| parse(s, &t)))
        .collect();
    let (mut valid, mut invalid) = (0, 0);
    // Valid steps with a service on the proxy, with a Host alias, with outlier
    // detection in the kernel.
    let (mut proxied, mut aliased, mut ejecting) = (0, 0, 0);
    let mut good = slots.clone();
    // The documents in runs of contiguous slots (as files), each run shared with the
    // step before while its documents are the same; now and then one run of all (as
    // the cluster's).
    let mut runs: Vec<(Vec<usize>, crate::load::docs::Run)> = Vec::new();
    // The incremental plans applied one after the other (the applier looks at what
    // the compiler says changed) hold what the full plan applied afresh holds.
    let (tx, _rx) = tokio::sync::watch::channel(Default::default());
    let mut applier = crate::apply::Applier::adopt(FakeMaps::default(), tx).expect("adopt");
    for step in 0..400 {
        if step > 0 {
            // One to three objects change (some steps change none: a reload that
            // reads nothing new).
            for _ in 0..next(4) {
                let slot = next(slots.len() as u64) as usize;
                // Mostly the plain forms, so most steps are valid.
                let variant = match next(10) {
                    0..=2 => 1,
                    3 => 0,
                    _ => 1 + next(6),
                };
                slots[slot] = object(slot, variant).map(|t| parse(slot, &t));
            }
        }
        let loaded: Vec<Arc<Loaded>> = slots.iter().flatten().cloned().collect();
        let docs: crate::load::Docs = if next(5) == 0 {
            loaded.clone().into()
        } else {
            let mut docs = crate::load::Docs::default();
            for (r, part) in slots.chunks(slots.len().div_ceil(6)).enumerate() {
                let part: Vec<Arc<Loaded>> = part.iter().flatten().cloned().collect();
                let ptrs: Vec<usize> = part.iter().map(|l| Arc::as_ptr(l) as usize).collect();
                if runs.get(r).is_none_or(|(p, _)| *p != ptrs) {
                    runs.truncate(r);
                    runs.push((ptrs, part.into()));
                }
                docs.push(runs[r].1.clone());
            }
            docs
        };
        let mut full_diags = Vec::new();
        let full = model::build(&loaded, &mut full_diags);
        diagnostic::sort(&mut full_diags);
        let sliced = accept::build(
            accept::Input {
                loaded: docs,
                diags: Vec::new(),
            },
            accept::Input::default(),
            &mut last_good,
            &mut reuse.model,
            &opts,
        );
        match sliced {
            Err(model::ModelError::Invalid { diagnostics }) => {
                assert!(
                    full_diags.iter().any(Diagnostic::is_error),
                    "step {step}: only the slices found {:?}",
                    said(&diagnostics)
                );
                assert_eq!(said(&diagnostics), said(&full_diags), "step {step}");
                invalid += 1;
                // Errors pile up if never mended: mostly, the operator fixes them.
                if next(3) > 0 {
                    slots.clone_from(&good);
                }
            }
            Err(e) => panic!("step {step}: {e}"),
            Ok((v, _)) => {
                assert_eq!(said(&v.warnings), said(&full_diags), "step {step}");
                let a = plan_slices(&v.slices, v.changes, opts.normalization, &mut reuse.plans)
                    .expect("compiles");
                let b = crate::compile::plan(full).expect("compiles");
                assert_eq!(a.kernel, b.kernel, "step {step}");
                assert_eq!(a.outliers, b.outliers, "step {step}");
                assert_eq!(describe(&a.proxy), describe(&b.proxy), "step {step}");
                applier.apply(&a).expect("applies");
                let (tx, _rx) = tokio::sync::watch::channel(Default::default());
                let mut fresh =
                    crate::apply::Applier::adopt(FakeMaps::default(), tx).expect("adopt");
                fresh.apply(&b).expect("applies");
                assert_eq!(held(&applier), held(&fresh), "step {step}");
                valid += 1;
                good.clone_from(&slots);
                proxied += usize::from(
                    a.kernel
                        .services
                        .values()
                        .any(|s| s.mode == lb_common::mode::PROXY),
                );
                aliased += usize::from(a.proxy.hosts.keys().any(|h| h.starts_with("alias")));
                ejecting += usize::from(!a.outliers.is_empty());
            }
        }
    }
    // Both kinds of state were visited often.
    let seen = format!(
        "valid {valid}, invalid {invalid}, proxied {proxied}, aliased {aliased}, ejecting {ejecting}"
    );
    assert!(valid > 100 && invalid > 50, "{seen}");
    assert!(proxied > 20 && aliased > 5 && ejecting > 5, "{seen}");
    eprintln!("{seen}");
}
