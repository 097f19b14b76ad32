//! The plan maps: what connects are steered by (services, slots, endpoints), their
//! names for `lb status`, the daemon's settings and state. Every change goes through
//! one vocabulary, [`Write`], and one trait, [`MapWriter`], so the applier's sequence
//! of writes can be tested without a kernel (golden sequences, failures injected at
//! any step) and the kernel's implementation, [`PlanMaps`], is a plain dispatch.

use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::fmt;
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, MapError};
use lb_common::{
    EndpointChunk, EndpointKey, Health, HealthKey, PER_ENTRY, Service, ServiceMeta, Settings, Slot,
    SlotChunk, SlotKey, SockAddr4, State, SubsetMeta, SubsetMetaKey, chunks, map_names,
};

use super::{DatapathError, Pins};
use crate::compile::{ServiceImage, SubsetImage};

/// One change of one plan map entry; `None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Service(SockAddr4, Option<Service>),
    /// (The chunks are boxed: a write is moved and kept for undo, and most are small.)
    Slot(SlotKey, Option<Box<SlotChunk>>),
    Endpoint(EndpointKey, Option<Box<EndpointChunk>>),
    ServiceMeta(SockAddr4, Option<ServiceMeta>),
    SubsetMeta(SubsetMetaKey, Option<SubsetMeta>),
    /// `LB_STATE[0]` (an array: always set).
    State(Box<State>),
    /// `LB_SETTINGS[0]`.
    Settings(Settings),
    /// A local backend that listened before the programs could see it.
    LocalListener(SockAddr4),
    /// `LB_HEALTH` (outlier detection on the kernel path): deleted when the endpoint
    /// is ejected, so its run of failures starts again.
    Health(HealthKey, Option<Health>),
}

/// Read access to the plan maps, as much as the applier needs to adopt them.
pub trait PlanRead {
    fn services(&self) -> Result<Vec<(SockAddr4, Service)>, DatapathError>;
    fn slot(&self, key: &SlotKey) -> Option<SlotChunk>;
    fn endpoint(&self, key: &EndpointKey) -> Option<EndpointChunk>;
    fn service_meta(&self, key: &SockAddr4) -> Option<ServiceMeta>;
    fn subset_metas(&self) -> Result<Vec<(SubsetMetaKey, SubsetMeta)>, DatapathError>;
    /// Every slot and endpoint key, of every revision.
    fn revision_keys(&self) -> (Vec<SlotKey>, Vec<EndpointKey>);
    fn state(&self) -> State;
    /// Every tracked endpoint's connect outcomes.
    fn health(&self) -> Result<Vec<(HealthKey, Health)>, DatapathError>;
}

/// The plan maps' one writer interface.
pub trait MapWriter {
    /// Makes one change. Deleting a key that is not there is not an error.
    fn write(&mut self, w: &Write) -> Result<(), DatapathError>;
    /// What the maps hold.
    fn read(&self) -> &dyn PlanRead;
}

/// A pinned service as read back: its entry and its current revision's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedService {
    pub entry: Service,
    /// Shared with the plan that was applied: the next apply finds an unchanged
    /// service by its address, without comparing contents.
    pub image: std::sync::Arc<ServiceImage>,
}

/// Reads every service back: entry, slots of its current revision, subsets (names
/// from the metadata map) and their endpoints.
pub fn read_services(
    maps: &dyn PlanRead,
) -> Result<BTreeMap<SockAddr4, PinnedService>, DatapathError> {
    let mut subsets_by_service: StdHashMap<SockAddr4, Vec<(u32, SubsetMeta)>> = StdHashMap::new();
    for (k, v) in maps.subset_metas()? {
        subsets_by_service
            .entry(k.service)
            .or_default()
            .push((k.subset, v));
    }
    let mut out = BTreeMap::new();
    for (key, entry) in maps.services()? {
        let meta = maps.service_meta(&key).unwrap_or_default();
        // Each entry read once; a missing one reads as missing slots.
        let read: Vec<Option<Slot>> = (0..chunks(entry.slot_count))
            .flat_map(|chunk| {
                let held = maps.slot(&SlotKey {
                    service: key,
                    revision: entry.revision,
                    chunk,
                });
                (0..PER_ENTRY as usize).map(move |i| held.map(|c| c.slots[i]))
            })
            .take(entry.slot_count as usize)
            .collect();
        // A missing slot makes connect4 fail open; show it as subset 0.
        let slots = read.iter().map(|s| s.map_or(0, |s| s.subset)).collect();
        let slot_of = |id: u32| read.iter().flatten().find(|s| s.subset == id);
        let mut known = subsets_by_service.remove(&key).unwrap_or_default();
        known.sort_by(|a, b| c_str(&a.1.name).cmp(&c_str(&b.1.name)).then(a.0.cmp(&b.0)));
        let subsets = known
            .into_iter()
            .map(|(id, m)| SubsetImage {
                id,
                name: c_str(&m.name),
                endpoints: (0..chunks(m.endpoint_count))
                    .filter_map(|chunk| {
                        maps.endpoint(&EndpointKey {
                            service: key,
                            revision: entry.revision,
                            subset: id,
                            chunk,
                        })
                    })
                    .flat_map(|c| c.endpoints)
                    .take(m.endpoint_count as usize)
                    .collect(),
                flags: slot_of(id).map_or(0, |s| s.flags),
                table: slot_of(id).map_or(0, |s| s.table),
            })
            .collect();
        let image = ServiceImage {
            flags: entry.flags,
            name: c_str(&meta.name),
            namespace: c_str(&meta.namespace),
            mode: entry.mode,
            reason: meta.reason,
            weight_scale: meta.weight_scale.max(1),
            slots,
            subsets,
        };
        out.insert(
            key,
            PinnedService {
                entry,
                image: std::sync::Arc::new(image),
            },
        );
    }
    Ok(out)
}

/// Handles on the maps that hold the plan, read-write (the applier's) or read-only
/// (`lb status`'s).
pub(super) struct PlanHandles {
    services: HashMap<MapData, SockAddr4, Service>,
    slots: HashMap<MapData, SlotKey, SlotChunk>,
    endpoints: HashMap<MapData, EndpointKey, EndpointChunk>,
    service_meta: HashMap<MapData, SockAddr4, ServiceMeta>,
    subset_meta: HashMap<MapData, SubsetMetaKey, SubsetMeta>,
    state: Array<MapData, State>,
    pub(super) settings: Array<MapData, Settings>,
    pub(super) local_listeners: HashMap<MapData, SockAddr4, u32>,
    health: HashMap<MapData, HealthKey, Health>,
}

impl PlanHandles {
    pub(super) fn open(pins: &Pins, read_only: bool) -> Result<Self, DatapathError> {
        Ok(Self {
            services: super::open(pins, map_names::SERVICES, read_only)?,
            slots: super::open(pins, map_names::SLOTS, read_only)?,
            endpoints: super::open(pins, map_names::ENDPOINTS, read_only)?,
            service_meta: super::open(pins, map_names::SERVICE_META, read_only)?,
            subset_meta: super::open(pins, map_names::SUBSET_META, read_only)?,
            state: super::open(pins, map_names::STATE, read_only)?,
            settings: super::open(pins, map_names::SETTINGS, read_only)?,
            local_listeners: super::open(pins, map_names::LOCAL_LISTENERS, read_only)?,
            health: super::open(pins, map_names::HEALTH, read_only)?,
        })
    }

    /// One service's entry (the revision connects use now).
    pub(super) fn service(&self, key: &SockAddr4) -> Option<Service> {
        self.services.get(key, 0).ok()
    }
}

/// The kernel's plan maps, opened read-write: the daemon opens them once and hands
/// them to the applier, their only writer.
pub struct PlanMaps(PlanHandles);

impl PlanMaps {
    pub fn open(pins: &Pins) -> Result<Self, DatapathError> {
        PlanHandles::open(pins, false).map(Self)
    }
}

/// Inserts `v` at `k`, or deletes `k` (gone already is fine).
fn put<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    k: &K,
    v: Option<&V>,
) -> Result<(), MapError> {
    match v {
        Some(v) => map.insert(k, v, 0),
        None => match map.remove(k) {
            Err(MapError::KeyNotFound) => Ok(()),
            // aya reports a missing key on delete as the syscall's ENOENT.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            other => other,
        },
    }
}

impl MapWriter for PlanMaps {
    fn write(&mut self, w: &Write) -> Result<(), DatapathError> {
        let m = &mut self.0;
        let r = match w {
            Write::Service(k, v) => put(&mut m.services, k, v.as_ref()),
            Write::Slot(k, v) => put(&mut m.slots, k, v.as_deref()),
            Write::Endpoint(k, v) => put(&mut m.endpoints, k, v.as_deref()),
            Write::ServiceMeta(k, v) => put(&mut m.service_meta, k, v.as_ref()),
            Write::SubsetMeta(k, v) => put(&mut m.subset_meta, k, v.as_ref()),
            Write::State(s) => m.state.set(0, &**s, 0),
            Write::Settings(s) => m.settings.set(0, s, 0),
            Write::LocalListener(a) => m.local_listeners.insert(a, &1, 0),
            Write::Health(k, v) => put(&mut m.health, k, v.as_ref()),
        };
        r.map_err(|e| DatapathError::map(w, e))
    }

    fn read(&self) -> &dyn PlanRead {
        &self.0
    }
}

impl PlanRead for PlanHandles {
    fn services(&self) -> Result<Vec<(SockAddr4, Service)>, DatapathError> {
        self.services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| DatapathError::map("reading LB_SERVICES", e))
    }

    fn slot(&self, key: &SlotKey) -> Option<SlotChunk> {
        self.slots.get(key, 0).ok()
    }

    fn endpoint(&self, key: &EndpointKey) -> Option<EndpointChunk> {
        self.endpoints.get(key, 0).ok()
    }

    fn service_meta(&self, key: &SockAddr4) -> Option<ServiceMeta> {
        self.service_meta.get(key, 0).ok()
    }

    fn subset_metas(&self) -> Result<Vec<(SubsetMetaKey, SubsetMeta)>, DatapathError> {
        self.subset_meta
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| DatapathError::map("reading LB_SUBSET_META", e))
    }

    fn revision_keys(&self) -> (Vec<SlotKey>, Vec<EndpointKey>) {
        (
            self.slots.keys().filter_map(Result::ok).collect(),
            self.endpoints.keys().filter_map(Result::ok).collect(),
        )
    }

    fn state(&self) -> State {
        self.state.get(&0, 0).unwrap_or_default()
    }

    fn health(&self) -> Result<Vec<(HealthKey, Health)>, DatapathError> {
        self.health
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| DatapathError::map("reading LB_HEALTH", e))
    }
}

/// One line per write, as the golden sequences show them.
impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn set_or_delete<V>(
            f: &mut fmt::Formatter<'_>,
            map: &str,
            key: fmt::Arguments<'_>,
            v: Option<&V>,
            show: impl Fn(&V) -> String,
        ) -> fmt::Result {
            match v {
                Some(v) => write!(f, "{map} {key} = {}", show(v)),
                None => write!(f, "{map} {key} deleted"),
            }
        }
        match self {
            Write::Service(k, v) => set_or_delete(
                f,
                "LB_SERVICES",
                format_args!("{}", addr(k)),
                v.as_ref(),
                |s| {
                    format!(
                        "revision {} slots {} mode {}{}",
                        s.revision,
                        s.slot_count,
                        s.mode,
                        flags(s.flags)
                    )
                },
            ),
            Write::Slot(k, v) => set_or_delete(
                f,
                "LB_SLOTS",
                format_args!("{} r{} #{}", addr(&k.service), k.revision, k.chunk),
                v.as_ref(),
                |c| {
                    runs(&c.slots)
                        .map(|(s, n)| {
                            format!(
                                "{n} × subset {:08x} ({} endpoints){}",
                                s.subset,
                                s.endpoint_count,
                                flags(s.flags)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            Write::Endpoint(k, v) => set_or_delete(
                f,
                "LB_ENDPOINTS",
                format_args!(
                    "{} r{} subset {:08x} #{}",
                    addr(&k.service),
                    k.revision,
                    k.subset,
                    k.chunk
                ),
                v.as_ref(),
                |c| {
                    runs(&c.endpoints)
                        .map(|(e, n)| match n {
                            1 => addr(e),
                            n => format!("{n} × {}", addr(e)),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            Write::ServiceMeta(k, v) => set_or_delete(
                f,
                "LB_SERVICE_META",
                format_args!("{}", addr(k)),
                v.as_ref(),
                |m| {
                    format!(
                        "{}/{} scale {} reason {}",
                        c_str(&m.namespace),
                        c_str(&m.name),
                        m.weight_scale,
                        m.reason
                    )
                },
            ),
            Write::SubsetMeta(k, v) => set_or_delete(
                f,
                "LB_SUBSET_META",
                format_args!("{} subset {:08x}", addr(&k.service), k.subset),
                v.as_ref(),
                |m| format!("{} ({} endpoints)", c_str(&m.name), m.endpoint_count),
            ),
            Write::State(s) => write!(
                f,
                "LB_STATE = applied {} error {}",
                if s.applied_at_ms > 0 { "set" } else { "never" },
                if s.last_error_len > 0 { "set" } else { "none" }
            ),
            Write::Settings(s) => write!(
                f,
                "LB_SETTINGS = tgid {} proxy {} deferred {} flags {}",
                s.self_tgid,
                addr(&s.proxy),
                addr(&s.proxy_deferred),
                s.flags
            ),
            Write::LocalListener(a) => write!(f, "LB_LOCAL_LISTENERS {} = 1", addr(a)),
            Write::Health(k, v) => set_or_delete(
                f,
                "LB_HEALTH",
                format_args!("{} {}", addr(&k.service), addr(&k.endpoint)),
                v.as_ref(),
                |h| format!("{} failed in a row", h.failed_in_a_row),
            ),
        }
    }
}

/// ` flags N`, nothing for none (golden sequences of plain plans stay as they were).
/// A chunk's items as runs of equal ones (its unused tail, zeroes, left out).
fn runs<T: PartialEq + Default>(items: &[T]) -> impl Iterator<Item = (&T, usize)> {
    let used = items
        .iter()
        .rposition(|i| *i != T::default())
        .map_or(0, |i| i + 1);
    let items = &items[..used];
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = items.get(i)?;
        let n = items[i..].iter().take_while(|x| *x == first).count();
        i += n;
        Some((first, n))
    })
}

fn flags(f: u32) -> String {
    if f == 0 {
        String::new()
    } else {
        format!(" flags {f}")
    }
}

/// `a.b.c.d:port`.
pub fn addr(a: &SockAddr4) -> String {
    format!("{}:{}", Ipv4Addr::from(a.addr), a.port)
}

/// A NUL-padded name as a string.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A string as a NUL-padded fixed array (cut at a char boundary if too long).
pub fn fixed<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = s.len().min(N - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}
