//! A small map from names to values as lb stores labels and named ports: one sorted,
//! exactly sized slice. An endpoint has one or two labels; a `BTreeMap` allocates a
//! node of eleven entries for them (~600 bytes), this ~100. Read from a YAML or JSON
//! mapping like a `BTreeMap` (a key given twice keeps its last value). Also the same
//! by port number ([`PortMap`]), and one shared copy of each label set in use
//! ([`LabelSets`]).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Shared on clone (an endpoint's ports are its EndpointSlice's, a model endpoint's
/// its ServiceEntry endpoint's); nothing allocated when empty.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SmallMap<V>(Option<Arc<[Entry<V>]>>);

type Entry<V> = (Box<str>, V);

/// Labels (`version: v1`).
pub type Labels = SmallMap<Box<str>>;

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        SmallMap(None)
    }
}

impl<V> SmallMap<V> {
    fn entries(&self) -> &[Entry<V>] {
        self.0.as_deref().unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        let e = self.entries();
        (e.binary_search_by(|(k, _)| (**k).cmp(key)).ok()).map(|i| &e[i].1)
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries().iter().map(|(k, v)| (&**k, v))
    }

    /// Whether the two are one copy (not only equal).
    pub fn same(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        }
    }
}

impl<K: Into<Box<str>>, V> FromIterator<(K, V)> for SmallMap<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let entries = sorted(iter.into_iter().map(|(k, v)| (k.into(), v)).collect());
        SmallMap((!entries.is_empty()).then(|| entries.into()))
    }
}

/// One copy of each label set in use (and some no longer: see [`LabelSets::share`]):
/// a ReplicaSet's pods, a ServiceEntry's endpoints of one version, have the same.
#[derive(Default)]
pub struct LabelSets {
    sets: HashSet<Arc<Labels>, foldhash::fast::RandomState>,
    /// Sets kept after the last sweep of those no one holds.
    swept_at: usize,
}

impl LabelSets {
    /// `labels` as the copy already held, if any holder has the same.
    pub fn share(&mut self, labels: Labels) -> Arc<Labels> {
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

thread_local! {
    /// The label sets a thread's loads share (a load thread's go with it).
    static LOADED_SETS: std::cell::RefCell<LabelSets> = Default::default();
}

/// Reads labels as one copy per distinct set (`deserialize_with`): 10,000 services of
/// ten endpoints in two versions held 100,000 copies of two sets, each a few small
/// allocations (1.7 MB of the 12 MB live with 1,000 services).
pub fn shared_labels<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Labels>, D::Error> {
    let labels = Labels::deserialize(d)?;
    Ok(LOADED_SETS.with(|s| s.borrow_mut().share(labels)))
}

/// Entries sorted by key, exactly sized; of equal keys the last given stays, as a
/// `BTreeMap`'s insert keeps it.
fn sorted<K: Ord, V>(mut v: Vec<(K, V)>) -> Box<[(K, V)]> {
    // Stable: equal keys keep their order.
    v.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(K, V)> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(last) if last.0 == e.0 => *last = e,
            _ => out.push(e),
        }
    }
    out.into_boxed_slice()
}

/// A small map from port numbers to values (a destination's endpoints by service
/// port, their in-flight counts): one sorted, exactly sized slice, where a `BTreeMap`
/// of one or two ports allocates a node of eleven.
#[derive(Debug)]
pub struct PortMap<V>(Box<[(u16, V)]>);

impl<V> Default for PortMap<V> {
    fn default() -> Self {
        PortMap(Box::new([]))
    }
}

impl<V> PortMap<V> {
    pub fn get(&self, port: u16) -> Option<&V> {
        (self.0.binary_search_by_key(&port, |(p, _)| *p).ok()).map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, port: u16) -> bool {
        self.get(port).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in port order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &V)> {
        self.0.iter().map(|(p, v)| (*p, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().map(|(p, _)| *p)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }
}

impl<V> FromIterator<(u16, V)> for PortMap<V> {
    fn from_iter<I: IntoIterator<Item = (u16, V)>>(iter: I) -> Self {
        PortMap(sorted(iter.into_iter().collect()))
    }
}

impl<V: fmt::Debug> fmt::Debug for SmallMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SmallMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = SmallMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v: Vec<(String, V)> = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(e) = map.next_entry()? {
                    v.push(e);
                }
                Ok(v.into_iter().collect())
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

impl<V: Serialize> Serialize for SmallMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_mapping_sorted_with_the_last_of_a_repeated_key() {
        let m: Labels = serde_json::from_str(r#"{"b":"2","a":"1","b":"3"}"#).unwrap();
        assert_eq!(m.get("b").map(|v| &**v), Some("3"));
        assert_eq!(m.get("c"), None);
        assert_eq!(m.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":"1","b":"3"}"#);
        let y: SmallMap<i64> = serde_yaml::from_str("{http: 8080}").unwrap();
        assert_eq!(y.get("http"), Some(&8080));
    }

    #[test]
    fn label_sets_no_one_holds_are_swept() {
        let mut shared = LabelSets::default();
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

    #[test]
    fn a_port_map_is_sorted_with_the_last_of_a_repeated_port() {
        let m: PortMap<&str> = [(8080, "a"), (80, "b"), (8080, "c")].into_iter().collect();
        assert_eq!(m.iter().collect::<Vec<_>>(), [(80, &"b"), (8080, &"c")]);
        assert_eq!((m.get(8080), m.get(81)), (Some(&"c"), None));
        assert!(m.contains_key(80) && !m.contains_key(443));
        assert_eq!(m.keys().collect::<Vec<_>>(), [80, 8080]);
        assert_eq!(m.len(), 2);
        assert!(PortMap::<u8>::default().is_empty());
    }
}
