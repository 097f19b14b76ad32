//! Loading and attaching the programs, pinning maps and links, and removing them.
//!
//! Links are pinned so the datapath keeps steering while the daemon is stopped,
//! killed or upgraded. A restart adopts what is pinned and never detaches first (that
//! would leave a window without `connect4`).

use std::fs::File;
use std::path::Path;

use aya::maps::SockHash;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use lb_common::{SockKey, map_names};

use super::ApplyError;
use super::pins::{PROGRAMS, Pins};

/// What `ensure_attached` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    /// Every link was already pinned: the running datapath was adopted untouched.
    Adopted,
    /// Programs were loaded and attached (all, or the ones missing).
    Attached,
}

/// Makes sure lb's programs are attached to `cgroup` and pinned under `pins`.
pub fn ensure_attached(pins: &Pins, cgroup: &Path) -> Result<Attached, ApplyError> {
    if pins.all_links_pinned() {
        return Ok(Attached::Adopted);
    }
    super::pins::ensure_bpffs(&pins.root)
        .map_err(|e| ApplyError::io(Path::new(super::pins::BPFFS_MOUNT), e))?;
    std::fs::create_dir_all(&pins.root).map_err(|e| ApplyError::io(&pins.root, e))?;
    // Maps declared pin-by-name are reused from `pins.root` when pinned, else created
    // and pinned there.
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.root)
        .load(crate::datapath::object::bytes())
        .map_err(|e| ApplyError::Load(Box::new(e)))?;
    let cgroup_file = File::open(cgroup).map_err(|e| ApplyError::io(cgroup, e))?;
    for name in PROGRAMS {
        let path = pins.link(name);
        if path.exists() {
            continue;
        }
        let link = attach_one(&mut ebpf, name, &cgroup_file)?;
        link.pin(&path).map_err(|e| ApplyError::Pin {
            path: path.clone(),
            source: Box::new(e),
        })?;
    }
    Ok(Attached::Attached)
}

fn program_error(program: &str, e: impl std::error::Error + Send + Sync + 'static) -> ApplyError {
    ApplyError::Program {
        program: program.to_string(),
        source: Box::new(e),
    }
}

/// Loads and attaches one program; returns its link, ready to pin.
fn attach_one(ebpf: &mut Ebpf, name: &str, cgroup: &File) -> Result<FdLink, ApplyError> {
    let err = |e| program_error(name, e);
    // With bpf_link (kernel >= 5.7) the attach flags must be 0 ("Single" here): links
    // always sit beside other programs of the cgroup (Cilium's, ...) as multi-attach.
    let mode = CgroupAttachMode::Single;
    if name == "lb_sk_msg" {
        let sock_map: SockHash<_, SockKey> = ebpf
            .map(map_names::SOCKETS)
            .ok_or_else(|| ApplyError::MissingMap(map_names::SOCKETS))?
            .try_into()
            .map_err(|e| program_error(name, e))?;
        let fd = sock_map
            .fd()
            .try_clone()
            .map_err(|e| ApplyError::io(Path::new(map_names::SOCKETS), e))?;
        let prog: &mut SkMsg = program(ebpf, name)?;
        prog.load().map_err(err)?;
        let id = prog.attach(&fd).map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        return FdLink::try_from(link).map_err(|e| program_error(name, e));
    }
    if name == "lb_sockops" {
        let prog: &mut SockOps = program(ebpf, name)?;
        prog.load().map_err(err)?;
        let id = prog.attach(cgroup, mode).map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        return FdLink::try_from(link).map_err(|e| program_error(name, e));
    }
    let prog: &mut CgroupSockAddr = program(ebpf, name)?;
    prog.load().map_err(err)?;
    let id = prog.attach(cgroup, mode).map_err(err)?;
    let link = prog.take_link(id).map_err(err)?;
    FdLink::try_from(link).map_err(|e| program_error(name, e))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ApplyError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ApplyError::MissingProgram(name.to_string()))?
        .try_into()
        .map_err(|e| program_error(name, e))
}

/// Detaches every program and removes every pin under `pins` (idempotent).
pub fn remove_all(pins: &Pins) -> Result<(), ApplyError> {
    for name in PROGRAMS {
        let path = pins.link(name);
        if !path.exists() {
            continue;
        }
        // Unpinning drops the last reference to the link: the program detaches.
        let link = PinnedLink::from_pin(&path).map_err(|e| program_error(name, e))?;
        let fd_link = link.unpin().map_err(|e| ApplyError::io(&path, e))?;
        drop(fd_link);
    }
    for name in map_names::ALL.iter().chain(&map_names::RETIRED) {
        let path = pins.map(name);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| ApplyError::io(&path, e))?;
        }
    }
    for dir in [&pins.root, &pins.bpffs] {
        if dir.exists() {
            // Only removes empty folders: anything else someone pinned here stays.
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(())
}
