//! The kernel datapath as user space sees it: the embedded eBPF object and its layout
//! contract ([`layout`]), where it is pinned ([`pins`]), attaching and upgrading its
//! programs ([`attach`]; the north-south ones per interface: [`north_south`]), and
//! every handle on its maps, by role:
//!
//! * [`PlanMaps`]: the plan (services, slots, endpoints, their names, settings, state);
//!   opened read-write once, by the daemon, and handed to the applier, the only writer.
//! * [`ProxyMaps`]: what the proxy may touch: it takes original destinations (read
//!   and cleared), reads counters, and counts unknown Hosts.
//! * [`StatusView`]: read-only file descriptors (`BPF_F_RDONLY`) for `lb status`: the
//!   kernel refuses any write through them.
//!
//! Nothing outside this module opens a map.

pub mod attach;
pub mod cgroup;
mod gateways;
pub mod layout;
pub mod listeners;
pub mod north_south;
pub mod object;
pub mod pins;
pub mod plan_maps;
mod port_slots;
pub mod proxy_maps;
mod sys;
pub mod view;

use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData};

pub use pins::Pins;
pub use plan_maps::{MapWriter, PinnedService, PlanMaps, PlanRead, Write};
pub use proxy_maps::{OrigDst, ProxyMaps};
pub use view::StatusView;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The kernel side could not be loaded, attached, opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A file or folder could not be used.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The eBPF object could not be parsed or loaded.
    #[error("loading the eBPF object: {0}")]
    Load(BoxError),
    /// A program could not be loaded, attached, replaced or detached.
    #[error("program {program}: {source}")]
    Program { program: String, source: BoxError },
    /// The object lacks a map (a build problem).
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// A link could not be pinned.
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: BoxError },
    /// A pinned map could not be opened (not attached yet? run `lb run` first).
    #[error("opening pinned map {path}: {source}")]
    OpenMap { path: PathBuf, source: BoxError },
    /// A pinned map is not what this lb's layout says: someone else's pin, or a
    /// corrupted folder. lb never adopts it.
    #[error("pinned map {path} has {found}, this lb's layout says {expected}")]
    Layout {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// A map read or write failed.
    #[error("{op}: {source}")]
    Map { op: String, source: BoxError },
}

impl DatapathError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn map(op: impl std::fmt::Display, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Map {
            op: op.to_string(),
            source: Box::new(e),
        }
    }
}

/// Counter `index` of `LB_COUNTERS`, summed over CPUs (0 if it cannot be read).
fn counter(map: &aya::maps::PerCpuArray<MapData, u64>, index: u32) -> u64 {
    map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// Opens one pinned map as its typed handle; `read_only` opens it with
/// `BPF_F_RDONLY`, so the kernel refuses writes through it.
fn open<T>(pins: &Pins, name: &'static str, read_only: bool) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = pins.map(name);
    let err = |e: BoxError| DatapathError::OpenMap {
        path: path.clone(),
        source: e,
    };
    let data = if read_only {
        let fd = sys::obj_get(&path, true).map_err(|e| err(Box::new(e)))?;
        MapData::from_fd(fd).map_err(|e| err(Box::new(e)))?
    } else {
        MapData::from_pin(&path).map_err(|e| err(Box::new(e)))?
    };
    let map = Map::from_map_data(data).map_err(|e| err(Box::new(e)))?;
    T::try_from(map).map_err(|e| err(Box::new(e)))
}
