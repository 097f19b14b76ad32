//! What the proxy may touch in the kernel maps, and how: it takes (reads and clears)
//! the original destination of an accepted connection, reads counters, and counts
//! unknown Hosts. (Its accepted sockets join the sk_msg socket map in the kernel, at
//! PASSIVE_ESTABLISHED.)

use std::collections::{HashMap as StdHashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};

use aya::maps::{HashMap, MapData, MapFd, PerCpuArray};
use lb_common::{ClientKey, HostKey, Settings, SockAddr4, capacity, counters, map_names};

use super::port_slots::PortSlots;
use super::{DatapathError, Pins, sys};
use crate::compile::sock_addr;

/// Handles on the maps the proxy uses.
pub struct ProxyMaps {
    /// The original destinations by client port, mapped (None: the mapping failed,
    /// every lookup takes the hash).
    by_port: Option<PortSlots>,
    /// Raw fd: aya has no lookup-and-delete for hash maps.
    orig_dst: MapFd,
    counters: PerCpuArray<MapData, u64>,
    hosts: HashMap<MapData, HostKey, u64>,
    /// Unknown-Host counts not yet written to the map, and the hosts seen per service.
    pending: StdHashMap<HostKey, u64>,
    seen: StdHashMap<SockAddr4, HashSet<String>>,
}

/// Where the original destination of an accepted connection was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrigDst {
    PortSlot(SocketAddrV4),
    /// Its port's slot was held by another client address.
    Hash(SocketAddrV4),
    /// Not handed over by connect4 (a client dialling the proxy itself), or evicted.
    Missing,
}

impl OrigDst {
    pub fn addr(self) -> Option<SocketAddrV4> {
        match self {
            Self::PortSlot(a) | Self::Hash(a) => Some(a),
            Self::Missing => None,
        }
    }

    /// The `source` labels of `lb_proxy_original_destinations_total`, by [`Self::index`].
    pub const SOURCES: [&str; 3] = ["port_slot", "hash", "none"];

    pub fn index(self) -> usize {
        match self {
            Self::PortSlot(_) => 0,
            Self::Hash(_) => 1,
            Self::Missing => 2,
        }
    }
}

fn v4(a: SocketAddr) -> Option<SockAddr4> {
    match a {
        SocketAddr::V4(a) => Some(sock_addr(a)),
        SocketAddr::V6(_) => None,
    }
}

impl ProxyMaps {
    pub fn open(pins: &Pins) -> Result<Self, DatapathError> {
        let by_port = open_fd(pins, map_names::ORIG_DST_BY_PORT)
            .and_then(|fd| {
                PortSlots::map(&fd)
                    .map_err(|e| DatapathError::io(&pins.map(map_names::ORIG_DST_BY_PORT), e))
            })
            .inspect_err(|e| tracing::warn!("original destinations by port: {e}; the hash only"))
            .ok();
        Ok(Self {
            by_port,
            orig_dst: open_fd(pins, map_names::ORIG_DST)?,
            counters: super::open(pins, map_names::COUNTERS, true)?,
            hosts: super::open(pins, map_names::HOSTS, false)?,
            pending: StdHashMap::new(),
            seen: StdHashMap::new(),
        })
    }

    /// What the client at `peer` dialled, removed as it is read: from the slot of its
    /// port (shared memory), else from the hash (one syscall,
    /// BPF_MAP_LOOKUP_AND_DELETE_ELEM, hash maps since 5.14).
    pub fn take_orig_dst(&mut self, peer: SocketAddr) -> OrigDst {
        let Some(client) = v4(peer) else {
            return OrigDst::Missing;
        };
        let addr = |d: SockAddr4| SocketAddrV4::new(d.addr.into(), d.port);
        if let Some(d) = self.by_port.as_ref().and_then(|s| s.take(client)) {
            return OrigDst::PortSlot(addr(d));
        }
        let mut dst = SockAddr4::default();
        match sys::lookup_and_delete(&self.orig_dst, &ClientKey { client }, &mut dst) {
            Ok(()) => OrigDst::Hash(addr(dst)),
            Err(_) => OrigDst::Missing,
        }
    }

    /// Puts the proxy's listening sockets (main, deferred) where `connect4` looks for a
    /// live proxy; each leaves the map when it closes (a stopped or killed proxy).
    pub fn register_listeners(
        pins: &Pins,
        listeners: [std::os::fd::BorrowedFd<'_>; 2],
    ) -> Result<(), DatapathError> {
        let mut map: aya::maps::SockMap<MapData> =
            super::open(pins, map_names::PROXY_LISTENERS, false)?;
        for (index, fd) in (0u32..).zip(listeners) {
            map.set(index, &fd, 0)
                .map_err(|e| DatapathError::map("registering the proxy's listener", e))?;
        }
        Ok(())
    }

    /// Takes the proxy's listening sockets out of `connect4`'s map, if this process is
    /// the daemon whose proxy it sends connects to (the settings hold its tgid; a
    /// newer daemon that took over — an upgrade in place, serving the same sockets —
    /// wrote its own, and keeps them). New connects then take the kernel split at
    /// once, and the proxy can accept the ones already sent to it before it closes
    /// the sockets (closing a listener resets the connections in its queue). Returns
    /// whether they were this daemon's.
    pub fn unregister_listeners(pins: &Pins) -> Result<bool, DatapathError> {
        let settings: aya::maps::Array<MapData, Settings> =
            super::open(pins, map_names::SETTINGS, true)?;
        let current = settings
            .get(&0, 0)
            .map_err(|e| DatapathError::map("reading the settings", e))?;
        if current.self_tgid != std::process::id() {
            return Ok(false);
        }
        let mut map: aya::maps::SockMap<MapData> =
            super::open(pins, map_names::PROXY_LISTENERS, false)?;
        for index in 0..2 {
            match map.clear_index(&index) {
                Ok(()) => {}
                // Not there: that socket is closed already.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(DatapathError::map("unregistering the proxy's listener", e)),
            }
        }
        Ok(true)
    }

    /// A datapath-wide counter (`lb_common::counters`) summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        super::counter(&self.counters, index)
    }

    pub fn sk_msg_redirected(&self) -> u64 {
        self.counter(counters::SK_MSG_REDIRECTED)
    }

    /// Counts a request whose Host named no VirtualService host (bounded per service).
    pub fn unknown_host(&mut self, service: SocketAddrV4, host: &str) {
        let svc = sock_addr(service);
        let seen = self.seen.entry(svc).or_default();
        let host = if seen.contains(host) || seen.len() < capacity::HOSTS_PER_SERVICE {
            seen.insert(host.to_string());
            host
        } else {
            "(other)"
        };
        let key = HostKey {
            service: svc,
            host: super::plan_maps::fixed(host),
        };
        *self.pending.entry(key).or_default() += 1;
    }

    /// Writes pending unknown-Host counts to the map (called about once a second).
    pub fn flush_hosts(&mut self) {
        for (k, n) in self.pending.drain() {
            let old = self.hosts.get(&k, 0).unwrap_or(0);
            let _ = self.hosts.insert(&k, &(old + n), 0);
        }
    }
}

fn open_fd(pins: &Pins, name: &'static str) -> Result<MapFd, DatapathError> {
    let path = pins.map(name);
    MapData::from_pin(&path)
        .and_then(|d| d.info())
        .and_then(|i| i.fd())
        .map_err(|e| DatapathError::OpenMap {
            path,
            source: Box::new(e),
        })
}
