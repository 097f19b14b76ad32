//! Apply: the only code that writes lb's maps.
//!
//! A changed service gets a whole new revision of slots and endpoints under new keys;
//! then its service entry flips to that revision in one update, so a concurrent
//! connect sees the old plan or the new one, never a mix. The old revision is deleted
//! after a grace period ([`Garbage`]). Unchanged services are not touched; the diff is
//! against what is pinned, so a restarted daemon writes only what changed.

pub mod attach;
pub mod cgroup;
pub mod listeners;
pub mod maps;
pub mod pins;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lb_common::{
    EndpointKey, Service, ServiceMeta, Settings, Slot, SlotKey, SockAddr4, SubsetMeta,
    SubsetMetaKey, capacity,
};

use crate::compile::{MapImage, ServiceImage};
pub use maps::{Maps, PinnedService};
pub use pins::Pins;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writing the kernel side failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file or folder could not be used.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The eBPF object could not be loaded.
    #[error("loading the eBPF object: {0}")]
    Load(BoxError),
    /// A program could not be loaded, attached or detached.
    #[error("program {program}: {source}")]
    Program { program: String, source: BoxError },
    /// The object lacks a program (a build problem).
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(String),
    /// The object lacks a map (a build problem).
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// A link could not be pinned.
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: BoxError },
    /// A pinned map could not be opened (not attached yet? run `lb run` first).
    #[error("opening pinned map {path}: {source}")]
    OpenMap { path: PathBuf, source: BoxError },
    /// A map read or write failed.
    #[error("map operation: {0}")]
    Map(BoxError),
    /// The plan needs more entries than a pinned map holds.
    #[error("the plan needs {needed} entries in {map}, which holds {capacity}")]
    Full {
        map: &'static str,
        needed: u64,
        capacity: u32,
    },
}

impl ApplyError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn map(e: aya::maps::MapError) -> Self {
        Self::Map(Box::new(e))
    }
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

/// The single writer of the pinned maps.
pub struct Applier {
    maps: Maps,
    /// What the maps hold now (read back at start, then kept in step).
    current: BTreeMap<SockAddr4, PinnedService>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Applier {
    /// Opens the pinned maps, reads back what they hold and removes revisions left over
    /// by a daemon that died before its grace period ended.
    pub fn adopt(pins: &Pins) -> Result<Self, ApplyError> {
        let mut maps = Maps::open(pins)?;
        let current = maps.read_services()?;
        // Entries of a revision the service no longer uses (or of a removed service).
        let stale = |service: &SockAddr4, revision: u32| {
            current
                .get(service)
                .is_none_or(|s| s.entry.revision != revision)
        };
        let stale_slots: Vec<SlotKey> = maps
            .slots
            .keys()
            .filter_map(Result::ok)
            .filter(|k| stale(&k.service, k.revision))
            .collect();
        let stale_eps: Vec<EndpointKey> = maps
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|k| stale(&k.service, k.revision))
            .collect();
        for k in stale_slots {
            let _ = maps.slots.remove(&k);
        }
        for k in stale_eps {
            let _ = maps.endpoints.remove(&k);
        }
        Ok(Self { maps, current })
    }

    /// Tells the programs which process is lb (its sockets are never steered) and
    /// where the proxy listens.
    pub fn set_settings(&mut self, settings: Settings) -> Result<(), ApplyError> {
        self.maps
            .settings
            .set(0, &settings, 0)
            .map_err(ApplyError::map)
    }

    /// Records local backends that were listening before the programs could see it.
    pub fn remember_listeners(
        &mut self,
        addrs: impl IntoIterator<Item = SockAddr4>,
    ) -> Result<usize, ApplyError> {
        let mut n = 0;
        for a in addrs {
            self.maps
                .local_listeners
                .insert(&a, &1, 0)
                .map_err(ApplyError::map)?;
            n += 1;
        }
        Ok(n)
    }

    /// Makes the maps hold `image`. Returns what changed and the old entries to delete
    /// after the grace period.
    pub fn apply(&mut self, image: &MapImage) -> Result<(ApplyReport, Garbage), ApplyError> {
        self.check_capacity(image)?;
        let mut report = ApplyReport::default();
        let mut garbage = Garbage::default();
        for (key, svc) in &image.services {
            let old = self.current.get(key).cloned();
            if old
                .as_ref()
                .is_some_and(|o| same(&o.image, svc) && o.entry.mode == svc.mode)
            {
                report.unchanged += 1;
                continue;
            }
            let revision = old
                .as_ref()
                .map_or(1, |o| o.entry.revision.wrapping_add(1).max(1));
            self.write_revision(*key, revision, svc)?;
            let entry = Service {
                revision,
                slot_count: svc.slots.len() as u32,
                mode: svc.mode,
                _pad: 0,
            };
            // The flip: one update makes the whole new revision visible.
            self.maps
                .services
                .insert(key, &entry, 0)
                .map_err(ApplyError::map)?;
            if let Some(o) = old {
                collect(*key, &o, &mut garbage);
                self.remove_stale_subset_meta(*key, &o.image, svc);
                report.changed += 1;
            } else {
                report.added += 1;
            }
            self.current.insert(
                *key,
                PinnedService {
                    entry,
                    image: svc.clone(),
                },
            );
        }
        let removed: Vec<SockAddr4> = self
            .current
            .keys()
            .filter(|k| !image.services.contains_key(k))
            .copied()
            .collect();
        for key in removed {
            let old = self.current.remove(&key).expect("listed above");
            // Connects to a removed service pass through untouched from here on.
            self.maps.services.remove(&key).map_err(ApplyError::map)?;
            let _ = self.maps.service_meta.remove(&key);
            for s in &old.image.subsets {
                let _ = self.maps.subset_meta.remove(&SubsetMetaKey {
                    service: key,
                    subset: s.id,
                });
            }
            collect(key, &old, &mut garbage);
            report.removed += 1;
        }
        let mut state = self.maps.read_state().unwrap_or_default();
        state.applied_at_ms = now_ms();
        self.maps.state.set(0, &state, 0).map_err(ApplyError::map)?;
        Ok((report, garbage))
    }

    /// Deletes entries of replaced revisions (call after the grace period).
    pub fn collect_garbage(&mut self, garbage: Garbage) {
        for k in garbage.slots {
            // Already gone is fine (a restart's sweep may have taken it).
            let _ = self.maps.slots.remove(&k);
        }
        for k in garbage.endpoints {
            let _ = self.maps.endpoints.remove(&k);
        }
    }

    /// Records a rejected configuration for `lb status`; the running plan stays.
    pub fn record_error(&mut self, message: &str) -> Result<(), ApplyError> {
        let mut state = self.maps.read_state().unwrap_or_default();
        state.error_at_ms = now_ms();
        let bytes = message.as_bytes();
        let mut len = bytes.len().min(capacity::ERROR_LEN);
        while !message.is_char_boundary(len) {
            len -= 1;
        }
        state.last_error = [0; capacity::ERROR_LEN];
        state.last_error[..len].copy_from_slice(&bytes[..len]);
        state.last_error_len = len as u32;
        self.maps.state.set(0, &state, 0).map_err(ApplyError::map)
    }

    /// Clears the recorded error after a configuration was accepted.
    pub fn clear_error(&mut self) -> Result<(), ApplyError> {
        let mut state = self.maps.read_state().unwrap_or_default();
        state.last_error_len = 0;
        state.last_error = [0; capacity::ERROR_LEN];
        state.error_at_ms = 0;
        self.maps.state.set(0, &state, 0).map_err(ApplyError::map)
    }

    fn write_revision(
        &mut self,
        key: SockAddr4,
        revision: u32,
        svc: &ServiceImage,
    ) -> Result<(), ApplyError> {
        for sub in &svc.subsets {
            for (index, ep) in sub.endpoints.iter().enumerate() {
                let k = EndpointKey {
                    service: key,
                    revision,
                    subset: sub.id,
                    index: index as u32,
                };
                self.maps
                    .endpoints
                    .insert(&k, ep, 0)
                    .map_err(ApplyError::map)?;
            }
            let meta = SubsetMeta {
                name: maps::fixed(&sub.name),
                endpoint_count: sub.endpoints.len() as u32,
                _pad: 0,
            };
            self.maps
                .subset_meta
                .insert(
                    &SubsetMetaKey {
                        service: key,
                        subset: sub.id,
                    },
                    &meta,
                    0,
                )
                .map_err(ApplyError::map)?;
        }
        for (slot, subset) in svc.slots.iter().enumerate() {
            let endpoint_count = svc
                .subsets
                .iter()
                .find(|s| s.id == *subset)
                .map_or(0, |s| s.endpoints.len() as u32);
            let k = SlotKey {
                service: key,
                revision,
                slot: slot as u32,
            };
            self.maps
                .slots
                .insert(
                    &k,
                    &Slot {
                        subset: *subset,
                        endpoint_count,
                    },
                    0,
                )
                .map_err(ApplyError::map)?;
        }
        let meta = ServiceMeta {
            name: maps::fixed(&svc.name),
            namespace: maps::fixed(&svc.namespace),
            weight_scale: svc.weight_scale,
            reason: svc.reason,
        };
        self.maps
            .service_meta
            .insert(&key, &meta, 0)
            .map_err(ApplyError::map)
    }

    fn remove_stale_subset_meta(&mut self, key: SockAddr4, old: &ServiceImage, new: &ServiceImage) {
        for s in &old.subsets {
            if !new.subsets.iter().any(|n| n.id == s.id) {
                let _ = self.maps.subset_meta.remove(&SubsetMetaKey {
                    service: key,
                    subset: s.id,
                });
            }
        }
    }

    /// Refuses a plan that cannot fit while the old revisions still exist.
    fn check_capacity(&self, image: &MapImage) -> Result<(), ApplyError> {
        let count = |f: &dyn Fn(&ServiceImage) -> usize| -> u64 {
            let new: usize = image.services.values().map(f).sum();
            let old: usize = self.current.values().map(|p| f(&p.image)).sum();
            (new + old) as u64
        };
        let slots = count(&|s| s.slots.len());
        let eps = count(&|s| s.subsets.iter().map(|x| x.endpoints.len()).sum());
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
}

fn collect(key: SockAddr4, old: &PinnedService, garbage: &mut Garbage) {
    let revision = old.entry.revision;
    garbage
        .slots
        .extend((0..old.entry.slot_count).map(|slot| SlotKey {
            service: key,
            revision,
            slot,
        }));
    for s in &old.image.subsets {
        garbage
            .endpoints
            .extend((0..s.endpoints.len() as u32).map(|index| EndpointKey {
                service: key,
                revision,
                subset: s.id,
                index,
            }));
    }
}

/// Same content, whatever the order of subsets and slots.
fn same(a: &ServiceImage, b: &ServiceImage) -> bool {
    let norm = |s: &ServiceImage| {
        let mut slots = s.slots.clone();
        slots.sort_unstable();
        let mut subs: Vec<_> = s
            .subsets
            .iter()
            .map(|x| (x.id, x.name.clone(), x.endpoints.clone()))
            .collect();
        subs.sort();
        (
            s.name.clone(),
            s.namespace.clone(),
            s.weight_scale,
            slots,
            subs,
        )
    };
    norm(a) == norm(b)
}
