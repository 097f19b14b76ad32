//! The kernel map image: what the maps hold for a plan, independent of revisions.
//! The applier turns it into map entries; `render` prints it for golden tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::SockAddr4;

/// Every steered service by its frontend address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapImage {
    /// Shared with the compiler's slices (a plan puts them together by reference).
    pub services: BTreeMap<SockAddr4, std::sync::Arc<ServiceImage>>,
}

/// One service's slots and subsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceImage {
    pub name: String,
    pub namespace: String,
    /// `lb_common::mode`.
    pub mode: u32,
    /// `compile::reason` code.
    pub reason: u32,
    /// Configured weights were divided by this.
    pub weight_scale: u32,
    /// `lb_common::service_flags`.
    pub flags: u32,
    /// Subset id per slot.
    pub slots: Vec<u32>,
    pub subsets: Vec<SubsetImage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetImage {
    pub id: u32,
    pub name: String,
    /// Sorted, unique.
    pub endpoints: Vec<SockAddr4>,
    /// `lb_common::slot_flags` of its slots.
    pub flags: u32,
    /// Its Maglev table's size ([`super::maglev::table_size`]; 0: none). The table
    /// itself follows from the endpoints and the size (the applier builds it).
    pub table: u32,
}

impl SubsetImage {
    /// The `LB_ENDPOINTS` entries it takes: its endpoints, then its table's.
    pub fn entries(&self) -> u32 {
        self.endpoints.len() as u32 + self.table
    }
}

impl ServiceImage {
    /// Slots held by subset `id`.
    pub fn slots_of(&self, id: u32) -> usize {
        self.slots.iter().filter(|s| **s == id).count()
    }
}

/// `SockAddr4` as `a.b.c.d:port` (`/udp` after a UDP service's).
pub fn show(a: &SockAddr4) -> String {
    let udp = if a.is_udp() { "/udp" } else { "" };
    format!("{}{udp}", SocketAddrV4::new(Ipv4Addr::from(a.addr), a.port))
}

impl MapImage {
    /// Stable text form, one line per service, subset and endpoint (golden files).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (frontend, s) in &self.services {
            let _ = writeln!(
                out,
                "service {} {}/{} mode={} slots={} scale={}{}",
                show(frontend),
                s.namespace,
                s.name,
                s.mode,
                s.slots.len(),
                s.weight_scale,
                flags(s.flags)
            );
            for sub in &s.subsets {
                let eps: Vec<String> = sub.endpoints.iter().map(show).collect();
                let _ = writeln!(
                    out,
                    "  subset {} id={:#010x} slots={}{}{} endpoints=[{}]",
                    sub.name,
                    sub.id,
                    s.slots_of(sub.id),
                    flags(sub.flags),
                    match sub.table {
                        0 => String::new(),
                        n => format!(" maglev={n}"),
                    },
                    eps.join(", ")
                );
            }
        }
        out
    }
}

/// ` flags=N`, or nothing for none (the golden files of plain configs stay as they were).
fn flags(f: u32) -> String {
    if f == 0 {
        String::new()
    } else {
        format!(" flags={f}")
    }
}
