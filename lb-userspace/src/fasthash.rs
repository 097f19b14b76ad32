//! Hash maps keyed by what lb builds itself (names from the operator's configuration,
//! addresses): foldhash instead of SipHash, rebuilt on every reload and looked up per
//! request (SipHash was ~7 % of a 1000-service reload and showed in the proxy's
//! profile). A client's input can only miss in them, never choose their keys.

pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The keys of `cached` not in `now`, knowing that `kept` entries of `now` are keys of
/// `cached`: when all of them were kept (nothing removed), nothing is looked for.
pub fn gone<V>(
    cached: &HashMap<usize, V>,
    now: impl Iterator<Item = usize>,
    kept: usize,
) -> Vec<usize> {
    if kept == cached.len() {
        return Vec::new();
    }
    let now: HashSet<usize> = now.collect();
    cached
        .keys()
        .filter(|k| !now.contains(k))
        .copied()
        .collect()
}
