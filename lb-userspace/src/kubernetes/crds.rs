//! `lb crds`: CustomResourceDefinitions for the three Istio kinds lb reads, for a
//! cluster without Istio. The API server stores the objects (every version lb reads:
//! v1, v1beta1, v1alpha3); their contents are checked by lb's own types when it reads
//! them, with errors that name the field (and an Event on the object), so the schema
//! here only says what is an object.

use serde_json::{Value, json};

use super::{ISTIO_GROUP, ISTIO_KINDS, ISTIO_VERSIONS};

/// Short names `kubectl` knows them by, as Istio's own CRDs give them.
fn short_names(kind: &str) -> &'static [&'static str] {
    match kind {
        "VirtualService" => &["vs"],
        "DestinationRule" => &["dr"],
        _ => &["se"],
    }
}

/// The CRDs as one YAML stream.
pub fn yaml() -> String {
    ISTIO_KINDS
        .iter()
        .map(|(kind, plural)| {
            let crd = crd(kind, plural);
            format!(
                "---\n{}",
                serde_yaml::to_string(&crd).expect("a JSON value serialises")
            )
        })
        .collect()
}

fn crd(kind: &str, plural: &str) -> Value {
    let versions: Vec<Value> = ISTIO_VERSIONS
        .iter()
        .map(|v| {
            json!({
                "name": v,
                "served": true,
                // One version is stored; all are served (the schemas are one).
                "storage": *v == ISTIO_VERSIONS[0],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": format!("Istio's {kind}, as lb reads it (lb checks the spec and reports problems)."),
                    "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                }},
                "subresources": {"status": {}},
            })
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{ISTIO_GROUP}"),
            "labels": {"app.kubernetes.io/managed-by": "lb"},
        },
        "spec": {
            "group": ISTIO_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_ascii_lowercase(),
                "shortNames": short_names(kind),
                "categories": ["istio-io", "networking-istio-io"],
            },
            "versions": versions,
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn three_crds_serving_every_version_lb_reads() {
        let text = super::yaml();
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .collect();
        let names: Vec<&str> = docs
            .iter()
            .map(|d| d["metadata"]["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            names,
            [
                "virtualservices.networking.istio.io",
                "destinationrules.networking.istio.io",
                "serviceentries.networking.istio.io"
            ]
        );
        for d in &docs {
            let versions = d["spec"]["versions"].as_array().expect("versions");
            let served: Vec<&str> = versions
                .iter()
                .map(|v| v["name"].as_str().expect("v"))
                .collect();
            assert_eq!(served, ["v1", "v1beta1", "v1alpha3"]);
            assert_eq!(versions.iter().filter(|v| v["storage"] == true).count(), 1);
        }
    }
}
