//! The cluster's pods as lb needs them: each pod's labels, by namespace and name, and
//! nothing else. A node's lb watches every pod of the cluster; kube-runtime's store
//! kept a whole `ObjectMeta` (and its key) per pod, ~1.1 KiB each even cut to name
//! and labels — 115 MB for 100,000 pods. Here a pod is its name and a pointer to its
//! labels, and pods with the same labels (a ReplicaSet's, but for its pod-template
//! hash: every pod of one) share one copy: ~120 bytes a pod.
//!
//! Filled from the watch's events as kube-runtime's store is: a relist (`Init`) is
//! gathered apart and replaces the pods at `InitDone`, so a reader never sees half a
//! list.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use hashbrown::{Equivalent, HashMap};
use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

use crate::smallmap::Labels;

/// (namespace, name)
type Key = (Box<str>, Box<str>);

/// A look-up by borrowed names: hashes as [`Key`] does (a tuple hashes its fields in
/// turn, a `Box<str>` as its `str`).
#[derive(Hash)]
struct Named<'a>(&'a str, &'a str);

impl Equivalent<Key> for Named<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        (self.0, self.1) == (&*key.0, &*key.1)
    }
}

/// Pods by key.
type ByKey = HashMap<Key, Arc<Labels>, foldhash::fast::RandomState>;

#[derive(Default)]
struct Pods {
    labels: ByKey,
    /// One copy of each label set in use (and some no longer: see [`Pods::share`]).
    shared: HashSet<Arc<Labels>, foldhash::fast::RandomState>,
    /// Label sets kept after the last sweep of those no pod holds.
    swept_at: usize,
}

impl Pods {
    /// `labels` as the copy already held, if any pod has the same.
    fn share(&mut self, labels: Labels) -> Arc<Labels> {
        if let Some(l) = self.shared.get(&labels) {
            return l.clone();
        }
        // Sets no pod holds any more go when the sets have doubled since the last
        // sweep: the cost of a sweep is spread over as many new sets.
        if self.shared.len() >= 2 * self.swept_at.max(64) {
            self.shared.retain(|l| Arc::strong_count(l) > 1);
            self.swept_at = self.shared.len();
        }
        let l = Arc::new(labels);
        self.shared.insert(l.clone());
        l
    }

    /// A pod's key and its labels (shared).
    fn read(&mut self, pod: &PartialObjectMeta<Pod>) -> (Key, Arc<Labels>) {
        let m = &pod.metadata;
        let key: Key = (
            m.namespace.as_deref().unwrap_or_default().into(),
            m.name.as_deref().unwrap_or_default().into(),
        );
        let labels = m.labels.iter().flatten();
        (key, self.share(labels.map(|(k, v)| (k.as_str(), v.as_str().into())).collect()))
    }
}

/// The pods' labels, for the snapshot's reader (cheap to clone: all clones share).
#[derive(Clone)]
pub struct PodLabels {
    pods: Arc<RwLock<Pods>>,
    ready: watch::Receiver<bool>,
}

/// Where the pods' watch writes.
pub struct Writer {
    pods: Arc<RwLock<Pods>>,
    ready: watch::Sender<bool>,
    /// A relist being gathered.
    listing: Option<ByKey>,
}

/// A store and its writer, empty and not ready.
pub fn store() -> (PodLabels, Writer) {
    let pods = Arc::new(RwLock::new(Pods::default()));
    let (tx, rx) = watch::channel(false);
    (
        PodLabels {
            pods: pods.clone(),
            ready: rx,
        },
        Writer {
            pods,
            ready: tx,
            listing: None,
        },
    )
}

impl PodLabels {
    /// The labels of pod `namespace/name`, if it is known.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Labels>> {
        let pods = self.pods.read().unwrap_or_else(PoisonError::into_inner);
        pods.labels.get(&Named(namespace, name)).cloned()
    }

    pub fn len(&self) -> usize {
        let pods = self.pods.read().unwrap_or_else(PoisonError::into_inner);
        pods.labels.len()
    }

    /// Returns once the first list is in.
    pub async fn wait_until_ready(&self) {
        let _ = self.ready.clone().wait_for(|r| *r).await;
    }
}

impl Writer {
    /// Applies one event of the pods' watch.
    pub fn apply_watcher_event(&mut self, event: &Event<PartialObjectMeta<Pod>>) {
        let mut pods = self.pods.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Apply(p) => {
                let (key, labels) = pods.read(p);
                pods.labels.insert(key, labels);
            }
            Event::Delete(p) => {
                let m = &p.metadata;
                let (ns, name) = (m.namespace.as_deref(), m.name.as_deref());
                let named = Named(ns.unwrap_or_default(), name.unwrap_or_default());
                pods.labels.remove(&named);
            }
            Event::Init => self.listing = Some(ByKey::default()),
            Event::InitApply(p) => {
                let (key, labels) = pods.read(p);
                let list = self.listing.get_or_insert_with(ByKey::default);
                list.insert(key, labels);
            }
            Event::InitDone => {
                pods.labels = self.listing.take().unwrap_or_default();
                drop(pods);
                self.ready.send_replace(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, version: &str) -> PartialObjectMeta<Pod> {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"app": "backend", "version": version}}}))
        .expect("a pod")
    }

    fn labels(store: &PodLabels, name: &str) -> Option<Vec<(String, String)>> {
        let l = store.get("default", name)?;
        Some(l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn pods_share_their_labels_and_a_relist_replaces_them_whole() {
        let (store, mut w) = store();
        assert!(!*store.ready.borrow());
        w.apply_watcher_event(&Event::Init);
        for i in 0..100 {
            let v = if i % 10 == 0 { "v1" } else { "v0" };
            w.apply_watcher_event(&Event::InitApply(pod(&format!("p{i}"), v)));
        }
        // Half a list is not seen.
        assert_eq!(store.len(), 0);
        w.apply_watcher_event(&Event::InitDone);
        assert!(*store.ready.borrow());
        assert_eq!(store.len(), 100);
        let v0 = || vec![("app".into(), "backend".into()), ("version".into(), "v0".into())];
        assert_eq!(labels(&store, "p1"), Some(v0()));
        assert!(Arc::ptr_eq(
            &store.get("default", "p1").expect("p1"),
            &store.get("default", "p2").expect("p2")
        ));
        assert!(!Arc::ptr_eq(
            &store.get("default", "p1").expect("p1"),
            &store.get("default", "p10").expect("p10")
        ));
        assert_eq!(store.get("other", "p1"), None);
        // Changes and deletions.
        w.apply_watcher_event(&Event::Apply(pod("p1", "v1")));
        assert_eq!(labels(&store, "p1").expect("p1")[1].1, "v1");
        w.apply_watcher_event(&Event::Delete(pod("p2", "v0")));
        assert_eq!(store.get("default", "p2"), None);
        // A relist of other pods: the old ones are gone at its end, not before.
        w.apply_watcher_event(&Event::Init);
        w.apply_watcher_event(&Event::InitApply(pod("q", "v2")));
        assert_eq!(store.len(), 99);
        w.apply_watcher_event(&Event::InitDone);
        assert_eq!(store.len(), 1);
        assert_eq!(labels(&store, "p1"), None);
        assert_eq!(labels(&store, "q").expect("q")[1].1, "v2");
    }

    #[test]
    fn label_sets_no_pod_holds_are_swept() {
        let (store, mut w) = store();
        for i in 0..1000 {
            // Each pod relabelled: the sets of before are held by no pod.
            w.apply_watcher_event(&Event::Apply(pod("p", &format!("v{i}"))));
        }
        let pods = store.pods.read().expect("pods");
        assert!(pods.shared.len() <= 128, "{} sets kept", pods.shared.len());
        assert_eq!(pods.labels.len(), 1);
    }
}
