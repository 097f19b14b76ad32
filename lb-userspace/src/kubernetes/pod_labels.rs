//! The cluster's pods as lb needs them: each pod's labels, by namespace and name
//! (store.rs), and pods with the same labels (a ReplicaSet's pods have the same: the
//! pod-template hash is the ReplicaSet's) share one copy — ~120 bytes a pod.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;

use super::store::{self, Store, Writer};
use crate::smallmap::{LabelSets, Labels};

/// The pods' labels.
pub type PodLabels = Store<Arc<Labels>>;

/// A store of the pods' labels and its writer.
pub fn store() -> (PodLabels, Writer<PartialObjectMeta<Pod>, Arc<Labels>>) {
    let mut shared = LabelSets::default();
    store::store(move |pod: &PartialObjectMeta<Pod>| {
        let labels = pod.metadata.labels.iter().flatten();
        shared.share(
            labels
                .map(|(k, v)| (k.as_str(), v.as_str().into()))
                .collect(),
        )
    })
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;

    fn pod(name: &str, version: &str) -> PartialObjectMeta<Pod> {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"app": "backend", "version": version}}}))
        .expect("a pod")
    }

    #[test]
    fn pods_with_the_same_labels_share_them() {
        let (store, mut w) = store();
        for i in 0..100 {
            let v = if i % 10 == 0 { "v1" } else { "v0" };
            w.apply_watcher_event(&Event::Apply(pod(&format!("p{i}"), v)));
        }
        let get = |name: &str| store.get("default", name).expect(name);
        let v0: Vec<(&str, &str)> = vec![("app", "backend"), ("version", "v0")];
        assert_eq!(
            get("p1").iter().map(|(k, v)| (k, &**v)).collect::<Vec<_>>(),
            v0
        );
        assert!(Arc::ptr_eq(&get("p1"), &get("p2")));
        assert!(!Arc::ptr_eq(&get("p1"), &get("p10")));
    }
}
