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
use crate::load::{Loaded, Resource, istio};

/// One slice: its objects (in load order), its problems, and its model until the
/// compiler takes it.
#[derive(Debug)]
pub struct Slice {
    /// Held so the addresses keying the cache stay these objects'.
    docs: Vec<Arc<Loaded>>,
    pub diags: Vec<Diagnostic>,
    model: Mutex<Option<Model>>,
    opts: Options,
}

impl Slice {
    /// The slice's model, for the compiler: built with the slice, handed over once
    /// (the compiler keeps what it makes of it); built again if asked for again.
    pub fn take_model(&self) -> Model {
        let taken = self.model.lock().ok().and_then(|mut m| m.take());
        taken.unwrap_or_else(|| {
            build_part(
                &self.docs,
                &mut HashMap::default(),
                &mut Vec::new(),
                &self.opts,
            )
        })
    }

    /// Whether its objects have errors (then it is never compiled).
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }
}

/// The slices of the last build, by their objects' addresses.
#[derive(Default)]
pub struct SliceCache(HashMap<Vec<usize>, Arc<Slice>>);

/// Parts `loaded` into slices and builds each that is not in `cache` (the cache then
/// holds exactly the returned slices). Returns the slices in a stable order.
pub(super) fn build(
    loaded: &[Arc<Loaded>],
    cache: &mut SliceCache,
    memo: &mut HashMap<usize, ServiceEntryMemo>,
    opts: &Options,
) -> Vec<Arc<Slice>> {
    forget_unloaded(loaded, memo);
    let groups = partition(loaded);
    let mut next = HashMap::default();
    let mut out = Vec::with_capacity(groups.len());
    for members in groups {
        let key: Vec<usize> = members
            .iter()
            .map(|&i| Arc::as_ptr(&loaded[i]) as usize)
            .collect();
        let slice = match cache.0.remove(&key) {
            Some(s) => s,
            None => {
                let docs: Vec<Arc<Loaded>> = members.iter().map(|&i| loaded[i].clone()).collect();
                let mut diags = Vec::new();
                let model = build_part(&docs, memo, &mut diags, opts);
                Arc::new(Slice {
                    docs,
                    diags,
                    model: Mutex::new(Some(model)),
                    opts: opts.clone(),
                })
            }
        };
        out.push(slice.clone());
        next.insert(key, slice);
    }
    cache.0 = next;
    out
}

/// Groups of indices into `loaded`, each in load order, the groups ordered by their
/// first member; one group of all when an object names a wildcard host.
pub fn partition(loaded: &[Arc<Loaded>]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..loaded.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut owner: HashMap<String, usize> = HashMap::default();
    let mut names = Vec::new();
    for (i, l) in loaded.iter().enumerate() {
        names.clear();
        if !mentions(l, &mut names) {
            return vec![(0..loaded.len()).collect()];
        }
        for n in names.drain(..) {
            match owner.get(&n) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    // The smaller index leads, so a group's root is its first member.
                    parent[a.max(b)] = a.min(b);
                }
                None => {
                    owner.insert(n, i);
                }
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut at: HashMap<usize, usize> = HashMap::default();
    for i in 0..loaded.len() {
        let r = root(&mut parent, i);
        let g = *at.entry(r).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

/// The names `l` mentions, reduced so two objects that can touch one service share
/// one; false when it names a wildcard host (it may touch any service).
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
    match &l.resource {
        Resource::ServiceEntry(se) => {
            for h in &se.spec.hosts {
                host(h, out);
            }
            for a in &se.spec.addresses {
                // An address range (`10.0.0.0/24`) by its first address: lb serves
                // single addresses, the model rejects the rest by its slice alone.
                host(a.split('/').next().unwrap_or_default(), out);
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
