//! The plan slice by slice (model/slices.rs): each slice is compiled once, while its
//! objects stay the same, and the plan is the slices' plans together. Slices share no
//! service address, host name or VirtualService, so putting them together only
//! renumbers the vhosts.

use std::sync::Arc;

use super::{CompileError, MapImage, Plan, capacity, plan};
use crate::fasthash::HashMap;
use crate::model::slices::Slice;
use crate::route::RouteTable;
use crate::route::path::Normalization;

/// Each slice's plan, by the slice's address (the `Arc` held, so the address is its).
#[derive(Default)]
pub struct PlanCache(HashMap<usize, (Arc<Slice>, Arc<Plan>)>);

/// Compiles the slices not compiled before and puts every slice's plan together.
pub fn plan_slices(
    slices: &[Arc<Slice>],
    normalization: Normalization,
    cache: &mut PlanCache,
) -> Result<Plan, CompileError> {
    let mut next = HashMap::with_capacity_and_hasher(slices.len(), Default::default());
    for s in slices {
        let key = Arc::as_ptr(s) as usize;
        let part = match cache.0.remove(&key) {
            Some((_, p)) => p,
            None => Arc::new(plan(s.take_model())?),
        };
        next.insert(key, (s.clone(), part));
    }
    let parts: Vec<&Plan> = slices
        .iter()
        .map(|s| &*next[&(Arc::as_ptr(s) as usize)].1)
        .collect();
    let merged = merge(&parts, normalization)?;
    cache.0 = next;
    Ok(merged)
}

/// The plans of slices as one.
fn merge(parts: &[&Plan], normalization: Normalization) -> Result<Plan, CompileError> {
    let count: usize = parts.iter().map(|p| p.kernel.services.len()).sum();
    if count > capacity::SERVICES as usize {
        return Err(CompileError::TooManyServices {
            count,
            max: capacity::SERVICES,
        });
    }
    let mut kernel = MapImage::default();
    let mut outliers = super::Outliers::new();
    let mut t = RouteTable {
        normalization,
        ..RouteTable::default()
    };
    for p in parts {
        kernel
            .services
            .extend(p.kernel.services.iter().map(|(k, v)| (*k, v.clone())));
        outliers.extend(p.outliers.iter().map(|(k, v)| (*k, v.clone())));
        let r = &*p.proxy;
        let base = t.vhosts.len();
        t.vhosts.extend(r.vhosts.iter().cloned());
        t.hosts
            .extend(r.hosts.iter().map(|(h, i)| (h.clone(), i + base)));
        t.wildcards
            .extend(r.wildcards.iter().map(|(w, i)| (w.clone(), i + base)));
        t.by_service
            .extend(r.by_service.iter().map(|(a, i)| (*a, i + base)));
        t.services
            .extend(r.services.iter().map(|(a, n)| (*a, n.clone())));
        t.endpoints.extend(r.endpoints.iter().copied());
        t.matches_headers |= r.matches_headers;
    }
    t.wildcards.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
    Ok(Plan {
        kernel,
        proxy: Arc::new(t),
        outliers,
    })
}

#[cfg(test)]
mod tests;
