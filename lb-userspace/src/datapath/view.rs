//! A read-only view of every map `lb status` shows: opened with `BPF_F_RDONLY`, so the
//! kernel refuses writes through it; works while the daemon is stopped or killed.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap};
use lb_common::{HostKey, Service, Settings, SockAddr4, StatKey, Stats, map_names};

use super::plan_maps::{PlanHandles, PlanRead};
use super::{DatapathError, Pins};

/// Read-only handles on the pinned maps.
pub struct StatusView {
    plan: PlanHandles,
    stats: PerCpuHashMap<MapData, StatKey, Stats>,
    counters: PerCpuArray<MapData, u64>,
    hosts: HashMap<MapData, HostKey, u64>,
}

impl StatusView {
    pub fn open(pins: &Pins) -> Result<Self, DatapathError> {
        Ok(Self {
            plan: PlanHandles::open(pins, true)?,
            stats: super::open(pins, map_names::STATS, true)?,
            counters: super::open(pins, map_names::COUNTERS, true)?,
            hosts: super::open(pins, map_names::HOSTS, true)?,
        })
    }

    /// The plan as pinned.
    pub fn plan(&self) -> &dyn PlanRead {
        &self.plan
    }

    /// One service's entry (the revision connects use now).
    pub fn service(&self, key: &SockAddr4) -> Option<Service> {
        self.plan.service(key)
    }

    /// Per-subset counters summed over CPUs.
    pub fn stats(&self) -> Result<StdHashMap<StatKey, Stats>, DatapathError> {
        let mut out = StdHashMap::new();
        for item in self.stats.iter() {
            let (k, per_cpu) = item.map_err(|e| DatapathError::map("reading LB_STATS", e))?;
            let mut sum = Stats::default();
            for s in per_cpu.iter() {
                sum.add(s);
            }
            out.insert(k, sum);
        }
        Ok(out)
    }

    /// A datapath-wide counter (`lb_common::counters`) summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        super::counter(&self.counters, index)
    }

    pub fn settings(&self) -> Settings {
        self.plan.settings.get(&0, 0).unwrap_or_default()
    }

    /// Addresses listened on inside the cgroup, sorted.
    pub fn local_listeners(&self) -> Vec<SockAddr4> {
        let mut out: Vec<SockAddr4> = self
            .plan
            .local_listeners
            .keys()
            .filter_map(Result::ok)
            .collect();
        out.sort();
        out
    }

    /// Requests per (service, Host) whose Host named no VirtualService host.
    pub fn unknown_hosts(&self) -> Vec<(HostKey, u64)> {
        self.hosts.iter().filter_map(Result::ok).collect()
    }
}
