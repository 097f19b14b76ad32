//! The route table's maps and vhost list in shards behind `Arc`s. The compiler changes
//! a few services of thousands on a reload while the proxy still holds the table it
//! had: copying the table copies 256 pointers per map, and a change copies only the
//! shards it touches. (Copying and dropping whole maps of 10,000 services was about a
//! third of a one-service change.) A look-up costs one more pointer.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::HashTable;

const SHARDS: usize = 256;

/// A hash map split into 256 shards shared on copy; an empty shard has no table. A
/// key is hashed once: bits 48..56 of its hash pick the shard (the shard's table uses
/// the low bits and the top seven). (At 10,000 services and 100,000 endpoints, a
/// change copies a shard of a few hundred entries.) A small map (a slice's own plan)
/// is one table until it grows past [`SPLIT`]: 256 tables for a few keys each were
/// thousands of small allocations per 1,000 services, and a larger idle heap.
pub struct ShardedMap<K, V> {
    hasher: foldhash::fast::RandomState,
    /// None, one, or [`SHARDS`].
    shards: Vec<Shard<K, V>>,
}

/// One shard: `None` until a key lands in it.
type Shard<K, V> = Option<Arc<HashTable<(K, V)>>>;

/// Entries past which a map of one table is split into shards.
const SPLIT: usize = 1024;

impl<K, V> ShardedMap<K, V> {
    fn shard(&self, hash: u64) -> usize {
        if self.shards.len() == SHARDS {
            (hash >> 48) as usize % SHARDS
        } else {
            0
        }
    }
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            hasher: Default::default(),
            shards: Vec::new(),
        }
    }
}

impl<K, V> Clone for ShardedMap<K, V> {
    fn clone(&self) -> Self {
        ShardedMap {
            hasher: self.hasher.clone(),
            shards: self.shards.clone(),
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> ShardedMap<K, V> {
    pub fn len(&self) -> usize {
        self.shards.iter().flatten().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().flatten().all(|s| s.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards
            .iter()
            .flatten()
            .flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let h = self.hasher.hash_one(key);
        let table = self.shards.get(self.shard(h))?.as_ref()?;
        table.find(h, |(k, _)| k.borrow() == key).map(|(_, v)| v)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    /// The table `hash` goes to, to change (made if there is none; copied if a copy
    /// of the map shares it); a map of one table that grew past [`SPLIT`] is split.
    fn table_mut(&mut self, hash: u64) -> &mut HashTable<(K, V)> {
        if self.shards.len() == 1 && self.shards[0].as_ref().is_some_and(|t| t.len() >= SPLIT) {
            let one = self.shards.pop().flatten().map(Arc::unwrap_or_clone);
            self.shards = (0..SHARDS).map(|_| None).collect();
            for (k, v) in one.into_iter().flatten() {
                self.insert(k, v);
            }
        }
        if self.shards.is_empty() {
            self.shards.push(None);
        }
        let i = self.shard(hash);
        Arc::make_mut(self.shards[i].get_or_insert_default())
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let h = self.hasher.hash_one(&key);
        let hasher = self.hasher.clone();
        let table = self.table_mut(h);
        match table.find_mut(h, |(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                table.insert_unique(h, (key, value), |(k, _)| hasher.hash_one(k));
                None
            }
        }
    }

    /// Inserts `value` unless `key` has one; the value `key` has after.
    pub fn or_insert(&mut self, key: K, value: V) -> &mut V {
        let h = self.hasher.hash_one(&key);
        let hasher = self.hasher.clone();
        let table = self.table_mut(h);
        let entry = table.entry(h, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k));
        &mut entry.or_insert((key, value)).into_mut().1
    }

    /// The table holding `key` and the key's hash, to change it (not copied for a
    /// miss).
    fn holding_mut<Q>(&mut self, key: &Q) -> Option<(&mut HashTable<(K, V)>, u64)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let h = self.hasher.hash_one(key);
        let i = self.shard(h);
        let table = self.shards.get_mut(i)?.as_mut()?;
        let holds = table.find(h, |(k, _)| k.borrow() == key).is_some();
        holds.then(|| (Arc::make_mut(table), h))
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (table, h) = self.holding_mut(key)?;
        table
            .find_mut(h, |(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (table, h) = self.holding_mut(key)?;
        let entry = table.find_entry(h, |(k, _)| k.borrow() == key).ok()?;
        Some(entry.remove().0.1)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Extend<(K, V)> for ShardedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, items: I) {
        for (k, v) in items {
            self.insert(k, v);
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> FromIterator<(K, V)> for ShardedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut m = ShardedMap::default();
        m.extend(items);
        m
    }
}

/// A vector in chunks of 256 shared on copy (the route table's vhosts, by index).
pub struct ChunkedVec<T> {
    chunks: Vec<Arc<Vec<T>>>,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        ChunkedVec { chunks: Vec::new() }
    }
}

impl<T> Clone for ChunkedVec<T> {
    fn clone(&self) -> Self {
        ChunkedVec {
            chunks: self.chunks.clone(),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ChunkedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> ChunkedVec<T> {
    pub fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |c| (self.chunks.len() - 1) * SHARDS + c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl<T: Clone> ChunkedVec<T> {
    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < SHARDS => Arc::make_mut(c).push(value),
            _ => self.chunks.push(Arc::new(vec![value])),
        }
    }

    /// Replaces element `i` (its chunk copied first if a table still shares it).
    pub fn set(&mut self, i: usize, value: T) {
        Arc::make_mut(&mut self.chunks[i / SHARDS])[i % SHARDS] = value;
    }
}

impl<T> std::ops::Index<usize> for ChunkedVec<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / SHARDS][i % SHARDS]
    }
}

impl<T: Clone> FromIterator<T> for ChunkedVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut v = ChunkedVec::default();
        for x in items {
            v.push(x);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_changed_leaves_the_original_as_it_was() {
        let mut a: ShardedMap<u32, u32> = (0..3000).map(|i| (i, i)).collect();
        let before = a.clone();
        a.insert(5, 50);
        assert_eq!(a.remove(&7), Some(7));
        assert_eq!(a.remove(&7), None);
        *a.or_insert(9000, 1) += 1;
        *a.or_insert(3, 0) += 1;
        if let Some(v) = a.get_mut(&9) {
            *v = 90;
        }
        assert_eq!(
            (a.get(&5), a.get(&7), a.get(&9000), a.get(&3), a.get(&9)),
            (Some(&50), None, Some(&2), Some(&4), Some(&90))
        );
        assert_eq!((a.len(), before.len()), (3000, 3000));
        assert_eq!(a.shards.len(), SHARDS, "split");
        for i in 0..3000 {
            assert_eq!(before.get(&i), Some(&i), "the copy stays");
        }
        // Only the shards a change touched were copied.
        let shared = (a.shards.iter().zip(&before.shards))
            .filter(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                (x, y) => x.is_none() && y.is_none(),
            })
            .count();
        assert!(shared >= SHARDS - 5, "{shared} of {SHARDS} shared");
        let mut keys: Vec<u32> = a.keys().copied().collect();
        keys.sort();
        assert_eq!(keys.len(), 3000);
        assert!(keys.contains(&9000) && !keys.contains(&7));
        let small: ShardedMap<u32, u32> = (0..SPLIT as u32).map(|i| (i, i)).collect();
        assert_eq!(small.shards.len(), 1, "one table while small");
    }

    #[test]
    fn strings_are_found_by_str() {
        let mut m: ShardedMap<Arc<str>, usize> = ShardedMap::default();
        assert!(m.is_empty());
        m.insert("a.b".into(), 1);
        assert_eq!(m.get("a.b"), Some(&1));
        assert!(!m.contains_key("a"));
        assert!(!m.is_empty());
    }

    #[test]
    fn a_chunked_vec_indexes_pushes_and_sets_like_a_vec() {
        let mut v: ChunkedVec<usize> = (0..200).collect();
        let before = v.clone();
        v.set(130, 7);
        v.push(200);
        assert_eq!((v.len(), v[130], v[199], v[200]), (201, 7, 199, 200));
        // The copy has neither the change nor the push.
        assert_eq!(
            (before.len(), before[130], before.iter().last()),
            (200, 130, Some(&199))
        );
        assert_eq!(v.iter().count(), 201);
        assert!(ChunkedVec::<u8>::default().is_empty());
    }
}
