//! The cluster's pods as lb needs them: each pod's labels, by namespace and name
//! (store.rs), and pods with the same labels (a ReplicaSet's pods have the same: the
//! pod-template hash is the ReplicaSet's) share one copy — ~120 bytes a pod.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;

use super::store::{self, Store, Writer};
use crate::smallmap::Labels;

/// The pods' labels.
pub type PodLabels = Store<Arc<Labels>>;

/// A store of the pods' labels and its writer.
pub fn store() -> (PodLabels, Writer<PartialObjectMeta<Pod>, Arc<Labels>>) {
    let mut shared = Shared::default();
    store::store(move |pod: &PartialObjectMeta<Pod>| {
        let labels = pod.metadata.labels.iter().flatten();
        shared.share(
            labels
                .map(|(k, v)| (k.as_str(), v.as_str().into()))
                .collect(),
        )
    })
}

/// One copy of each label set in use (and some no longer: see [`Shared::share`]).
#[derive(Default)]
struct Shared {
    sets: HashSet<Arc<Labels>, foldhash::fast::RandomState>,
    /// Sets kept after the last sweep of those no pod holds.
    swept_at: usize,
}

impl Shared {
    /// `labels` as the copy already held, if any pod has the same.
    fn share(&mut self, labels: Labels) -> Arc<Labels> {
        if let Some(l) = self.sets.get(&labels) {
            return l.clone();
        }
        // Sets no one holds any more go when the sets have doubled since the last
        // sweep: a sweep's cost is spread over as many new sets.
        if self.sets.len() >= 2 * self.swept_at.max(64) {
            self.sets.retain(|l| Arc::strong_count(l) > 1);
            self.swept_at = self.sets.len();
        }
        let l = Arc::new(labels);
        self.sets.insert(l.clone());
        l
    }
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

    #[test]
    fn label_sets_no_one_holds_are_swept() {
        let mut shared = Shared::default();
        let mut held = Vec::new();
        for i in 0..1000 {
            let labels: Labels = [("version", format!("v{i}").into())].into_iter().collect();
            let l = shared.share(labels);
            // One in a hundred stays held (by a pod, an endpoint).
            if i % 100 == 0 {
                held.push(l);
            }
        }
        assert!(shared.sets.len() <= 128, "{} sets kept", shared.sets.len());
        for l in &held {
            assert!(shared.sets.contains(l), "a held set was swept");
        }
    }
}
