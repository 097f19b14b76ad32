//! Apply: the only writer of the plan. [`Applier::apply`] makes the kernel maps hold a
//! plan's image and publishes its route table to the proxy — both, or neither.
//!
//! The order makes every intermediate state safe for traffic in flight:
//! 1. capacity checked: a plan that cannot fit changes nothing;
//! 2. each changed service's new revision written under new keys (no connect sees it);
//! 3. the route table published (the proxy knows every route the kernel may send it);
//! 4. the flips: each service entry switched to its new revision in one update, so a
//!    connect sees the old plan or the new one, never a mix; removed services deleted;
//! 5. names for `lb status`, and the apply time.
//!
//! Every write is journalled with what it replaced; any failure replays the journal
//! backwards (entries restored, new revisions deleted, the previous route table
//! published again) and the error names the step. Old revisions are deleted after a
//! grace period ([`Garbage`]). Unchanged services are not touched; the diff is against
//! what is pinned, so a restarted daemon writes only what changed.

mod applied;
mod journal;
pub mod outliers;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lb_common::{
    EndpointChunk, EndpointKey, PER_ENTRY, Service, ServiceMeta, Settings, Slot, SlotChunk,
    SlotKey, SockAddr4, State, SubsetMeta, SubsetMetaKey, capacity, chunks,
};
use tokio::sync::watch;

use crate::compile::{MapImage, Plan, ServiceImage, SubsetImage, maglev};
use crate::datapath::plan_maps::{addr, fixed, read_services};
use crate::datapath::{DatapathError, MapWriter, PinnedService, PlanMaps, Write};
use crate::route::RouteTable;
use applied::{Applied, Size};
use journal::Journal;
pub use outliers::KernelOutliers;

/// A plan could not be applied; the running plan stays.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The plan needs more entries than a pinned map holds (checked before any write).
    #[error(
        "the plan needs {needed} entries in {map}, which holds {capacity}; nothing was changed"
    )]
    Full {
        map: &'static str,
        needed: u64,
        capacity: u32,
    },
    /// A step failed; everything written before it was undone.
    #[error("{step}: {source}; rolled back, the running plan stays")]
    Step { step: String, source: DatapathError },
    /// A step failed and undoing it failed too: the maps may hold a mix of both plans
    /// until the next apply rewrites what differs.
    #[error("{step}: {source}; undoing it failed too ({undo})")]
    RollbackFailed {
        step: String,
        source: Box<DatapathError>,
        undo: Box<DatapathError>,
    },
    /// The pinned maps could not be read or written outside an apply.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// Entries of replaced revisions, deleted after a grace period so a connect that read
/// the old revision a moment ago still finds its slot.
#[derive(Debug, Default)]
pub struct Garbage {
    slots: Vec<SlotKey>,
    endpoints: Vec<EndpointKey>,
}

impl Garbage {
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.endpoints.is_empty()
    }
}

/// What one apply changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

/// The single writer of the plan: the kernel's plan maps and the proxy's route table.
pub struct Applier<W: MapWriter = PlanMaps> {
    maps: W,
    /// What the maps hold now (read back at start, then kept in step).
    current: Applied,
    /// The serial of the compiler's plan the maps hold (None: not known).
    applied: Option<u64>,
    state: State,
    routes: watch::Sender<Arc<RouteTable>>,
    outliers: KernelOutliers,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A service's names as `lb status` reads them.
fn service_meta(img: &ServiceImage) -> ServiceMeta {
    ServiceMeta {
        name: fixed(&img.name),
        namespace: fixed(&img.namespace),
        weight_scale: img.weight_scale,
        reason: img.reason,
    }
}

fn subset_meta(s: &SubsetImage) -> SubsetMeta {
    SubsetMeta {
        name: fixed(&s.name),
        endpoint_count: s.endpoints.len() as u32,
        _pad: 0,
    }
}

impl<W: MapWriter> Applier<W> {
    /// Takes over the plan maps: reads back what they hold and removes revisions left
    /// over by a daemon that died before its grace period ended. `routes` is the
    /// proxy's route table, which only this applier publishes.
    pub fn adopt(mut maps: W, routes: watch::Sender<Arc<RouteTable>>) -> Result<Self, ApplyError> {
        let current = Applied::new(read_services(maps.read())?);
        let state = maps.read().state();
        // Entries of a revision the service no longer uses (or of a removed service).
        let stale = |service: &SockAddr4, revision: u32| {
            current
                .get(service)
                .is_none_or(|s| s.entry.revision != revision)
        };
        let (slots, endpoints) = maps.read().revision_keys();
        let sweep: Vec<Write> = slots
            .into_iter()
            .filter(|k| stale(&k.service, k.revision))
            .map(|k| Write::Slot(k, None))
            .chain(
                endpoints
                    .into_iter()
                    .filter(|k| stale(&k.service, k.revision))
                    .map(|k| Write::Endpoint(k, None)),
            )
            .collect();
        for w in &sweep {
            // Left for the next start if it fails: stale keys are never read.
            if let Err(e) = maps.write(w) {
                tracing::warn!("removing a stale revision: {e}");
            }
        }
        Ok(Self {
            maps,
            current,
            applied: None,
            state,
            routes,
            outliers: KernelOutliers::default(),
        })
    }

    /// A receiver of the route table this applier publishes.
    pub fn routes(&self) -> watch::Receiver<Arc<RouteTable>> {
        self.routes.subscribe()
    }

    /// Tells the programs which process is lb (its sockets are never steered) and
    /// where the proxy listens.
    pub fn set_settings(&mut self, settings: Settings) -> Result<(), ApplyError> {
        Ok(self.maps.write(&Write::Settings(settings))?)
    }

    /// Records local backends that were listening before the programs could see it.
    pub fn remember_listeners(
        &mut self,
        addrs: impl IntoIterator<Item = SockAddr4>,
    ) -> Result<usize, ApplyError> {
        let mut n = 0;
        for a in addrs {
            self.maps.write(&Write::LocalListener(a))?;
            n += 1;
        }
        Ok(n)
    }

    /// Makes the kernel maps hold `plan.kernel` and the proxy route by `plan.proxy`,
    /// or neither. Returns what changed and the old entries to delete after the grace
    /// period.
    pub fn apply(&mut self, plan: &Plan) -> Result<(ApplyReport, Garbage), ApplyError> {
        // Endpoints outlier detection ejected stay out of the new plan too.
        let watching = self
            .outliers
            .plan(&plan.kernel, &plan.outliers, std::time::Instant::now());
        let diff = match self.changed_since_applied(plan) {
            Some(changed) => diff_some(&self.current, &plan.kernel, &watching, changed),
            None => diff(&self.current, &plan.kernel, &watching),
        };
        // The plan's size: what is applied, less what it replaces or removes, and
        // what it writes.
        let old = |k: &SockAddr4| {
            self.current
                .get(k)
                .map_or(Size::default(), |p| Size::of(&p.image))
        };
        let planned = diff
            .services
            .iter()
            .fold(self.current.size(), |n, (k, svc)| {
                n - old(k) + Size::of(svc)
            });
        self.check_capacity(diff.removed.iter().fold(planned, |n, k| n - old(k)))?;
        let mut done = self.run(&diff.services, diff.removed, Some(&plan.proxy))?;
        done.0.unchanged += diff.same;
        self.outliers.adopt(watching);
        self.applied = plan.lineage.as_ref().map(|l| l.serial);
        Ok(done)
    }

    /// The services `plan` changed since the plan the maps hold, if the compiler says
    /// (None: look at every one).
    fn changed_since_applied<'a>(&self, plan: &'a Plan) -> Option<&'a [SockAddr4]> {
        let (lineage, applied) = (plan.lineage.as_ref()?, self.applied?);
        if lineage.serial == applied {
            return Some(&[]);
        }
        match &lineage.since {
            Some((before, changed)) if *before == applied => Some(changed),
            _ => None,
        }
    }

    /// Rewrites only `services` (each already applied: outlier detection changing
    /// which endpoints a kernel-path service uses); the others and the proxy's routes
    /// stay. The same steps as [`apply`](Self::apply), so the same guarantees.
    fn update(&mut self, services: &MapImage) -> Result<(ApplyReport, Garbage), ApplyError> {
        let planned = (services.services.values())
            .map(|s| Size::of(s))
            .fold(Size::default(), |a, b| a + b);
        self.check_capacity(planned)?;
        let services: Vec<_> = services.services.iter().collect();
        self.run(&services, Vec::new(), None)
    }

    fn run(
        &mut self,
        services: &[(&SockAddr4, &Arc<ServiceImage>)],
        removed: Vec<SockAddr4>,
        routes: Option<&Arc<RouteTable>>,
    ) -> Result<(ApplyReport, Garbage), ApplyError> {
        let mut journal = Journal::default();
        match self.apply_steps(services, removed, routes, &mut journal) {
            Ok(done) => Ok(done),
            Err((step, source)) => match journal.undo(&mut self.maps, &self.routes) {
                Ok(()) => Err(ApplyError::Step { step, source }),
                Err(undo) => {
                    // Believe the maps, not the plan: the next apply diffs against them.
                    self.applied = None;
                    if let Ok(now) = read_services(self.maps.read()) {
                        self.current = Applied::new(now);
                    }
                    Err(ApplyError::RollbackFailed {
                        step,
                        source: Box::new(source),
                        undo: Box::new(undo),
                    })
                }
            },
        }
    }

    fn apply_steps(
        &mut self,
        services: &[(&SockAddr4, &Arc<ServiceImage>)],
        removed: Vec<SockAddr4>,
        routes: Option<&Arc<RouteTable>>,
        journal: &mut Journal,
    ) -> Result<(ApplyReport, Garbage), (String, DatapathError)> {
        let mut report = ApplyReport::default();
        // Services to (re)write, with the revision they get; then the removed ones.
        let mut writes: Vec<(SockAddr4, &Arc<ServiceImage>, Service)> = Vec::new();
        for &(&key, svc) in services {
            let old = self.current.get(&key);
            let unchanged = |o: &PinnedService| {
                Arc::ptr_eq(&o.image, svc) || (same(&o.image, svc) && o.entry.mode == svc.mode)
            };
            if old.is_some_and(unchanged) {
                report.unchanged += 1;
                continue;
            }
            let revision = old.map_or(1, |o| o.entry.revision.wrapping_add(1).max(1));
            let entry = Service {
                revision,
                slot_count: svc.slots.len() as u32,
                mode: svc.mode,
                flags: svc.flags,
            };
            writes.push((key, svc, entry));
        }

        // 2. New revisions, invisible until their flip.
        for (key, svc, entry) in &writes {
            let step = || format!("writing revision {} of {}", entry.revision, addr(key));
            for w in revision_writes(*key, entry.revision, svc) {
                journal
                    .write(&mut self.maps, w, None)
                    .map_err(|e| (step(), e))?;
            }
        }
        // 3. The proxy's routes, before any service is flipped to it.
        if let Some(routes) = routes {
            journal.publish(&self.routes, routes.clone());
        }
        // 4. The flips, and removals.
        for (key, _, entry) in &writes {
            let old = self.current.get(key).map(|o| o.entry);
            journal
                .write(
                    &mut self.maps,
                    Write::Service(*key, Some(*entry)),
                    Some(Write::Service(*key, old)),
                )
                .map_err(|e| {
                    (
                        format!("switching {} to revision {}", addr(key), entry.revision),
                        e,
                    )
                })?;
        }
        for key in &removed {
            let old = self.current[key].entry;
            journal
                .write(
                    &mut self.maps,
                    Write::Service(*key, None),
                    Some(Write::Service(*key, Some(old))),
                )
                .map_err(|e| (format!("removing {}", addr(key)), e))?;
        }
        // 5. Names for `lb status` and the apply time.
        for (key, svc, _) in &writes {
            let old = self.current.get(key).map(|o| &*o.image);
            write_names(&mut self.maps, journal, *key, Some(svc), old)
                .map_err(|e| (format!("naming {}", addr(key)), e))?;
        }
        for key in &removed {
            let old = &self.current[key].image;
            write_names(&mut self.maps, journal, *key, None, Some(old))
                .map_err(|e| (format!("naming {}", addr(key)), e))?;
        }
        let mut state = self.state;
        state.applied_at_ms = now_ms();
        journal
            .write(
                &mut self.maps,
                Write::State(Box::new(state)),
                Some(Write::State(Box::new(self.state))),
            )
            .map_err(|e| ("recording the apply time".to_string(), e))?;

        // Done: what was replaced becomes garbage, the maps hold the plan.
        self.state = state;
        let mut garbage = Garbage::default();
        for (key, svc, entry) in writes {
            let new = PinnedService {
                entry,
                image: Arc::clone(svc),
            };
            match self.current.insert(key, new) {
                Some(old) => {
                    collect(key, &old, &mut garbage);
                    report.changed += 1;
                }
                None => report.added += 1,
            }
        }
        for key in removed {
            let old = self.current.remove(&key).expect("listed above");
            collect(key, &old, &mut garbage);
            report.removed += 1;
        }
        Ok((report, garbage))
    }

    /// Outlier detection on the kernel path: reads what `sock_ops` counted, ejects
    /// (or brings back) endpoints, and rewrites the services whose endpoints changed.
    /// None: nothing changed.
    pub fn eject(&mut self) -> Result<Option<(ApplyReport, Garbage)>, ApplyError> {
        let health = self.maps.read().health()?;
        let seen = self.outliers.observe(&health, std::time::Instant::now());
        for key in seen.reset {
            // Left as it is if it fails: the endpoint is out for its ejection time
            // anyway, and its run is judged again when it is back.
            let _ = self.maps.write(&Write::Health(key, None));
        }
        if seen.changed.services.is_empty() {
            return Ok(None);
        }
        self.update(&seen.changed).map(Some)
    }

    /// How often [`eject`](Self::eject) should run (None: no kernel-path service
    /// has outlier detection).
    pub fn outlier_period(&self) -> Option<std::time::Duration> {
        self.outliers.period()
    }

    /// Deletes entries of replaced revisions (call after the grace period).
    pub fn collect_garbage(&mut self, garbage: Garbage) {
        let writes = (garbage.slots.into_iter().map(|k| Write::Slot(k, None))).chain(
            garbage
                .endpoints
                .into_iter()
                .map(|k| Write::Endpoint(k, None)),
        );
        for w in writes {
            // Left behind if it fails: a stale revision is never read, and the next
            // start sweeps it.
            let _ = self.maps.write(&w);
        }
    }

    /// Records a rejected configuration for `lb status`; the running plan stays.
    pub fn record_error(&mut self, message: &str) -> Result<(), ApplyError> {
        let mut state = self.state;
        state.error_at_ms = now_ms();
        let mut len = message.len().min(capacity::ERROR_LEN);
        while !message.is_char_boundary(len) {
            len -= 1;
        }
        state.last_error = [0; capacity::ERROR_LEN];
        state.last_error[..len].copy_from_slice(&message.as_bytes()[..len]);
        state.last_error_len = len as u32;
        self.write_state(state)
    }

    /// Clears the recorded error after a configuration was accepted.
    pub fn clear_error(&mut self) -> Result<(), ApplyError> {
        if self.state.last_error_len == 0 && self.state.error_at_ms == 0 {
            return Ok(());
        }
        let mut state = self.state;
        state.last_error_len = 0;
        state.last_error = [0; capacity::ERROR_LEN];
        state.error_at_ms = 0;
        self.write_state(state)
    }

    fn write_state(&mut self, state: State) -> Result<(), ApplyError> {
        self.maps.write(&Write::State(Box::new(state)))?;
        self.state = state;
        Ok(())
    }

    /// Refuses a plan that cannot fit while the old revisions still exist.
    /// Whether the maps hold `planned` beside what is applied (both stay until the
    /// grace period ends).
    fn check_capacity(&self, planned: Size) -> Result<(), ApplyError> {
        let Size {
            slots,
            endpoints: eps,
        } = planned + self.current.size();
        for (map, needed, cap) in [
            ("LB_SLOTS", slots, capacity::SLOTS),
            ("LB_ENDPOINTS", eps, capacity::ENDPOINTS),
        ] {
            if needed > u64::from(cap) {
                return Err(ApplyError::Full {
                    map,
                    needed,
                    capacity: cap,
                });
            }
        }
        Ok(())
    }

    /// The plan maps (tests read the fake's contents).
    #[cfg(test)]
    pub(crate) fn maps(&self) -> &W {
        &self.maps
    }
}

/// What an apply changes: the plan's services that are not the very images applied
/// (each with its outlier-filtered image if it is watched), the applied ones the plan
/// has not, and how many are the very same. One walk of both maps in key order: a
/// change among 10,000 services looked each of them up (a few ms of cache misses).
struct Diff<'a> {
    services: Vec<(&'a SockAddr4, &'a Arc<ServiceImage>)>,
    removed: Vec<SockAddr4>,
    same: usize,
}

/// The image the maps must hold for the planned `key` (outlier-filtered if it is
/// watched), unless it is the very one applied (`was`).
fn to_write<'a>(
    key: &SockAddr4,
    svc: &'a Arc<ServiceImage>,
    was: Option<&PinnedService>,
    watching: &'a outliers::Watching,
) -> Option<&'a Arc<ServiceImage>> {
    let now = watching.live(key).unwrap_or(svc);
    (!was.is_some_and(|o| Arc::ptr_eq(&o.image, now))).then_some(now)
}

fn diff<'a>(current: &Applied, plan: &'a MapImage, watching: &'a outliers::Watching) -> Diff<'a> {
    let mut d = Diff {
        services: Vec::new(),
        removed: Vec::new(),
        same: 0,
    };
    let mut applied = current.iter().peekable();
    for (key, svc) in &plan.services {
        while let Some((k, _)) = applied.next_if(|(k, _)| *k < key) {
            d.removed.push(*k);
        }
        let was = applied.next_if(|(k, _)| *k == key).map(|(_, o)| o);
        match to_write(key, svc, was, watching) {
            Some(now) => d.services.push((key, now)),
            None => d.same += 1,
        }
    }
    d.removed.extend(applied.map(|(k, _)| *k));
    d
}

/// [`diff`] of the services `changed` (and those outlier detection watches) only,
/// the others being the very ones applied.
fn diff_some<'a>(
    current: &Applied,
    plan: &'a MapImage,
    watching: &'a outliers::Watching,
    changed: &[SockAddr4],
) -> Diff<'a> {
    let mut keys: Vec<SockAddr4> = changed.iter().chain(watching.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut d = Diff {
        services: Vec::new(),
        removed: Vec::new(),
        same: plan.services.len(),
    };
    for key in keys {
        match plan.services.get_key_value(&key) {
            Some((key, svc)) => {
                if let Some(now) = to_write(key, svc, current.get(key), watching) {
                    d.same -= 1;
                    d.services.push((key, now));
                }
            }
            None if current.contains_key(&key) => d.removed.push(key),
            None => {}
        }
    }
    d
}

/// Writes a service's names (`new`), replacing `old`'s; `new` None removes them.
fn write_names(
    maps: &mut impl MapWriter,
    journal: &mut Journal,
    key: SockAddr4,
    new: Option<&ServiceImage>,
    old: Option<&ServiceImage>,
) -> Result<(), DatapathError> {
    let old_meta = old.map(service_meta);
    journal.write(
        maps,
        Write::ServiceMeta(key, new.map(service_meta)),
        Some(Write::ServiceMeta(key, old_meta)),
    )?;
    let old_subsets = old.map_or(&[][..], |o| &o.subsets[..]);
    let new_subsets = new.map_or(&[][..], |n| &n.subsets[..]);
    let subset_key = |id| SubsetMetaKey {
        service: key,
        subset: id,
    };
    let was = |id| old_subsets.iter().find(|s| s.id == id).map(subset_meta);
    for s in new_subsets {
        journal.write(
            maps,
            Write::SubsetMeta(subset_key(s.id), Some(subset_meta(s))),
            Some(Write::SubsetMeta(subset_key(s.id), was(s.id))),
        )?;
    }
    for s in old_subsets {
        if !new_subsets.iter().any(|n| n.id == s.id) {
            journal.write(
                maps,
                Write::SubsetMeta(subset_key(s.id), None),
                Some(Write::SubsetMeta(subset_key(s.id), Some(subset_meta(s)))),
            )?;
        }
    }
    Ok(())
}

/// The entries of one revision of `svc`: endpoints, then the slots that point at them,
/// `PER_ENTRY` to an entry.
fn revision_writes(key: SockAddr4, revision: u32, svc: &ServiceImage) -> Vec<Write> {
    let mut out = Vec::new();
    for sub in &svc.subsets {
        let table = maglev::table(&sub.endpoints, sub.table);
        let entries: Vec<SockAddr4> = (sub.endpoints.iter().copied())
            .chain(table.iter().map(|i| sub.endpoints[*i as usize]))
            .collect();
        for (chunk, endpoints) in chunked(&entries) {
            let k = EndpointKey {
                service: key,
                revision,
                subset: sub.id,
                chunk,
            };
            out.push(Write::Endpoint(
                k,
                Some(Box::new(EndpointChunk { endpoints })),
            ));
        }
    }
    let slots: Vec<Slot> = (svc.slots.iter())
        .map(|subset| {
            let sub = svc.subsets.iter().find(|s| s.id == *subset);
            Slot {
                subset: *subset,
                endpoint_count: sub.map_or(0, |s| s.endpoints.len() as u32),
                flags: sub.map_or(0, |s| s.flags),
                table: sub.map_or(0, |s| s.table),
            }
        })
        .collect();
    for (chunk, slots) in chunked(&slots) {
        let k = SlotKey {
            service: key,
            revision,
            chunk,
        };
        out.push(Write::Slot(k, Some(Box::new(SlotChunk { slots }))));
    }
    out
}

/// `items` as numbered entries of `PER_ENTRY` (the last one's tail left default).
fn chunked<T: Copy + Default>(
    items: &[T],
) -> impl Iterator<Item = (u32, [T; PER_ENTRY as usize])> + '_ {
    items
        .chunks(PER_ENTRY as usize)
        .enumerate()
        .map(|(i, part)| {
            let mut entry = [T::default(); PER_ENTRY as usize];
            entry[..part.len()].copy_from_slice(part);
            (i as u32, entry)
        })
}

fn collect(key: SockAddr4, old: &PinnedService, garbage: &mut Garbage) {
    let revision = old.entry.revision;
    garbage
        .slots
        .extend((0..chunks(old.entry.slot_count)).map(|chunk| SlotKey {
            service: key,
            revision,
            chunk,
        }));
    for s in &old.image.subsets {
        garbage
            .endpoints
            .extend((0..chunks(s.entries())).map(|chunk| EndpointKey {
                service: key,
                revision,
                subset: s.id,
                chunk,
            }));
    }
}

/// Same content, whatever the order of subsets and slots.
fn same(a: &ServiceImage, b: &ServiceImage) -> bool {
    // Most often literally the same (what was applied last time): no copies then.
    if a == b {
        return true;
    }
    let norm = |s: &ServiceImage| {
        let mut slots = s.slots.clone();
        slots.sort_unstable();
        let mut subs: Vec<_> = s
            .subsets
            .iter()
            .map(|x| (x.id, x.name.clone(), x.endpoints.clone(), x.flags, x.table))
            .collect();
        subs.sort();
        (
            s.name.clone(),
            s.namespace.clone(),
            s.weight_scale,
            s.flags,
            slots,
            subs,
        )
    };
    norm(a) == norm(b)
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
