//! The cluster's objects as the model reads them, read again only where the watches
//! say something changed: a Service is made into its ServiceEntry again when it, one
//! of its EndpointSlices or one of its pods changed; an Istio object when it changed.
//! A relist (the first list, after `410 Gone` or an outage) reads everything again.
//! Each object read keeps its `Arc` while it comes out the same, so the model rebuilds
//! only the slices of objects that changed (ARCHITECTURE.md, "Slices").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use kube::api::DynamicObject;
use kube::runtime::watcher;

use super::catalog;
use super::lean::{Slice, Svc};
use super::pod_labels::PodLabels;
use super::runs::{Id, Item, Runs};
use super::store::Store;
use crate::diagnostic::Diagnostic;
use crate::load::{self, Loaded};

/// The watches' stores.
pub struct Stores {
    pub services: Store<Arc<Svc>>,
    pub slices: Store<Arc<Slice>>,
    pub pods: PodLabels,
    /// Istio's objects, typed as they arrived, by kind.
    pub istio: Vec<(&'static str, Store<Versioned>)>,
}

/// The cluster's objects now, for one reload.
pub struct Snapshot {
    /// In runs shared with the snapshot before where nothing in them changed.
    pub objects: load::Docs,
    /// Objects that did not parse (each names the object and field).
    pub diags: Vec<Diagnostic>,
}

/// What the watches changed since the last snapshot. A watch records an event here
/// after its store has it (so a snapshot that takes the record finds the change in
/// the store), then wakes the daemon.
#[derive(Debug)]
pub struct Touched {
    /// A kind was listed anew: everything is read again.
    all: bool,
    /// (kind, namespace, name) of each object added, modified or deleted.
    objects: HashSet<(&'static str, String, String)>,
}

impl Default for Touched {
    /// Nothing read yet: everything is to be read.
    fn default() -> Self {
        Self {
            all: true,
            objects: HashSet::new(),
        }
    }
}

impl Touched {
    pub fn event<K: kube::Resource>(&mut self, kind: &'static str, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                let m = o.meta();
                self.objects.insert((
                    kind,
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default(),
                ));
            }
            // The store swaps to the new list here.
            watcher::Event::InitDone => self.all = true,
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.objects.is_empty()
    }

    /// What was recorded, leaving nothing.
    pub fn take(&mut self) -> Touched {
        std::mem::replace(
            self,
            Touched {
                all: false,
                objects: HashSet::new(),
            },
        )
    }
}

/// (namespace, name).
type Key = (String, String);

/// The keys of `read` not in `now` (objects gone since they were read).
fn absent<K: Ord + Clone, V>(read: &BTreeMap<K, V>, now: &BTreeSet<K>) -> Vec<K> {
    read.keys().filter(|k| !now.contains(*k)).cloned().collect()
}

/// A Service as last read.
struct ServiceRead {
    /// Its (namespace, name), shared with the pods' index.
    key: Arc<Key>,
    /// Its ServiceEntry, loaded (built from the stores: never invalid).
    loaded: Arc<Loaded>,
    /// The pods its endpoints name (as [`catalog::pod_id`]s).
    pods: Vec<u64>,
}

/// The Services whose endpoints name each pod: nearly always one, held in place (a
/// `Vec` of copied names took ~290 bytes a pod, ~25 MB for 100,000 pods).
#[derive(Default)]
struct PodIndex(HashMap<u64, Owners>);

enum Owners {
    One(Arc<Key>),
    Many(Vec<Arc<Key>>),
}

impl PodIndex {
    fn add(&mut self, pod: u64, service: &Arc<Key>) {
        use std::collections::hash_map::Entry;
        match self.0.entry(pod) {
            Entry::Vacant(v) => {
                v.insert(Owners::One(service.clone()));
            }
            Entry::Occupied(mut o) => match o.get_mut() {
                Owners::One(one) if *one == *service => {}
                Owners::One(one) => {
                    let many = vec![one.clone(), service.clone()];
                    o.insert(Owners::Many(many));
                }
                Owners::Many(many) => {
                    if !many.contains(service) {
                        many.push(service.clone());
                    }
                }
            },
        }
    }

    fn remove(&mut self, pod: u64, service: &Key) {
        let Some(owners) = self.0.get_mut(&pod) else {
            return;
        };
        let empty = match owners {
            Owners::One(one) => **one == *service,
            Owners::Many(many) => {
                many.retain(|s| **s != *service);
                many.is_empty()
            }
        };
        if empty {
            self.0.remove(&pod);
        }
    }

    fn services(&self, pod: u64) -> &[Arc<Key>] {
        match self.0.get(&pod) {
            Some(Owners::One(one)) => std::slice::from_ref(one),
            Some(Owners::Many(many)) => many,
            None => &[],
        }
    }
}

impl ServiceRead {
    /// Whether it was read as `entry` (then its loaded form stays, the same `Arc`).
    fn read_as(&self, entry: &catalog::Entry) -> bool {
        matches!(&*self.loaded.resource(), load::Resource::ServiceEntry(r) if **r == *entry)
    }
}

/// An object as lb read it: loaded, or what was wrong with it (shared: cloned from
/// the store into the reader).
#[derive(Clone)]
enum Read {
    Loaded(Arc<Loaded>),
    Invalid(Arc<[Diagnostic]>),
}

/// An Istio object as its store keeps it: what lb read of it, and its
/// resourceVersion (a relist gives every object again: one whose version is the same
/// keeps the `Arc` read before, so the model rebuilds nothing for it).
#[derive(Clone)]
pub struct Versioned {
    version: Arc<str>,
    read: Read,
}

impl Versioned {
    /// An Istio object as the API server gave it.
    pub fn of(object: &DynamicObject) -> Self {
        let version = object
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default();
        Versioned {
            version: version.into(),
            read: Read::of_object(object),
        }
    }

    /// Whether it is the version read before (an object without one never is).
    fn same_version(&self, before: &Versioned) -> bool {
        !self.version.is_empty() && self.version == before.version
    }
}

impl Read {
    /// An Istio object as the API server gave it.
    fn of_object(object: &DynamicObject) -> Self {
        let mut diags = Vec::new();
        let loaded = match serde_json::to_value(object) {
            Ok(value) => load::load_object(&value, &mut diags),
            Err(e) => {
                let origin = crate::diagnostic::Origin {
                    file: Default::default(),
                    line: 0,
                    resource: object.metadata.name.clone().unwrap_or_default(),
                };
                diags.push(Diagnostic::error(
                    origin,
                    "",
                    load::Invalid::Schema(e.to_string()),
                ));
                None
            }
        };
        match loaded {
            Some(l) => Read::Loaded(Arc::new(l)),
            None => Read::Invalid(diags.into()),
        }
    }
}

/// What the last snapshot read, and the indexes that tell which Services a change
/// reaches.
#[derive(Default)]
pub struct Reader {
    services: BTreeMap<Key, ServiceRead>,
    /// Istio objects by (kind, namespace, name), with their resourceVersion.
    istio: BTreeMap<(String, String, String), Versioned>,
    /// Each EndpointSlice's Service, by the slice's namespace and name.
    slice_service: HashMap<Key, String>,
    /// Each Service's EndpointSlices' names (a few: a Vec is a tenth of a set's
    /// memory).
    slices_of: HashMap<Key, Vec<String>>,
    /// The Services whose endpoints name each pod.
    pod_services: PodIndex,
    /// What the last snapshot handed out, in runs.
    runs: Runs,
}

/// The Kind a Service's ServiceEntry sorts as among the Istio objects.
const SERVICE: &str = "Service";

fn service_id((ns, name): &Key) -> Id {
    (SERVICE.to_string(), ns.clone(), name.clone())
}

impl Read {
    fn item(&self) -> Item<'_> {
        match self {
            Read::Loaded(l) => Item::Loaded(l),
            Read::Invalid(d) => Item::Invalid(d),
        }
    }
}

/// The objects with keys in `from..to` (to the end if None), in key order: Istio's
/// kinds before "Service", the Services, then Istio's kinds after.
fn items<'a>(
    services: &'a BTreeMap<Key, ServiceRead>,
    istio: &'a BTreeMap<Id, Versioned>,
    from: &Id,
    to: Option<&Id>,
) -> Vec<(Id, Item<'a>)> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let end = to.map_or(Unbounded, |t| Excluded(t.clone()));
    let istio_in: Vec<_> = istio.range((Included(from.clone()), end)).collect();
    let split = istio_in.partition_point(|(id, _)| id.0.as_str() < SERVICE);
    let lo = match from.0.as_str().cmp(SERVICE) {
        Less => Some(Unbounded),
        Equal => Some(Included((from.1.clone(), from.2.clone()))),
        Greater => None,
    };
    let hi = match to {
        None => Some(Unbounded),
        Some(t) => match t.0.as_str().cmp(SERVICE) {
            Greater => Some(Unbounded),
            Equal => Some(Excluded((t.1.clone(), t.2.clone()))),
            Less => None,
        },
    };
    let mut out = Vec::new();
    let istio_item = |(id, v): &(&Id, &'a Versioned)| ((*id).clone(), v.read.item());
    out.extend(istio_in[..split].iter().map(istio_item));
    if let (Some(lo), Some(hi)) = (lo, hi) {
        let loaded = |(k, s): (&'a Key, &'a ServiceRead)| (service_id(k), Item::Loaded(&s.loaded));
        out.extend(services.range((lo, hi)).map(loaded));
    }
    out.extend(istio_in[split..].iter().map(istio_item));
    out
}

impl Reader {
    /// The objects now: read again where `touched` says (everything after a relist).
    pub fn snapshot(&mut self, stores: &Stores, touched: Touched, domain: &str) -> Snapshot {
        if touched.all {
            self.read_all(stores, domain);
        } else {
            let mut services = BTreeSet::new();
            for (kind, ns, name) in touched.objects {
                let key = (ns, name);
                match kind {
                    "Service" => {
                        services.insert(key);
                    }
                    "EndpointSlice" => {
                        let now = (stores.slices.get(&key.0, &key.1))
                            .and_then(|s| s.service.as_deref().map(str::to_string));
                        for svc in self.index_slice(&key, now) {
                            services.insert((key.0.clone(), svc));
                        }
                    }
                    "Pod" => {
                        let pod = catalog::pod_id(&key.0, &key.1);
                        let owners = self.pod_services.services(pod).iter();
                        services.extend(owners.map(|k| (**k).clone()));
                    }
                    istio => self.read_istio(stores, istio, key),
                }
            }
            for key in services {
                self.read_service(stores, key, domain);
            }
        }
        self.now()
    }

    /// Everything read again (unchanged objects keep their `Arc`).
    fn read_all(&mut self, stores: &Stores, domain: &str) {
        self.runs.all_changed();
        self.slice_service.clear();
        self.slices_of.clear();
        for (key, s) in stores.slices.entries() {
            if let Some(svc) = &s.service {
                self.index_slice(&key, Some(svc.to_string()));
            }
        }
        let keys: BTreeSet<Key> = stores
            .services
            .entries()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for key in absent(&self.services, &keys).into_iter().chain(keys) {
            self.read_service(stores, key, domain);
        }
        let mut istio = BTreeSet::new();
        for (kind, store) in &stores.istio {
            let keys = store.entries().into_iter().map(|(k, _)| k);
            istio.extend(keys.map(|(ns, name)| (kind.to_string(), ns, name)));
        }
        for (kind, ns, name) in absent(&self.istio, &istio).into_iter().chain(istio) {
            self.read_istio(stores, &kind, (ns, name));
        }
    }

    /// Records which Service the slice `key` belongs to now (None: it is gone, or no
    /// longer one lb reads); returns the Services it left and joined.
    fn index_slice(&mut self, key: &Key, now: Option<String>) -> Vec<String> {
        let before = match &now {
            Some(svc) => self.slice_service.insert(key.clone(), svc.clone()),
            None => self.slice_service.remove(key),
        };
        if let Some(svc) = &before {
            let owner = (key.0.clone(), svc.clone());
            if let Some(names) = self.slices_of.get_mut(&owner) {
                names.retain(|n| *n != key.1);
                if names.is_empty() {
                    self.slices_of.remove(&owner);
                }
            }
        }
        if let Some(svc) = &now {
            self.slices_of
                .entry((key.0.clone(), svc.clone()))
                .or_default()
                .push(key.1.clone());
        }
        before.into_iter().chain(now).collect()
    }

    /// Reads the Service `key` again from the stores: its ServiceEntry, the same
    /// `Arc` if it came out the same.
    fn read_service(&mut self, stores: &Stores, key: Key, domain: &str) {
        let (ns, name) = &key;
        let svc = stores.services.get(ns, name);
        // By name: the first slice to list an address gives its endpoint.
        let mut names: Vec<&String> = self.slices_of.get(&key).into_iter().flatten().collect();
        names.sort();
        let slices: Vec<Arc<Slice>> = (names.into_iter())
            .filter_map(|s| stores.slices.get(ns, s))
            .collect();
        let labels = |ns: &str, name: &str| stores.pods.get(ns, name);
        let mut pods = Vec::new();
        let entry = (svc.as_deref())
            .and_then(|s| catalog::entry((ns, name), s, &slices, &labels, domain, &mut pods));
        pods.sort_unstable();
        pods.dedup();
        let before = self.services.remove(&key);
        if let Some(b) = &before {
            for pod in &b.pods {
                self.pod_services.remove(*pod, &key);
            }
        }
        let Some(entry) = entry else {
            if before.is_some() {
                self.runs.changed(&service_id(&key));
            }
            return;
        };
        let shared = before
            .as_ref()
            .map_or_else(|| Arc::new(key.clone()), |b| b.key.clone());
        for pod in &pods {
            self.pod_services.add(*pod, &shared);
        }
        let loaded = match before {
            Some(b) if b.read_as(&entry) => b.loaded,
            _ => {
                self.runs.changed(&service_id(&key));
                Arc::new(catalog::loaded(entry))
            }
        };
        let read = ServiceRead {
            key: shared,
            loaded,
            pods,
        };
        self.services.insert(key, read);
    }

    /// Reads the Istio object `kind` `key` again from its store (typed there as it
    /// arrived; what was read before stays while its resourceVersion is the same).
    fn read_istio(&mut self, stores: &Stores, kind: &str, key: Key) {
        let Some((_, store)) = stores.istio.iter().find(|(k, _)| *k == kind) else {
            return;
        };
        let (ns, name) = key;
        let now = store.get(&ns, &name);
        let id = (kind.to_string(), ns, name);
        let Some(now) = now else {
            if self.istio.remove(&id).is_some() {
                self.runs.changed(&id);
            }
            return;
        };
        if self.istio.get(&id).is_some_and(|was| now.same_version(was)) {
            return;
        }
        self.runs.changed(&id);
        self.istio.insert(id, now);
    }

    /// Every object read, in a stable order (kind, namespace, name), so messages and
    /// the model do not depend on the stores' hashing; in runs, made again only where
    /// something changed.
    fn now(&mut self) -> Snapshot {
        let (services, istio) = (&self.services, &self.istio);
        let (objects, diags) = self.runs.make(|from, to| items(services, istio, from, to));
        Snapshot { objects, diags }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_services_go_from_one_to_many_and_back() {
        let key = |n: &str| Arc::new(("default".to_string(), n.to_string()));
        let (a, b) = (key("a"), key("b"));
        let mut index = PodIndex::default();
        let names = |index: &PodIndex| -> Vec<String> {
            index.services(7).iter().map(|k| k.1.clone()).collect()
        };
        index.add(7, &a);
        index.add(7, &a);
        assert_eq!(names(&index), ["a"]);
        index.add(7, &b);
        index.add(7, &b);
        assert_eq!(names(&index), ["a", "b"]);
        index.remove(7, &a);
        assert_eq!(names(&index), ["b"]);
        index.remove(7, &b);
        assert!(index.0.is_empty());
        // A pod no Service names, or a Service that does not name it: nothing to do.
        index.remove(8, &a);
        index.add(7, &a);
        index.remove(7, &b);
        assert_eq!(names(&index), ["a"]);
    }
}
