//! Compile: a pure function from the validated [`Model`] to the [`Plan`]: the kernel
//! maps' image ([`MapImage`]) and the proxy's route table ([`routes`]).
//!
//! Weights become slots: relative weights are reduced by their gcd and each subset gets
//! as many slots as its reduced weight; `connect4` picks a slot at random, then an
//! endpoint of that slot's subset at random. Two steps keep weights exact without
//! `weight × endpoints` slots (90/10 over 7 and 3 endpoints is 10 slots, not 2,100).

pub mod image;
pub mod maglev;
pub mod routes;
pub mod slices;

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use lb_common::{SockAddr4, capacity, mode, service_flags, slot_flags};

use crate::model::Model;
use crate::model::routes::ProxyReason;
use crate::route::RouteTable;
use crate::route::policy::Outlier;
pub use image::{MapImage, ServiceImage, SubsetImage};

/// What the daemon applies: the kernel maps' image and the proxy's routing table.
/// (Cloned, it shares everything: each part is an `Arc`.)
#[derive(Debug, Clone)]
pub struct Plan {
    /// Shared with the compiler (slices.rs), which changes it in place for the next
    /// plan once this one is dropped.
    pub kernel: std::sync::Arc<MapImage>,
    pub proxy: std::sync::Arc<RouteTable>,
    /// Outlier detection of kernel-path services, per subset id.
    pub outliers: std::sync::Arc<Outliers>,
    /// Its place among the compiler's plans (slices.rs; None: compiled whole).
    pub lineage: Option<Lineage>,
}

/// A plan's number among the compiler's plans, and the kernel services that changed
/// since the plan before it: the applier that applied that one looks at these only.
#[derive(Debug, Clone)]
pub struct Lineage {
    /// Unique in the process.
    pub serial: u64,
    /// The serial of the plan before, and the services added, changed or removed
    /// since (None: not known).
    pub since: Option<(u64, std::sync::Arc<Vec<SockAddr4>>)>,
}

impl Lineage {
    /// A new serial, after `before` with `changed` (None: not known).
    pub fn next(before: Option<u64>, changed: Option<Vec<SockAddr4>>) -> Self {
        static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Lineage {
            serial: SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            since: before.zip(changed.map(std::sync::Arc::new)),
        }
    }
}

/// Per kernel-path service address, the outlier detection of each subset (by id) that
/// has one.
pub type Outliers = BTreeMap<SockAddr4, BTreeMap<u32, Outlier>>;

/// `ServiceMeta::reason` codes: why a service takes its datapath.
pub mod reason {
    /// Weights only: enforced in the kernel.
    pub const WEIGHTS_ONLY: u32 = 0;
    /// A rule looks inside or changes requests.
    pub const L7_RULE: u32 = 1;
    /// The `lb.dev/datapath: proxy` annotation.
    pub const ANNOTATION: u32 = 2;
    /// Another VirtualService's Host alias routes to the service.
    pub const HOST_ROUTED: u32 = 3;
    /// Its DestinationRule hashes by a header, cookie or query parameter.
    pub const HASHED: u32 = 4;

    pub fn describe(code: u32) -> &'static str {
        match code {
            L7_RULE => "a rule matches on or changes requests",
            ANNOTATION => "annotation lb.dev/datapath: proxy (per-request weights)",
            HOST_ROUTED => {
                "another VirtualService routes a Host alias here (the Host picks the rules)"
            }
            HASHED => "its DestinationRule hashes by what requests carry",
            _ => "weights only",
        }
    }
}

/// Compiles the whole plan.
pub fn plan(model: Model) -> Result<Plan, CompileError> {
    let kernel = compile(&model)?;
    let outliers = outliers(&model, &kernel);
    Ok(Plan {
        kernel: std::sync::Arc::new(kernel),
        proxy: std::sync::Arc::new(routes::build(model)),
        outliers: std::sync::Arc::new(outliers),
        lineage: None,
    })
}

/// The outlier detection of each kernel-path subset that has one.
fn outliers(model: &Model, image: &MapImage) -> Outliers {
    let mut out = Outliers::new();
    for svc in &model.services {
        let key = service_key(svc);
        let Some(img) = image.services.get(&key).filter(|i| i.mode == mode::KERNEL) else {
            continue;
        };
        for s in &svc.split {
            let (Some(o), Some(sub)) = (
                &s.kernel.outlier,
                img.subsets.iter().find(|x| x.name == s.name),
            ) else {
                continue;
            };
            out.entry(key).or_default().insert(sub.id, o.clone());
        }
    }
    out
}

/// The model does not fit the kernel maps.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A service's reduced weights need more slots than a service may have.
    #[error(
        "service {service} ({frontend}): weights reduced by their gcd need {slots} slots, at most {max} are allowed; use smaller or rounder weights"
    )]
    TooManySlots {
        service: String,
        frontend: SocketAddrV4,
        slots: u64,
        max: u32,
    },
    /// A subset has more endpoints than the map layout indexes.
    #[error(
        "service {service} ({frontend}): subset {subset} has {count} endpoints, at most {max} are allowed"
    )]
    TooManyEndpoints {
        service: String,
        frontend: SocketAddrV4,
        subset: String,
        count: usize,
        max: u32,
    },
    /// More services than the services map holds.
    #[error("{count} services, the kernel map holds at most {max}")]
    TooManyServices { count: usize, max: u32 },
}

pub fn sock_addr(a: SocketAddrV4) -> SockAddr4 {
    SockAddr4::new(a.ip().octets(), a.port())
}

/// A service's key in the kernel maps: its frontend, and its protocol if UDP.
pub fn service_key(svc: &crate::model::Service) -> SockAddr4 {
    let (ip, port) = (svc.frontend.ip().octets(), svc.frontend.port());
    let proto = if svc.udp {
        lb_common::xdp::IPPROTO_UDP
    } else {
        lb_common::xdp::IPPROTO_TCP
    };
    SockAddr4::service(ip, port, proto)
}

/// Compiles the model into the image of the kernel maps.
pub fn compile(model: &Model) -> Result<MapImage, CompileError> {
    if model.services.len() > capacity::SERVICES as usize {
        return Err(CompileError::TooManyServices {
            count: model.services.len(),
            max: capacity::SERVICES,
        });
    }
    let mut image = MapImage::default();
    for svc in &model.services {
        let scale = svc
            .split
            .iter()
            .map(|s| s.weight)
            .filter(|w| *w > 0)
            .fold(0, gcd)
            .max(1);
        let slots_needed: u64 = svc.split.iter().map(|s| u64::from(s.weight / scale)).sum();
        if slots_needed > u64::from(capacity::SLOTS_PER_SERVICE) {
            return Err(CompileError::TooManySlots {
                service: svc.name.clone(),
                frontend: svc.frontend,
                slots: slots_needed,
                max: capacity::SLOTS_PER_SERVICE,
            });
        }
        let mut subsets = Vec::new();
        let mut slots = Vec::new();
        for s in &svc.split {
            if s.endpoints.len() > capacity::ENDPOINTS_PER_SUBSET as usize {
                return Err(CompileError::TooManyEndpoints {
                    service: svc.name.clone(),
                    frontend: svc.frontend,
                    subset: s.name.clone(),
                    count: s.endpoints.len(),
                    max: capacity::ENDPOINTS_PER_SUBSET,
                });
            }
            let id = subset_id(&s.name, &subsets);
            slots.extend(std::iter::repeat_n(id, (s.weight / scale) as usize));
            let mut endpoints: Vec<SockAddr4> =
                s.endpoints.iter().copied().map(sock_addr).collect();
            endpoints.sort();
            endpoints.dedup();
            subsets.push(SubsetImage {
                id,
                name: s.name.clone(),
                flags: if s.kernel.hash_source {
                    slot_flags::HASH_ENDPOINT
                } else {
                    0
                },
                table: if svc.north_south {
                    maglev::table_size(endpoints.len())
                } else {
                    0
                },
                endpoints,
            });
        }
        let mut flags = 0;
        if svc.sticky_source {
            flags |= service_flags::HASH_SUBSET;
        }
        if svc.proxy_reason.is_none() && svc.split.iter().any(|s| s.kernel.outlier.is_some()) {
            flags |= service_flags::TRACK_HEALTH;
        }
        image.services.insert(
            service_key(svc),
            std::sync::Arc::new(ServiceImage {
                flags,
                name: svc.name.clone(),
                namespace: svc.namespace.clone(),
                mode: if svc.proxy_reason.is_some() {
                    mode::PROXY
                } else {
                    mode::KERNEL
                },
                reason: match &svc.proxy_reason {
                    None => reason::WEIGHTS_ONLY,
                    Some(ProxyReason::Annotation) => reason::ANNOTATION,
                    Some(ProxyReason::Rule(_)) => reason::L7_RULE,
                    Some(ProxyReason::HostRouted { .. }) => reason::HOST_ROUTED,
                    Some(ProxyReason::Hashed(_)) => reason::HASHED,
                },
                weight_scale: scale,
                slots,
                subsets,
            }),
        );
    }
    Ok(image)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A subset's id inside its service: a hash of its name, so counters keyed by it stay
/// with the subset across config changes; bumped on the (rare) collision.
fn subset_id(name: &str, taken: &[SubsetImage]) -> u32 {
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    while taken.iter().any(|s| s.id == h) {
        h = h.wrapping_add(1);
    }
    h
}

#[cfg(test)]
mod tests;
