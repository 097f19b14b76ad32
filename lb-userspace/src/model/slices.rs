//! The model slice by slice, so a change costs the work of what it touches.
//!
//! Objects are parted into slices no rule of the model looks across: two objects share
//! a slice when they mention a name that could be the same service (the first label of
//! a host: `s1`, `s1.bench` and `s1.bench.svc.cluster.local` are all `s1`; an address
//! as itself) or share a kind, namespace and name. Every check the model makes — a
//! host claimed twice, an address taken, a destination that names no subset, two
//! resources of one name — is between objects that mention one name, so each slice
//! validates on its own exactly as inside the whole; a slice whose objects are the very
//! same (`Arc`s) as last time is not built again. A wildcard host can name any service:
//! a configuration with one is a single slice.

use std::sync::{Arc, Mutex};

use super::{HashMap, Model, Options, ServiceEntryMemo, build_part, forget_unloaded};
use crate::diagnostic::Diagnostic;
use crate::load::docs::{Run, run_addr};
use crate::load::{Docs, Loaded, Resource, istio};

/// One slice: its objects (in load order), its problems, and its model until the
/// compiler takes it.
#[derive(Debug)]
pub struct Slice {
    /// Held so the addresses keying the cache stay these objects'.
    docs: Vec<Arc<Loaded>>,
    /// What its documents mention (see [`mentions`]); shared with the cache's owners.
    names: Box<[Arc<str>]>,
    pub diags: Vec<Diagnostic>,
    /// Boxed: a slice outlives its model (the compiler takes it), and 10,000 slices
    /// kept room for one each (~190 bytes inline).
    model: Mutex<Option<Box<Model>>>,
    /// The options it was built with (one copy for every slice of a build).
    opts: Arc<Options>,
}

impl Slice {
    /// The slice's model, for the compiler: built with the slice, handed over once
    /// (the compiler keeps what it makes of it); built again if asked for again.
    pub fn take_model(&self) -> Model {
        let taken = self.model.lock().ok().and_then(|mut m| m.take());
        taken.map_or_else(
            || {
                build_part(
                    &self.docs,
                    &mut HashMap::default(),
                    &mut Vec::new(),
                    &self.opts,
                )
            },
            |m| *m,
        )
    }
}

/// The slices of the last build, kept so the next one only redoes what changed.
#[derive(Default)]
pub struct SliceCache {
    /// Each document's slice and place, by the document's address.
    of_doc: HashMap<usize, Placed>,
    /// Which slice mentions each name.
    owner: HashMap<Arc<str>, Arc<Slice>>,
    /// Every slice, in the order they were made (shared with the last build's
    /// output: copied only while that is still held).
    all: Arc<Vec<Arc<Slice>>>,
    /// Slices with problems (few): their diagnostics, without a look at every slice.
    with_diags: HashMap<usize, Arc<Slice>>,
    /// The runs of documents of the last build, by address: a run seen again is
    /// kept whole, unread.
    runs: HashMap<usize, Run>,
    /// A document names a wildcard host: one slice of all, made anew on any change.
    wild: bool,
    /// Slices made and dropped since the compiler last took them.
    changes: Pending,
}

/// Where a document is: its slice, and its place in the load order (its run's
/// address and its index there).
struct Placed {
    slice: Arc<Slice>,
    run: usize,
    index: usize,
}

/// Slices made and dropped since the last [`SliceCache::take_changes`], netted (a
/// slice made and dropped between two takes is in neither).
#[derive(Default)]
struct Pending {
    made: HashMap<usize, Arc<Slice>>,
    dropped: HashMap<usize, Arc<Slice>>,
    /// The slices were all made anew (a wildcard, a first build): the changes do not
    /// say what the compiler had.
    reset: bool,
    /// Takes so far.
    taken: u64,
}

/// What changed between two takes: the compiler compiles the slices made and drops
/// those dropped, when it holds the slices of take `since` (else it compares the
/// whole list).
#[derive(Debug)]
pub struct Changes {
    pub since: u64,
    pub made: Vec<Arc<Slice>>,
    pub dropped: Vec<Arc<Slice>>,
}

impl SliceCache {
    /// What changed since the last take (None: everything may have).
    pub fn take_changes(&mut self) -> Option<Changes> {
        let p = &mut self.changes;
        let since = p.taken;
        p.taken += 1;
        let (made, dropped) = (std::mem::take(&mut p.made), std::mem::take(&mut p.dropped));
        if std::mem::take(&mut p.reset) {
            return None;
        }
        Some(Changes {
            since,
            made: made.into_values().collect(),
            dropped: dropped.into_values().collect(),
        })
    }

    /// Whether a document names a wildcard host (every change makes every slice).
    pub fn is_wild(&self) -> bool {
        self.wild
    }

    /// The problems of the slices, in no order (the caller sorts them by origin: an
    /// object is in one slice, so no two slices' problems tie).
    pub fn diags(&self) -> impl Iterator<Item = &Diagnostic> {
        self.with_diags.values().flat_map(|s| s.diags.iter())
    }

    fn add(&mut self, slice: Arc<Slice>, places: &[(usize, usize)]) {
        for (d, &(run, index)) in slice.docs.iter().zip(places) {
            let placed = Placed {
                slice: slice.clone(),
                run,
                index,
            };
            self.of_doc.insert(addr(d), placed);
        }
        for n in &slice.names {
            self.owner.insert(n.clone(), slice.clone());
        }
        if !slice.diags.is_empty() {
            self.with_diags.insert(slice_addr(&slice), slice.clone());
        }
        self.changes.made.insert(slice_addr(&slice), slice.clone());
        Arc::make_mut(&mut self.all).push(slice);
    }

    /// Takes the slices `dirty` out (their documents and names with them).
    fn drop_slices(&mut self, dirty: &HashMap<usize, Arc<Slice>>) {
        for (k, s) in dirty {
            for d in &s.docs {
                self.of_doc.remove(&addr(d));
            }
            for n in &s.names {
                self.owner.remove(&**n);
            }
            self.with_diags.remove(k);
            if self.changes.made.remove(k).is_none() {
                self.changes.dropped.insert(*k, s.clone());
            }
        }
        Arc::make_mut(&mut self.all).retain(|s| !dirty.contains_key(&slice_addr(s)));
    }
}

fn addr(l: &Arc<Loaded>) -> usize {
    Arc::as_ptr(l) as usize
}

fn slice_addr(s: &Arc<Slice>) -> usize {
    Arc::as_ptr(s) as usize
}

/// Parts `loaded` into slices, building only those whose documents changed since the
/// last build of `cache`: the slices of documents gone and those that share a name
/// with a new document are taken apart and made again from what is left of them and
/// the new documents. Runs of documents seen last time are not even read: a build
/// costs the runs that are new (a changed file's, the cluster's).
pub(super) fn build(
    loaded: &Docs,
    cache: &mut SliceCache,
    memo: &mut HashMap<usize, ServiceEntryMemo>,
    opts: &Options,
) -> Arc<Vec<Arc<Slice>>> {
    let order: HashMap<usize, usize> = (loaded.runs().iter().enumerate())
        .map(|(i, r)| (run_addr(r), i))
        .collect();
    let fresh: Vec<&Run> = (loaded.runs().iter())
        .filter(|r| !cache.runs.contains_key(&run_addr(r)))
        .collect();
    let stale: Vec<usize> = (cache.runs.keys())
        .filter(|k| !order.contains_key(k))
        .copied()
        .collect();
    if fresh.is_empty() && stale.is_empty() {
        return cache.all.clone();
    }
    if cache.wild || cache.all.is_empty() {
        return rebuild(loaded, cache, memo, opts);
    }
    // The documents of new runs: those not seen before are added, the others have a
    // new place; the documents of runs gone that are in no new run are removed.
    let mut added: Vec<(Arc<Loaded>, usize, usize)> = Vec::new();
    let mut in_fresh: crate::fasthash::HashSet<usize> = Default::default();
    for r in &fresh {
        for (index, d) in r.iter().enumerate() {
            in_fresh.insert(addr(d));
            match cache.of_doc.get_mut(&addr(d)) {
                Some(p) => (p.run, p.index) = (run_addr(r), index),
                None => added.push((d.clone(), run_addr(r), index)),
            }
        }
    }
    let mut removed = Vec::new();
    for k in &stale {
        let run = cache.runs.remove(k).expect("listed");
        for d in run.iter() {
            if !in_fresh.contains(&addr(d)) && cache.of_doc.contains_key(&addr(d)) {
                removed.push(addr(d));
            }
        }
    }
    for r in fresh {
        cache.runs.insert(run_addr(r), r.clone());
    }
    for k in &removed {
        memo.remove(k);
    }
    // The slices to make again: those of documents gone, and those a new document's
    // names reach (a wildcard host reaches them all: everything is made again).
    let mut dirty: HashMap<usize, Arc<Slice>> = HashMap::default();
    for k in &removed {
        if let Some(p) = cache.of_doc.get(k) {
            dirty.insert(slice_addr(&p.slice), p.slice.clone());
        }
    }
    let mut names = Vec::new();
    for (d, ..) in &added {
        names.clear();
        if !mentions(d, &mut names) {
            return rebuild(loaded, cache, memo, opts);
        }
        for n in &names {
            if let Some(s) = cache.owner.get(n.as_str()) {
                dirty.insert(slice_addr(s), s.clone());
            }
        }
    }
    // Their documents that stay, and the new ones, in load order.
    let gone: crate::fasthash::HashSet<usize> = removed.iter().copied().collect();
    let mut pool: Vec<(Arc<Loaded>, usize, usize)> = added;
    for s in dirty.values() {
        for d in s.docs.iter().filter(|d| !gone.contains(&addr(d))) {
            let p = &cache.of_doc[&addr(d)];
            pool.push((d.clone(), p.run, p.index));
        }
    }
    pool.sort_unstable_by_key(|(_, run, index)| (order[run], *index));
    cache.drop_slices(&dirty);
    let (docs, places): (Vec<_>, Vec<_>) = pool.into_iter().map(|(d, r, i)| (d, (r, i))).unzip();
    make_all(&docs, &places, cache, memo, opts);
    cache.all.clone()
}

/// Parts and builds everything anew.
fn rebuild(
    loaded: &Docs,
    cache: &mut SliceCache,
    memo: &mut HashMap<usize, ServiceEntryMemo>,
    opts: &Options,
) -> Arc<Vec<Arc<Slice>>> {
    let docs = loaded.to_vec();
    forget_unloaded(&docs, memo);
    let changes = std::mem::take(&mut cache.changes);
    *cache = SliceCache::default();
    cache.changes = Pending {
        reset: true,
        taken: changes.taken,
        ..Default::default()
    };
    let places: Vec<(usize, usize)> = (loaded.runs().iter())
        .flat_map(|r| (0..r.len()).map(|i| (run_addr(r), i)))
        .collect();
    cache.runs = (loaded.runs().iter())
        .map(|r| (run_addr(r), r.clone()))
        .collect();
    make_all(&docs, &places, cache, memo, opts);
    cache.all.clone()
}

/// Parts `docs` (at `places`) into slices and makes each into `cache`.
fn make_all(
    docs: &[Arc<Loaded>],
    places: &[(usize, usize)],
    cache: &mut SliceCache,
    memo: &mut HashMap<usize, ServiceEntryMemo>,
    opts: &Options,
) {
    let parted = partition(docs);
    cache.wild |= parted.wild;
    let opts = Arc::new(opts.clone());
    for (group, names) in parted.groups {
        let members: Vec<Arc<Loaded>> = group.iter().map(|&i| docs[i].clone()).collect();
        let at: Vec<(usize, usize)> = group.iter().map(|&i| places[i]).collect();
        let slice = make(members, names, memo, &opts, !parted.wild);
        cache.add(slice, &at);
    }
}

/// Validates one slice's documents into its model; `release`: then lets their typed
/// forms go (they are read again from their text if the slice is made again; a
/// configuration with a wildcard host, made anew on every change, keeps them).
fn make(
    docs: Vec<Arc<Loaded>>,
    names: Vec<String>,
    memo: &mut HashMap<usize, ServiceEntryMemo>,
    opts: &Arc<Options>,
    release: bool,
) -> Arc<Slice> {
    let mut diags = Vec::new();
    let model = build_part(&docs, memo, &mut diags, opts);
    if release {
        for d in &docs {
            d.release();
        }
    }
    Arc::new(Slice {
        docs,
        names: names.into_iter().map(Arc::from).collect(),
        diags,
        model: Mutex::new(Some(Box::new(model))),
        opts: opts.clone(),
    })
}

/// Documents parted into slices.
struct Parted {
    /// Indices of each slice's documents, in load order (slices by their first), with
    /// the names they mention.
    groups: Vec<(Vec<usize>, Vec<String>)>,
    /// A document names a wildcard host: one slice of all.
    wild: bool,
}

/// Parts `loaded` into slices: objects that mention a common name go together; all
/// together when one names a wildcard host.
fn partition(loaded: &[Arc<Loaded>]) -> Parted {
    let mut parent: Vec<usize> = (0..loaded.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut owner: HashMap<String, usize> = HashMap::default();
    let mut wild = false;
    let mut names: Vec<Vec<String>> = Vec::with_capacity(loaded.len());
    for (i, l) in loaded.iter().enumerate() {
        let mut own = Vec::new();
        wild |= !mentions(l, &mut own);
        for n in &own {
            match owner.get(n) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    // The smaller index leads, so a group's root is its first member.
                    parent[a.max(b)] = a.min(b);
                }
                None => {
                    owner.insert(n.clone(), i);
                }
            }
        }
        names.push(own);
    }
    if wild {
        parent = vec![0; loaded.len()];
    }
    let mut groups: Vec<(Vec<usize>, Vec<String>)> = Vec::new();
    let mut at: HashMap<usize, usize> = HashMap::default();
    for (i, own) in names.into_iter().enumerate() {
        let r = root(&mut parent, i);
        let g = *at.entry(r).or_insert_with(|| {
            groups.push(Default::default());
            groups.len() - 1
        });
        groups[g].0.push(i);
        groups[g].1.extend(own);
    }
    for (_, names) in &mut groups {
        names.sort_unstable();
        names.dedup();
    }
    Parted { groups, wild }
}

/// The names `l` mentions, reduced so two objects that can touch one service share
/// one; false when it names a wildcard host (it may touch any service).
use super::catalog::{NODE_PORTS_ANNOTATION, node_ports as node_ports_of};

fn mentions(l: &Loaded, out: &mut Vec<String>) -> bool {
    out.push(format!("n:{} {}/{}", l.kind, l.namespace, l.name));
    let mut ok = true;
    let mut host = |h: &str, out: &mut Vec<String>| {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        if h.contains('*') {
            ok = false;
        } else if h.parse::<std::net::IpAddr>().is_ok() {
            out.push(format!("a:{h}"));
        } else {
            out.push(format!("h:{}", h.split('.').next().unwrap_or_default()));
        }
    };
    match &*l.resource() {
        Resource::ServiceEntry(se) => {
            for h in &se.spec.hosts {
                host(h, out);
            }
            for a in &se.spec.addresses {
                // An address range (`10.0.0.0/24`) by its first address: lb serves
                // single addresses, the model rejects the rest by its slice alone.
                host(a.split('/').next().unwrap_or_default(), out);
            }
            // Two services at one NodePort conflict on every node address.
            let node_ports = se.metadata.annotations.get(NODE_PORTS_ANNOTATION);
            for n in node_ports
                .and_then(|t| node_ports_of(t))
                .unwrap_or_default()
            {
                out.push(format!("p:{}", n.node_port));
            }
        }
        Resource::DestinationRule(dr) => {
            if let Some(h) = &dr.spec.host {
                host(h, out);
            }
        }
        Resource::VirtualService(vs) => {
            let spec = &vs.spec;
            for h in &spec.hosts {
                host(h, out);
            }
            let mut dest = |d: &Option<istio::Destination>, out: &mut Vec<String>| {
                if let Some(h) = d.as_ref().and_then(|d| d.host.as_deref()) {
                    host(h, out);
                }
            };
            for r in &spec.http {
                for d in &r.route {
                    dest(&d.destination, out);
                }
                dest(&r.mirror, out);
                for m in &r.mirrors {
                    dest(&m.destination, out);
                }
                if let Some(d) = &r.delegate {
                    let ns = d.namespace.as_deref().unwrap_or(&l.namespace);
                    let name = d.name.as_deref().unwrap_or_default();
                    out.push(format!("n:VirtualService {ns}/{name}"));
                }
            }
            for d in spec.tcp.iter().flat_map(|r| &r.route) {
                dest(&d.destination, out);
            }
            for d in spec.tls.iter().flat_map(|r| &r.route) {
                dest(&d.destination, out);
            }
        }
    }
    ok
}
