//! The route table's maps and vhost list in shards behind `Arc`s. The compiler changes
//! a few services of thousands on a reload while the proxy still holds the table it
//! had: copying the table copies 64 pointers per map, and a change copies only the
//! shards it touches. (Copying and dropping whole maps of 10,000 services was about a
//! third of a one-service change.) A look-up costs one more hash and one more pointer.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use crate::fasthash::HashMap;

const SHARDS: usize = 64;

/// Picks a key's shard; a seed of its own, so the keys of one shard still spread
/// over the shard's own table (which hashes with another seed).
fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    const PICK: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x005e_ed1b);
    (PICK.hash_one(key) >> 58) as usize
}

/// A hash map split into 64 shards shared on copy; an empty shard has no table.
pub struct ShardedMap<K, V> {
    shards: [Option<Arc<HashMap<K, V>>>; SHARDS],
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: std::array::from_fn(|_| None),
        }
    }
}

impl<K, V> Clone for ShardedMap<K, V> {
    fn clone(&self) -> Self {
        ShardedMap {
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
        self.shards.iter().flatten().flat_map(|s| s.iter())
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
        self.shards[shard_of(key)].as_ref()?.get(key)
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
    /// The shard of `key` to change (copied first if a table still shares it).
    fn shard_mut<Q: Hash + ?Sized>(&mut self, key: &Q) -> &mut HashMap<K, V> {
        Arc::make_mut(self.shards[shard_of(key)].get_or_insert_with(Default::default))
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.shard_mut(&key).insert(key, value)
    }

    /// Inserts `value` unless `key` has one; the value `key` has after.
    pub fn or_insert(&mut self, key: K, value: V) -> &mut V {
        self.shard_mut(&key).entry(key).or_insert(value)
    }

    /// The shard holding `key`, to change (not copied for a miss).
    fn holding_mut<Q>(&mut self, key: &Q) -> Option<&mut HashMap<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shards[shard_of(key)].as_mut()?;
        shard.contains_key(key).then(|| Arc::make_mut(shard))
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.holding_mut(key)?.get_mut(key)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.holding_mut(key)?.remove(key)
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

/// A vector in chunks of 64 shared on copy (the route table's vhosts, by index).
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

    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / SHARDS)?.get(i % SHARDS)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl<T: Clone> ChunkedVec<T> {
    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < SHARDS => Arc::make_mut(c).push(value),
            _ => {
                let mut c = Vec::with_capacity(SHARDS);
                c.push(value);
                self.chunks.push(Arc::new(c));
            }
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
        let mut a: ShardedMap<u32, u32> = (0..1000).map(|i| (i, i)).collect();
        let before = a.clone();
        a.insert(5, 50);
        assert_eq!(a.remove(&7), Some(7));
        assert_eq!(a.remove(&7), None);
        *a.or_insert(2000, 1) += 1;
        *a.or_insert(3, 0) += 1;
        if let Some(v) = a.get_mut(&9) {
            *v = 90;
        }
        assert_eq!(
            (a.get(&5), a.get(&7), a.get(&2000), a.get(&3), a.get(&9)),
            (Some(&50), None, Some(&2), Some(&4), Some(&90))
        );
        assert_eq!((a.len(), before.len()), (1000, 1000));
        for i in 0..1000 {
            assert_eq!(before.get(&i), Some(&i), "the copy stays");
        }
        // Only the shards a change touched were copied.
        let shared = (a.shards.iter().zip(&before.shards))
            .filter(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                _ => false,
            })
            .count();
        assert!(shared >= SHARDS - 5, "{shared} of {SHARDS} shared");
        let mut keys: Vec<u32> = a.keys().copied().collect();
        keys.sort();
        assert_eq!(keys.len(), 1000);
        assert!(keys.contains(&2000) && !keys.contains(&7));
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
        assert_eq!(
            (before.len(), before[130], before.get(200)),
            (200, 130, None)
        );
        assert_eq!(v.iter().count(), 201);
        assert!(ChunkedVec::<u8>::default().is_empty());
    }
}
