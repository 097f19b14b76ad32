//! The plan slice by slice (model/slices.rs): each slice is compiled once, while its
//! objects stay the same, and the plan is the slices' plans together. Slices share no
//! service address, host name or VirtualService, so putting them together only
//! renumbers the vhosts.

use std::net::SocketAddrV4;
use std::sync::Arc;

use lb_common::SockAddr4;

use super::{CompileError, Lineage, Plan, capacity, plan};
use crate::fasthash::HashMap;
use crate::model::slices::{Changes, Slice};
use crate::route::path::Normalization;
use crate::route::{RouteTable, VirtualHost};

/// Each slice's plan, and the slices' plans together as last handed out.
#[derive(Default)]
pub struct PlanCache {
    /// By the slice's address (the `Arc` held, so the address is its).
    parts: HashMap<usize, Part>,
    merged: Option<Merged>,
    /// The model's take of changes the parts are at ([`Changes::since`] of the next).
    at: Option<u64>,
    /// The parts the last call took out, with their slices: freed by
    /// [`PlanCache::drop_retired`] once the plan is applied, not before it (freeing
    /// 1,000 changed Services' old slices was ~10 % of a burst's compile).
    retired: Vec<Part>,
}

struct Part {
    _slice: Arc<Slice>,
    keys: Keys,
}

/// What a slice put into the merged plan, to take it out again. (Only the keys: the
/// values live in the merged plan; a slice's own plan is dropped once put in.)
struct Keys {
    services: Box<[SockAddr4]>,
    hosts: Box<[Arc<str>]>,
    routed: Box<[SocketAddrV4]>,
    named: Box<[SocketAddrV4]>,
    endpoints: Box<[SocketAddrV4]>,
    /// Where its vhosts are in the merged route table.
    vhosts: Box<[usize]>,
    reads_headers: bool,
}

/// The plan of every slice together, and what it takes to change it in place.
struct Merged {
    plan: Plan,
    /// Vhost places of slices gone, for the next ones.
    free: Vec<usize>,
    /// Slices with rules that read headers.
    reading_headers: usize,
}

impl Merged {
    fn new(normalization: Normalization) -> Self {
        Merged {
            plan: Plan {
                kernel: Default::default(),
                proxy: Arc::new(RouteTable {
                    normalization,
                    ..RouteTable::default()
                }),
                outliers: Default::default(),
                lineage: None,
            },
            free: Vec::new(),
            reading_headers: 0,
        }
    }
}

/// Compiles the slices not compiled before and puts every slice's plan together: the
/// plan of the last call, changed by the slices that came and went (those `changes`
/// names when the cache is at its take; else every slice is looked up). Changed in
/// place: the map image and outliers are copied only while the last plan handed out
/// is still held; the route table's copy shares the shards a change does not touch
/// with the one the proxy holds (route/shards.rs).
pub fn plan_slices(
    slices: &[Arc<Slice>],
    changes: Option<Changes>,
    normalization: Normalization,
    cache: &mut PlanCache,
) -> Result<Plan, CompileError> {
    let key = |s: &Arc<Slice>| Arc::as_ptr(s) as usize;
    // Unknown until this call succeeds (a slice that fails to compile leaves the
    // parts as they were, and the next call looks at every slice).
    let at = cache.at.take();
    let next_at = changes.as_ref().map(|c| c.since + 1);
    let mut added = Vec::new();
    let removed = match changes {
        // The model says what changed since the parts: only that is looked at.
        Some(c) if Some(c.since) == at => {
            for s in c.made {
                let p = plan(s.take_model())?;
                added.push((s, p));
            }
            c.dropped.iter().map(key).collect()
        }
        // Else every slice is looked up.
        _ => {
            for s in slices {
                if !cache.parts.contains_key(&key(s)) {
                    added.push((s.clone(), plan(s.take_model())?));
                }
            }
            let kept = slices.len() - added.len();
            crate::fasthash::gone(&cache.parts, slices.iter().map(key), kept)
        }
    };
    let same_normalization = cache
        .merged
        .as_ref()
        .is_some_and(|m| m.plan.proxy.normalization == normalization);
    if same_normalization && added.is_empty() && removed.is_empty() {
        cache.at = next_at;
        return Ok(cache.merged.as_ref().expect("checked").plan.clone());
    }
    // A wildcard host's vhost is found by pattern, across slices: put all together anew.
    let wild = added.iter().any(|(_, p)| !p.proxy.wildcards.is_empty())
        || cache
            .merged
            .as_ref()
            .is_some_and(|m| !m.plan.proxy.wildcards.is_empty());
    let serial = cache
        .merged
        .as_ref()
        .and_then(|m| m.plan.lineage.as_ref())
        .map(|l| l.serial);
    let mut merged = match cache.merged.take() {
        Some(mut m) if same_normalization && !wild => {
            // The kernel services taken out and put in: what the applier looks at.
            let mut changed = Vec::new();
            for k in &removed {
                if let Some(part) = cache.parts.remove(k) {
                    changed.extend(part.keys.services.iter().copied());
                    m.take_out(&part.keys);
                    cache.retired.push(part);
                }
            }
            for (slice, plan) in added {
                changed.extend(plan.kernel.services.keys().copied());
                let keys = m.put_in(&plan);
                cache.parts.insert(
                    key(&slice),
                    Part {
                        _slice: slice,
                        keys,
                    },
                );
            }
            changed.sort_unstable();
            changed.dedup();
            m.plan.lineage = Some(Lineage::next(serial, Some(changed)));
            m
        }
        _ => {
            // Slices put in before are compiled again (their plans were dropped): only
            // the first plan, a wildcard's single slice, or a new normalization.
            let mut plans: HashMap<usize, Plan> =
                added.into_iter().map(|(s, p)| (key(&s), p)).collect();
            cache.retired.extend(cache.parts.drain().map(|(_, p)| p));
            let mut m = Merged::new(normalization);
            for s in slices {
                let p = match plans.remove(&key(s)) {
                    Some(p) => p,
                    None => plan(s.take_model())?,
                };
                let keys = m.put_in(&p);
                cache.parts.insert(
                    key(s),
                    Part {
                        _slice: s.clone(),
                        keys,
                    },
                );
            }
            m.table()
                .wildcards
                .sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
            m.plan.lineage = Some(Lineage::next(serial, None));
            m
        }
    };
    if let Err(e) = check_count(merged.plan.kernel.services.len()) {
        // The parts changed with the plan that is refused: start over next time.
        *cache = PlanCache::default();
        return Err(e);
    }
    let reading = merged.reading_headers > 0;
    if merged.plan.proxy.matches_headers != reading {
        merged.table().matches_headers = reading;
    }
    let out = merged.plan.clone();
    cache.merged = Some(merged);
    cache.at = next_at;
    Ok(out)
}

impl PlanCache {
    /// Frees what the last [`plan_slices`] took out (call it once the plan is live).
    pub fn drop_retired(&mut self) {
        self.retired.clear();
    }
}

fn check_count(count: usize) -> Result<(), CompileError> {
    if count > capacity::SERVICES as usize {
        return Err(CompileError::TooManyServices {
            count,
            max: capacity::SERVICES,
        });
    }
    Ok(())
}

impl Merged {
    fn table(&mut self) -> &mut RouteTable {
        Arc::make_mut(&mut self.plan.proxy)
    }

    /// Adds a slice's plan; returns what it put in.
    fn put_in(&mut self, p: &Plan) -> Keys {
        Arc::make_mut(&mut self.plan.kernel)
            .services
            .extend(p.kernel.services.iter().map(|(k, v)| (*k, v.clone())));
        Arc::make_mut(&mut self.plan.outliers)
            .extend(p.outliers.iter().map(|(k, v)| (*k, v.clone())));
        self.reading_headers += usize::from(p.proxy.matches_headers);
        let mut free = std::mem::take(&mut self.free);
        let t = self.table();
        let r = &*p.proxy;
        let at: Vec<usize> = r
            .vhosts
            .iter()
            .map(|vh| match free.pop() {
                Some(i) => {
                    t.vhosts.set(i, vh.clone());
                    i
                }
                None => {
                    t.vhosts.push(vh.clone());
                    t.vhosts.len() - 1
                }
            })
            .collect();
        t.hosts
            .extend(r.hosts.iter().map(|(h, i)| (h.clone(), at[*i])));
        t.wildcards
            .extend(r.wildcards.iter().map(|(w, i)| (w.clone(), at[*i])));
        t.by_service
            .extend(r.by_service.iter().map(|(a, i)| (*a, at[*i])));
        t.services
            .extend(r.services.iter().map(|(a, n)| (*a, n.clone())));
        for e in r.endpoints.keys() {
            *t.endpoints.or_insert(*e, 0) += 1;
        }
        self.free = free;
        Keys {
            services: p.kernel.services.keys().copied().collect(),
            hosts: r.hosts.keys().cloned().collect(),
            routed: r.by_service.keys().copied().collect(),
            named: r.services.keys().copied().collect(),
            endpoints: r.endpoints.keys().copied().collect(),
            vhosts: at.into_boxed_slice(),
            reads_headers: r.matches_headers,
        }
    }

    /// Removes a slice's plan (never one with wildcards: those are put together anew).
    fn take_out(&mut self, k: &Keys) {
        let kernel = Arc::make_mut(&mut self.plan.kernel);
        for s in &k.services {
            kernel.services.remove(s);
        }
        // Outlier detection is per service too.
        let outliers = Arc::make_mut(&mut self.plan.outliers);
        for s in &k.services {
            outliers.remove(s);
        }
        self.reading_headers -= usize::from(k.reads_headers);
        let t = self.table();
        for h in &k.hosts {
            t.hosts.remove(h);
        }
        for a in &k.routed {
            t.by_service.remove(a);
        }
        for a in &k.named {
            t.services.remove(a);
        }
        for e in &k.endpoints {
            if let Some(n) = t.endpoints.get_mut(e) {
                *n -= 1;
                if *n == 0 {
                    t.endpoints.remove(e);
                }
            }
        }
        // Its places stay until another slice takes them; nothing points at them.
        for &i in &k.vhosts {
            t.vhosts.set(i, Arc::new(VirtualHost::unused()));
        }
        self.free.extend(&k.vhosts);
    }
}

#[cfg(test)]
mod tests;
