//! The shared routing table (tests/routing): `lb explain` must give the expected rule,
//! action, rewritten request and response for every case. The kernel tests send the
//! same cases through the live proxy.

use std::path::PathBuf;

use http::HeaderMap;
use serde_json::Value;

use crate::explain::{Query, explain};
use crate::model;

/// Loads the shared cases: (case, query).
pub fn cases() -> Vec<(Value, Query)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/routing");
    let text = std::fs::read_to_string(dir.join("cases.jsonl")).expect("cases.jsonl");
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("case json");
            let mut headers = HeaderMap::new();
            for (k, val) in v["headers"].as_object().expect("headers") {
                headers.insert(
                    http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).expect("name"),
                    val.as_str().expect("str").parse().expect("value"),
                );
            }
            let to = match v["to"].as_str() {
                Some("backend") => Some("127.10.5.1:10500".parse().expect("addr")),
                Some("web") => Some("127.10.5.2:10500".parse().expect("addr")),
                _ => None,
            };
            let q = Query {
                host: v["host"].as_str().expect("host").into(),
                path: v["path"].as_str().expect("path").into(),
                method: v["method"].as_str().expect("method").into(),
                headers,
                to,
            };
            (v, q)
        })
        .collect()
}

#[test]
fn explain_agrees_with_the_shared_table() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/routing");
    let validated = model::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let plan = crate::compile::plan(validated.model).expect("compiles");
    let cases = cases();
    assert!(cases.len() >= 50, "at least 50 shared cases");
    let mut failures = Vec::new();
    for (v, q) in &cases {
        let e = explain(&plan, q);
        let x = &v["expect"];
        let subsets: Vec<String> = e
            .destinations
            .iter()
            .filter(|d| d.weight > 0)
            .map(|d| d.subset.clone().unwrap_or_else(|| "(all)".into()))
            .collect();
        let want_subsets: Vec<String> = x["subsets"]
            .as_array()
            .expect("subsets")
            .iter()
            .map(|s| s.as_str().expect("str").to_string())
            .collect();
        let got = (
            e.virtual_service.as_deref(),
            e.rule.map(|r| r as u64),
            e.action,
            e.request.path.as_str(),
            e.request.host.as_str(),
            e.response.as_ref().map(|r| u64::from(r.status)),
            &subsets,
        );
        let want = (
            x["virtual_service"].as_str(),
            x["rule"].as_u64(),
            x["action"].as_str().expect("action"),
            x["path"].as_str().expect("path"),
            x["host"].as_str().expect("host"),
            x["status"].as_u64(),
            &want_subsets,
        );
        if got != want {
            failures.push(format!(
                "{} {} host={:?} headers={}\n  want {want:?}\n  got  {got:?}\n{}",
                q.method,
                q.path,
                q.host,
                v["headers"],
                e.render()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A split where one subset has no endpoint: the proxy's decision answers 503 for the
/// requests that pick it, and `lb explain` (the same decision, asked per destination)
/// says so; when no subset has one, every request gets 503.
#[test]
fn explain_shows_the_share_a_subset_without_endpoints_answers_503() {
    let yaml = |w0: u32, w1: u32| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc}}
spec:
  hosts: [svc]
  addresses: [127.10.0.1]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.2, labels: {{version: v0}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc}}
spec:
  host: svc
  subsets: [{{name: v0, labels: {{version: v0}}}}, {{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc}}
spec:
  hosts: [svc]
  http:
  - match: [{{uri: {{prefix: /a}}}}]
    route: [{{destination: {{host: svc, subset: v0}}, weight: {w0}}}, {{destination: {{host: svc, subset: v1}}, weight: {w1}}}]
"
        )
    };
    let explain_at = |w0, w1| {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("c.yaml"), yaml(w0, w1)).expect("write");
        let model = model::load_dir(dir.path()).expect("valid").model;
        let plan = crate::compile::plan(model).expect("compiles");
        let q = Query {
            host: "svc".into(),
            path: "/a".into(),
            method: "GET".into(),
            headers: HeaderMap::new(),
            to: Some("127.10.0.1:80".parse().expect("addr")),
        };
        explain(&plan, &q)
    };
    let e = explain_at(90, 10);
    assert_eq!(
        (e.action, e.response.as_ref().map(|r| r.status)),
        ("route", None)
    );
    assert!(
        e.notes
            .iter()
            .any(|n| n == "requests picking v1 get 503: no healthy upstream"),
        "{:?}",
        e.notes
    );
    let endpoints: Vec<usize> = e.destinations.iter().map(|d| d.endpoints).collect();
    assert_eq!(endpoints, [1, 0]);
    let e = explain_at(0, 10);
    assert_eq!(
        (e.action, e.response.as_ref().map(|r| r.status)),
        ("route", Some(503))
    );
}

/// A DestinationRule's traffic policy reaches each destination with Istio's override:
/// a subset's group replaces the top level's, the groups it does not set are the top
/// level's.
#[test]
fn destination_rules_policy_reaches_each_subset_with_istios_override() {
    use crate::route::policy::{Balance, HashKey};
    let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc}
spec:
  hosts: [svc]
  addresses: [127.10.0.1]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.2, labels: {version: v0}}, {address: 127.0.0.3, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc}
spec:
  host: svc
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {connectTimeout: 250ms}, http: {maxRequestsPerConnection: 1}}
    outlierDetection: {consecutive5xxErrors: 2}
  subsets:
  - {name: v0, labels: {version: v0}}
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc}
spec:
  hosts: [svc]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: svc, subset: v0}, weight: 50}, {destination: {host: svc, subset: v1}, weight: 50}]
";
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), yaml).expect("write");
    let plan =
        crate::compile::plan(model::load_dir(dir.path()).expect("valid").model).expect("plan");
    let super::Action::Route { destinations, .. } = &plan.proxy.vhosts[0].rules[0].action else {
        panic!("a route");
    };
    let (v0, v1) = (&destinations[0].policy, &destinations[1].policy);
    assert_eq!((v0.balance, v0.hash.as_ref()), (Balance::RoundRobin, None));
    assert_eq!(
        v1.hash,
        Some(HashKey::Header(http::HeaderName::from_static("x-user")))
    );
    for p in [v0, v1] {
        assert_eq!(
            p.pool.connect_timeout,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(p.pool.max_requests, Some(1));
        assert_eq!(p.outlier.as_ref().map(|o| o.consecutive_5xx), Some(2));
    }
}

/// `httpCookie.ttl`: a request without the cookie hashes to the value lb sets for it,
/// so the client's next requests (carrying it) go where the first went.
#[test]
fn a_generated_cookie_hashes_as_the_cookie_it_sets() {
    use crate::route::policy::{Cookie, HashKey};
    let c = Cookie {
        name: "user".into(),
        generate: Some((std::time::Duration::from_secs(60), Some("/".into()))),
    };
    let empty = HeaderMap::new();
    let req = |headers| super::Request {
        method: "GET",
        scheme: "http",
        path_and_query: "/",
        authority: "h",
        headers,
        dialled: None,
        peer: Some("10.0.0.7".parse().expect("ip")),
    };
    let (key, set) = c.generated(&req(&empty)).expect("generated");
    let value = set.split(';').next().expect("pair");
    assert!(set.ends_with("; Max-Age=60; Path=/; HttpOnly"), "{set}");
    let mut with = HeaderMap::new();
    with.insert(http::header::COOKIE, value.parse().expect("value"));
    assert_eq!(HashKey::Cookie(c.clone()).of(&req(&with)), Some(key));
    let session = Cookie {
        generate: Some((std::time::Duration::ZERO, None)),
        ..c
    };
    let (_, set) = session.generated(&req(&empty)).expect("generated");
    assert!(
        !set.contains("Max-Age") && set.ends_with("; HttpOnly"),
        "{set}"
    );
}

/// `portLevelSettings`, as Istio merges them: at a port with its own entry, that entry
/// replaces the level's groups whole (what it leaves out is at its default, not
/// inherited); a subset's groups then replace the top level's; other ports keep the
/// destination's policy. `lb explain` and both engines read the policy at the port a
/// request goes to.
#[test]
fn port_level_settings_replace_the_level_at_their_port() {
    use crate::route::policy::Balance;
    let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc}
spec:
  hosts: [svc]
  addresses: [127.10.0.1]
  ports: [{number: 80, name: http}, {number: 81, name: http-admin}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.2, labels: {version: v0}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc}
spec:
  host: svc
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {http: {maxRequestsPerConnection: 7}}
    portLevelSettings:
    - port: {number: 81}
      connectionPool: {tcp: {maxConnections: 3}}
  subsets:
  - name: v0
    labels: {version: v0}
    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 4}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc}
spec:
  hosts: [svc]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: svc, subset: v0}}]
";
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), yaml).expect("write");
    let plan =
        crate::compile::plan(model::load_dir(dir.path()).expect("valid").model).expect("plan");
    let super::Action::Route { destinations, .. } = &plan.proxy.vhosts[0].rules[0].action else {
        panic!("a route");
    };
    let d = &destinations[0];
    let (p80, p81) = (d.policy_at(Some(80)), d.policy_at(Some(81)));
    assert_eq!(p80.balance, Balance::RoundRobin);
    assert_eq!(p80.pool.max_requests, Some(7));
    // Port 81: the port-level entry replaced the top level whole (balancer back at
    // its default, no maxRequestsPerConnection); the subset's outlier detection stays.
    assert_eq!(p81.balance, Balance::LeastRequest);
    assert_eq!(
        (p81.pool.max_requests, p81.pool.limits.connections),
        (None, Some(3))
    );
    for p in [p80, p81] {
        assert_eq!(p.outlier.as_ref().map(|o| o.consecutive_5xx), Some(4));
    }
    assert_eq!(d.port_policies.len(), 1, "only port 81 differs");
}

/// The route table holds one copy of Istio's default policies, whatever number of
/// rules and destinations have them; a destination with a policy of its own has it.
#[test]
fn default_policies_are_one_shared_copy() {
    use crate::route::policy::{Balance, Defaults, DestinationPolicy, Policy};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tmp");
    let mut yaml = String::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let lb = if *name == "b" {
            "trafficPolicy: {loadBalancer: {simple: RANDOM}}"
        } else {
            ""
        };
        yaml.push_str(&format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  addresses: [127.10.0.{n}]
  ports: [{{number: 80, name: http}}]
  endpoints:
  - {{address: 127.20.0.{n}, ports: {{http: 8000}}, labels: {{version: v0}}}}
  - {{address: 127.20.0.{n}, ports: {{http: 8001}}, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}}}
spec:
  host: {name}
  {lb}
  subsets: [{{name: v0, labels: {{version: v0}}}}, {{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  http:
  - route:
    - {{destination: {{host: {name}, subset: v0}}, weight: 90}}
    - {{destination: {{host: {name}, subset: v1}}, weight: 10}}
---
",
            n = i + 1
        ));
    }
    std::fs::write(dir.path().join("c.yaml"), yaml).expect("write");
    let model = model::load_dir(dir.path()).expect("valid").model;
    let table = crate::compile::plan(model).expect("compiles").proxy;
    let mut seen = 0;
    for vh in table.vhosts.iter().filter(|v| !v.is_unused()) {
        let b = vh.name.ends_with("/b");
        for rule in &vh.rules {
            assert!(Arc::ptr_eq(&rule.policy, Policy::defaults()), "{}", vh.name);
            let crate::route::Action::Route { destinations, .. } = &rule.action else {
                panic!("a route");
            };
            for d in destinations {
                seen += 1;
                let shared = Arc::ptr_eq(&d.policy, DestinationPolicy::defaults());
                assert_eq!(shared, !b, "{}: {:?}", vh.name, d.policy);
                let balance = if b {
                    Balance::Random
                } else {
                    Balance::default()
                };
                assert_eq!(d.policy.balance, balance);
            }
        }
    }
    assert_eq!(seen, 4);
}
