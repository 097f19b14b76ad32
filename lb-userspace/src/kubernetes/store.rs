//! A store of lb's own for a watched kind: each object only as lb reads it (`T`), by
//! namespace and name. kube-runtime's store keeps every object whole, and a node's lb
//! watches every pod and Istio object of the cluster: kept whole, 100,000 pods took
//! 115 MB (an `ObjectMeta` each, cut to name and labels) and 30,000 Istio objects
//! 105 MB (JSON trees, which the snapshot then read into typed resources, kept
//! besides). Here a pod is its labels (shared by the pods that have the same,
//! pod_labels.rs) and an Istio object its typed resource, read once as it arrives.
//!
//! Filled from the watch's events as kube-runtime's store is: a relist (`Init`) is
//! gathered apart and replaces the objects at `InitDone`, so a reader never sees half
//! a list; the store is ready once the first list is in.

use std::sync::{Arc, PoisonError, RwLock};

use hashbrown::{Equivalent, HashMap};
use kube::runtime::watcher::Event;
use tokio::sync::watch;

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

type ByKey<T> = HashMap<Key, T, foldhash::fast::RandomState>;

/// The objects, for the snapshot's reader (cheap to clone: clones share).
pub struct Store<T> {
    objects: Arc<RwLock<ByKey<T>>>,
    ready: watch::Receiver<bool>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            objects: self.objects.clone(),
            ready: self.ready.clone(),
        }
    }
}

/// Where the kind's watch writes: `read` makes each object what the store keeps.
pub struct Writer<K, T> {
    objects: Arc<RwLock<ByKey<T>>>,
    ready: watch::Sender<bool>,
    /// A relist being gathered.
    listing: Option<ByKey<T>>,
    read: Box<dyn FnMut(&K) -> T + Send>,
}

/// An empty store, not ready, and its writer.
pub fn store<K, T>(read: impl FnMut(&K) -> T + Send + 'static) -> (Store<T>, Writer<K, T>) {
    let objects = Arc::new(RwLock::new(ByKey::default()));
    let (tx, rx) = watch::channel(false);
    let store = Store {
        objects: objects.clone(),
        ready: rx,
    };
    let writer = Writer {
        objects,
        ready: tx,
        listing: None,
        read: Box::new(read),
    };
    (store, writer)
}

impl<T: Clone> Store<T> {
    /// The object `namespace/name`, if it is known.
    pub fn get(&self, namespace: &str, name: &str) -> Option<T> {
        let objects = self.objects.read().unwrap_or_else(PoisonError::into_inner);
        objects.get(&Named(namespace, name)).cloned()
    }

    /// Every object, with its (namespace, name).
    pub fn entries(&self) -> Vec<((String, String), T)> {
        let objects = self.objects.read().unwrap_or_else(PoisonError::into_inner);
        let entries = objects.iter();
        entries
            .map(|((ns, name), o)| ((ns.to_string(), name.to_string()), o.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.objects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Returns once the first list is in.
    pub async fn wait_until_ready(&self) {
        let _ = self.ready.clone().wait_for(|r| *r).await;
    }
}

fn key_of<K: kube::Resource>(o: &K) -> Key {
    let m = o.meta();
    (
        m.namespace.as_deref().unwrap_or_default().into(),
        m.name.as_deref().unwrap_or_default().into(),
    )
}

impl<K: kube::Resource, T> Writer<K, T> {
    /// Applies one event of the kind's watch.
    pub fn apply_watcher_event(&mut self, event: &Event<K>) {
        match event {
            Event::Apply(o) => {
                let value = (self.read)(o);
                self.write().insert(key_of(o), value);
            }
            Event::Delete(o) => {
                let m = o.meta();
                let (ns, name) = (m.namespace.as_deref(), m.name.as_deref());
                let named = Named(ns.unwrap_or_default(), name.unwrap_or_default());
                self.write().remove(&named);
            }
            Event::Init => self.listing = Some(ByKey::default()),
            Event::InitApply(o) => {
                let value = (self.read)(o);
                let list = self.listing.get_or_insert_with(ByKey::default);
                list.insert(key_of(o), value);
            }
            Event::InitDone => {
                *self.write() = self.listing.take().unwrap_or_default();
                self.ready.send_replace(true);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ByKey<T>> {
        self.objects.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::PartialObjectMeta;
    use serde_json::json;

    use super::*;

    fn pod(name: &str, version: &str) -> PartialObjectMeta<Pod> {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"version": version}}}))
        .expect("a pod")
    }

    fn version(p: &PartialObjectMeta<Pod>) -> String {
        p.metadata.labels.as_ref().expect("labels")["version"].clone()
    }

    #[test]
    fn a_relist_replaces_the_objects_whole_at_its_end() {
        let (store, mut w) = store(version);
        assert!(!*store.ready.borrow());
        w.apply_watcher_event(&Event::Init);
        for i in 0..10 {
            w.apply_watcher_event(&Event::InitApply(pod(&format!("p{i}"), "v0")));
        }
        // Half a list is not seen.
        assert_eq!(store.len(), 0);
        w.apply_watcher_event(&Event::InitDone);
        assert!(*store.ready.borrow());
        assert_eq!(store.len(), 10);
        assert_eq!(store.get("default", "p1").as_deref(), Some("v0"));
        assert_eq!(store.get("other", "p1"), None);
        // Changes and deletions.
        w.apply_watcher_event(&Event::Apply(pod("p1", "v1")));
        assert_eq!(store.get("default", "p1").as_deref(), Some("v1"));
        w.apply_watcher_event(&Event::Delete(pod("p2", "v0")));
        assert_eq!(store.get("default", "p2"), None);
        // A relist of other objects: the old ones are gone at its end, not before.
        w.apply_watcher_event(&Event::Init);
        w.apply_watcher_event(&Event::InitApply(pod("q", "v2")));
        assert_eq!(store.len(), 9);
        w.apply_watcher_event(&Event::InitDone);
        let q = ("default".to_string(), "q".to_string());
        assert_eq!(store.entries(), vec![(q, "v2".to_string())]);
    }
}
