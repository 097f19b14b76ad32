//! Typed handles on the pinned maps, and reading back what they hold.

use std::collections::{BTreeMap, HashMap as StdHashMap};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuHashMap};
use lb_common::{
    EndpointKey, Service, ServiceMeta, Settings, Slot, SlotKey, SockAddr4, StatKey, State, Stats,
    SubsetMeta, SubsetMetaKey, map_names,
};

use super::ApplyError;
use super::pins::Pins;
use crate::compile::{ServiceImage, SubsetImage};

/// The pinned maps lb writes and reads.
pub struct Maps {
    pub services: HashMap<MapData, SockAddr4, Service>,
    pub slots: HashMap<MapData, SlotKey, Slot>,
    pub endpoints: HashMap<MapData, EndpointKey, SockAddr4>,
    pub stats: PerCpuHashMap<MapData, StatKey, Stats>,
    pub settings: Array<MapData, Settings>,
    pub service_meta: HashMap<MapData, SockAddr4, ServiceMeta>,
    pub subset_meta: HashMap<MapData, SubsetMetaKey, SubsetMeta>,
    pub state: Array<MapData, State>,
    pub counters: aya::maps::PerCpuArray<MapData, u64>,
    pub hosts: HashMap<MapData, lb_common::HostKey, u64>,
    pub local_listeners: HashMap<MapData, SockAddr4, u32>,
}

/// Opens one pinned map as its typed handle.
pub fn open<T>(pins: &Pins, name: &'static str) -> Result<T, ApplyError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = pins.map(name);
    let data = MapData::from_pin(&path).map_err(|e| ApplyError::OpenMap {
        path: path.clone(),
        source: Box::new(e),
    })?;
    let map = Map::from_map_data(data).map_err(|e| ApplyError::OpenMap {
        path: path.clone(),
        source: Box::new(e),
    })?;
    T::try_from(map).map_err(|e| ApplyError::OpenMap {
        path,
        source: Box::new(e),
    })
}

/// A pinned service as read back: its entry and its current revision's content.
#[derive(Debug, Clone)]
pub struct PinnedService {
    pub entry: Service,
    pub image: ServiceImage,
}

impl Maps {
    /// Opens every map pinned under `pins`.
    pub fn open(pins: &Pins) -> Result<Self, ApplyError> {
        Ok(Self {
            services: open(pins, map_names::SERVICES)?,
            slots: open(pins, map_names::SLOTS)?,
            endpoints: open(pins, map_names::ENDPOINTS)?,
            stats: open(pins, map_names::STATS)?,
            settings: open(pins, map_names::SETTINGS)?,
            service_meta: open(pins, map_names::SERVICE_META)?,
            subset_meta: open(pins, map_names::SUBSET_META)?,
            state: open(pins, map_names::STATE)?,
            counters: open(pins, map_names::COUNTERS)?,
            hosts: open(pins, map_names::HOSTS)?,
            local_listeners: open(pins, map_names::LOCAL_LISTENERS)?,
        })
    }

    /// Reads every service back: entry, slots of its current revision, subsets
    /// (names from the metadata map) and their endpoints.
    pub fn read_services(&self) -> Result<BTreeMap<SockAddr4, PinnedService>, ApplyError> {
        let mut subsets_by_service: StdHashMap<SockAddr4, Vec<(u32, SubsetMeta)>> =
            StdHashMap::new();
        for item in self.subset_meta.iter() {
            let (k, v) = item.map_err(ApplyError::map)?;
            subsets_by_service
                .entry(k.service)
                .or_default()
                .push((k.subset, v));
        }
        let mut out = BTreeMap::new();
        for item in self.services.iter() {
            let (key, entry) = item.map_err(ApplyError::map)?;
            let meta = self.service_meta.get(&key, 0).unwrap_or_default();
            let mut slots = Vec::with_capacity(entry.slot_count as usize);
            for slot in 0..entry.slot_count {
                let k = SlotKey {
                    service: key,
                    revision: entry.revision,
                    slot,
                };
                // A missing slot makes connect4 fail open; show it as subset 0.
                slots.push(self.slots.get(&k, 0).map(|s| s.subset).unwrap_or(0));
            }
            let mut subsets = Vec::new();
            let mut known = subsets_by_service.remove(&key).unwrap_or_default();
            known.sort_by(|a, b| c_str(&a.1.name).cmp(&c_str(&b.1.name)).then(a.0.cmp(&b.0)));
            for (id, m) in known {
                let mut endpoints = Vec::new();
                for index in 0..m.endpoint_count {
                    let k = EndpointKey {
                        service: key,
                        revision: entry.revision,
                        subset: id,
                        index,
                    };
                    if let Ok(ep) = self.endpoints.get(&k, 0) {
                        endpoints.push(ep);
                    }
                }
                subsets.push(SubsetImage {
                    id,
                    name: c_str(&m.name),
                    endpoints,
                });
            }
            let image = ServiceImage {
                name: c_str(&meta.name),
                namespace: c_str(&meta.namespace),
                mode: entry.mode,
                reason: meta.reason,
                weight_scale: meta.weight_scale.max(1),
                slots,
                subsets,
            };
            out.insert(key, PinnedService { entry, image });
        }
        Ok(out)
    }

    /// Per-subset counters summed over CPUs.
    pub fn read_stats(&self) -> Result<StdHashMap<StatKey, Stats>, ApplyError> {
        let mut out = StdHashMap::new();
        for item in self.stats.iter() {
            let (k, per_cpu) = item.map_err(ApplyError::map)?;
            let mut sum = Stats::default();
            for s in per_cpu.iter() {
                sum.connects += s.connects;
                sum.refused += s.refused;
            }
            out.insert(k, sum);
        }
        Ok(out)
    }

    pub fn read_state(&self) -> Result<State, ApplyError> {
        self.state.get(&0, 0).map_err(ApplyError::map)
    }
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
