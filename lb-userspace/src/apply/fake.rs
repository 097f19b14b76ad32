//! Plan maps in memory, for testing the applier without a kernel: every write is
//! logged as the golden sequences show it, and one can be made to fail.

use std::collections::BTreeMap;

use lb_common::{
    EndpointChunk, EndpointKey, Health, HealthKey, Service, ServiceMeta, Settings, SlotChunk,
    SlotKey, SockAddr4, State, SubsetMeta, SubsetMetaKey,
};

use crate::datapath::{DatapathError, MapWriter, PlanRead, Write};

/// What the plan maps hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub services: BTreeMap<SockAddr4, Service>,
    pub slots: BTreeMap<SlotKey, SlotChunk>,
    pub endpoints: BTreeMap<EndpointKey, EndpointChunk>,
    pub service_meta: BTreeMap<SockAddr4, ServiceMeta>,
    pub subset_meta: BTreeMap<SubsetMetaKey, SubsetMeta>,
    pub state: State,
    pub settings: Settings,
    pub listeners: Vec<SockAddr4>,
    pub health: BTreeMap<HealthKey, Health>,
}

#[derive(Debug, Default)]
pub struct FakeMaps {
    pub contents: Contents,
    /// Every write made, one line each.
    pub log: Vec<String>,
    /// The write (counted from 0 over the fake's life) that fails.
    pub fail_at: Option<usize>,
    writes: usize,
}

fn put<K: Ord + Copy, V: Copy>(map: &mut BTreeMap<K, V>, k: &K, v: Option<&V>) {
    match v {
        Some(v) => {
            map.insert(*k, *v);
        }
        None => {
            map.remove(k);
        }
    }
}

impl MapWriter for FakeMaps {
    fn write(&mut self, w: &Write) -> Result<(), DatapathError> {
        let n = self.writes;
        self.writes += 1;
        if self.fail_at == Some(n) {
            self.log.push(format!("FAILED {w}"));
            return Err(DatapathError::Map {
                op: w.to_string(),
                source: "injected failure".into(),
            });
        }
        self.log.push(w.to_string());
        let c = &mut self.contents;
        match w {
            Write::Service(k, v) => put(&mut c.services, k, v.as_ref()),
            Write::Slot(k, v) => put(&mut c.slots, k, v.as_deref()),
            Write::Endpoint(k, v) => put(&mut c.endpoints, k, v.as_deref()),
            Write::ServiceMeta(k, v) => put(&mut c.service_meta, k, v.as_ref()),
            Write::SubsetMeta(k, v) => put(&mut c.subset_meta, k, v.as_ref()),
            Write::State(s) => c.state = **s,
            Write::Settings(s) => c.settings = *s,
            Write::LocalListener(a) => c.listeners.push(*a),
            Write::Health(k, v) => put(&mut c.health, k, v.as_ref()),
        }
        Ok(())
    }

    fn read(&self) -> &dyn PlanRead {
        &self.contents
    }
}

impl PlanRead for Contents {
    fn services(&self) -> Result<Vec<(SockAddr4, Service)>, DatapathError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn slot(&self, key: &SlotKey) -> Option<SlotChunk> {
        self.slots.get(key).copied()
    }

    fn endpoint(&self, key: &EndpointKey) -> Option<EndpointChunk> {
        self.endpoints.get(key).copied()
    }

    fn service_meta(&self, key: &SockAddr4) -> Option<ServiceMeta> {
        self.service_meta.get(key).copied()
    }

    fn subset_metas(&self) -> Result<Vec<(SubsetMetaKey, SubsetMeta)>, DatapathError> {
        Ok(self.subset_meta.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn revision_keys(&self) -> (Vec<SlotKey>, Vec<EndpointKey>) {
        (
            self.slots.keys().copied().collect(),
            self.endpoints.keys().copied().collect(),
        )
    }

    fn state(&self) -> State {
        self.state
    }

    fn health(&self) -> Result<Vec<(HealthKey, Health)>, DatapathError> {
        Ok(self.health.iter().map(|(k, v)| (*k, *v)).collect())
    }
}
