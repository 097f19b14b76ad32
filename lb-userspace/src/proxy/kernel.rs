//! The proxy's side of the kernel maps: the original destination of an accepted
//! connection, the socket map for the sk_msg shortcut, counters, unknown Hosts.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use aya::maps::{HashMap, MapData, PerCpuArray, SockHash};
use lb_common::{ClientKey, HostKey, SockAddr4, SockKey, capacity, counters, map_names};

use crate::apply::maps::open;
use crate::apply::{ApplyError, Pins};
use crate::compile::sock_addr;

/// Handles on the maps the proxy uses.
pub struct KernelMaps {
    orig_dst: HashMap<MapData, ClientKey, SockAddr4>,
    sockets: SockHash<MapData, SockKey>,
    counters: PerCpuArray<MapData, u64>,
    hosts: HashMap<MapData, HostKey, u64>,
    /// Unknown-Host counts not yet written to the map, and the hosts seen per service.
    pending: StdHashMap<HostKey, u64>,
    seen: StdHashMap<SockAddr4, HashSet<String>>,
}

fn v4(a: SocketAddr) -> Option<SockAddr4> {
    match a {
        SocketAddr::V4(a) => Some(sock_addr(a)),
        SocketAddr::V6(_) => None,
    }
}

impl KernelMaps {
    pub fn open(pins: &Pins) -> Result<Self, ApplyError> {
        Ok(Self {
            orig_dst: open(pins, map_names::ORIG_DST)?,
            sockets: open(pins, map_names::SOCKETS)?,
            counters: open(pins, map_names::COUNTERS)?,
            hosts: open(pins, map_names::HOSTS)?,
            pending: StdHashMap::new(),
            seen: StdHashMap::new(),
        })
    }

    /// What the client at `peer` dialled; the entry is removed once read (the map is an
    /// LRU: stale entries would only crowd out live ones).
    pub fn take_orig_dst(&mut self, peer: SocketAddr) -> Option<SocketAddrV4> {
        let key = ClientKey { client: v4(peer)? };
        let dst = self.orig_dst.get(&key, 0).ok()?;
        let _ = self.orig_dst.remove(&key);
        Some(SocketAddrV4::new(dst.addr.into(), dst.port))
    }

    /// Puts the proxy's accepted socket in the socket map so `sk_msg` can shortcut the
    /// client's bytes into it (and the proxy's answers back).
    /// `local` is the listener's address (known: saves a getsockname per connection).
    pub fn add_accepted(
        &mut self,
        stream: &tokio::net::TcpStream,
        local: SocketAddr,
        peer: SocketAddr,
    ) {
        let (Some(local), Some(remote)) = (v4(local), v4(peer)) else {
            return;
        };
        if let Err(e) = self
            .sockets
            .insert(&SockKey { local, remote }, stream.as_raw_fd(), 0)
        {
            tracing::debug!("socket map insert: {e}");
        }
    }

    /// A per-CPU counter summed.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
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
            host: crate::apply::maps::fixed(host),
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
