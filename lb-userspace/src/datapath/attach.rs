//! Loading and attaching the programs, pinning maps and links, replacing the programs
//! of an older build in place, and removing everything.
//!
//! Links are pinned so the datapath keeps steering while the daemon is stopped,
//! killed or upgraded. A restart never detaches first (that would leave a window
//! without `connect4`): links already pinned keep running, and a link whose program
//! differs from this build's (its tag) is switched to the new program with
//! `BPF_LINK_UPDATE`, atomically, keeping the maps. A build with another map layout
//! pins under another folder ([`Pins`]): it attaches beside the old programs, and the
//! daemon removes the old layout ([`remove_all`]) once its own plan is applied.

use std::fs::File;
use std::path::Path;

use aya::maps::SockHash;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, Program, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use lb_common::{SockKey, layout as contract, map_names};

use super::layout::{self, Hook, ProgramDef};
use super::{DatapathError, Pins, sys};

/// What [`ensure_attached`] did, program by program.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Attached {
    /// Programs attached and pinned now (every one on a fresh start).
    pub attached: Vec<String>,
    /// Pinned links that ran another build's program and now run this build's.
    pub replaced: Vec<String>,
    /// Pinned links already running this build's program.
    pub kept: Vec<String>,
}

/// Makes sure this build's programs are attached to `cgroup` (the north-south ones to
/// the interfaces of `north_south`) and pinned under `pins` (the object is `object`,
/// normally [`super::object::bytes`]).
pub fn ensure_attached(
    pins: &Pins,
    cgroup: &Path,
    north_south: &super::north_south::NorthSouth,
    object: &[u8],
) -> Result<Attached, DatapathError> {
    let defs = layout::of_object(object)?;
    layout::check_object(&defs).map_err(|e| DatapathError::Load(e.into()))?;
    super::pins::ensure_bpffs(&pins.root)
        .map_err(|e| DatapathError::io(Path::new(super::pins::BPFFS_MOUNT), e))?;
    std::fs::create_dir_all(&pins.root).map_err(|e| DatapathError::io(&pins.root, e))?;
    // Never adopt a pinned map of another shape (aya would reuse it by name).
    for spec in &contract::MAPS {
        let path = pins.map(spec.name);
        if path.exists() {
            layout::check_pinned(&path, spec)?;
        }
    }
    // Maps declared pin-by-name are reused from `pins.root` when pinned, else created
    // and pinned there.
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.root)
        .load(object)
        .map_err(|e| DatapathError::Load(Box::new(e)))?;
    let cgroup_file = File::open(cgroup).map_err(|e| DatapathError::io(cgroup, e))?;
    let mut done = Attached::default();
    for def in &defs.programs {
        if matches!(def.hook, Hook::Xdp | Hook::TcEgress) {
            continue;
        }
        let path = pins.link(&def.name);
        if path.exists() {
            if replace_if_changed(&mut ebpf, def, &path)? {
                done.replaced.push(def.name.clone());
            } else {
                done.kept.push(def.name.clone());
            }
            continue;
        }
        let link = attach_one(&mut ebpf, def, &cgroup_file)?;
        link.pin(&path).map_err(|e| DatapathError::Pin {
            path: path.clone(),
            source: Box::new(e),
        })?;
        done.attached.push(def.name.clone());
    }
    let (attached, replaced) =
        super::north_south::ensure(&mut ebpf, &defs.programs, pins, north_south)?;
    done.attached.extend(attached);
    done.replaced.extend(replaced);
    Ok(done)
}

pub(super) fn program_error(
    program: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> DatapathError {
    DatapathError::Program {
        program: program.to_string(),
        source: Box::new(e),
    }
}

/// `map_err(failed(name))`: any error of program `name`.
pub(super) fn failed<E: std::error::Error + Send + Sync + 'static>(
    name: &str,
) -> impl Fn(E) -> DatapathError + '_ {
    move |e| program_error(name, e)
}

/// Loads this build's `def` and, if its tag differs from the program the pinned link
/// at `path` runs, switches the link to it. Returns whether it switched.
pub(super) fn replace_if_changed(
    ebpf: &mut Ebpf,
    def: &ProgramDef,
    path: &Path,
) -> Result<bool, DatapathError> {
    let name = def.name.as_str();
    let running = FdLink::from(PinnedLink::from_pin(path).map_err(failed(name))?)
        .info()
        .map_err(failed(name))?
        .program_id();
    let running_tag = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == running)
        .map(|p| p.tag());
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| program_error(name, std::io::Error::other("not in the object")))?;
    if prog.fd().is_err() {
        load(prog).map_err(failed(name))?;
    }
    let new_tag = prog.info().map_err(failed(name))?.tag();
    if running_tag == Some(new_tag) {
        return Ok(false);
    }
    let link = sys::obj_get(path, false).map_err(|e| DatapathError::io(path, e))?;
    let fd = prog.fd().map_err(failed(name))?;
    sys::link_update(&link, fd).map_err(|e| DatapathError::Program {
        program: name.to_string(),
        source: format!("replacing the running program (BPF_LINK_UPDATE): {e}").into(),
    })?;
    tracing::info!(
        program = name,
        old_tag = %running_tag.map_or("?".into(), |t| format!("{t:016x}")),
        new_tag = %format!("{new_tag:016x}"),
        "replaced the running program in place"
    );
    Ok(true)
}

/// Loads a program of one of the kinds lb attaches.
fn load(prog: &mut Program) -> Result<(), aya::programs::ProgramError> {
    match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::SkMsg(p) => p.load(),
        Program::Xdp(p) => p.load(),
        Program::SchedClassifier(p) => p.load(),
        _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

/// Loads and attaches one program; returns its link, ready to pin.
fn attach_one(ebpf: &mut Ebpf, def: &ProgramDef, cgroup: &File) -> Result<FdLink, DatapathError> {
    let name = def.name.as_str();
    // With bpf_link (kernel >= 5.7) the attach flags must be 0 ("Single" here): links
    // always sit beside other programs of the cgroup (Cilium's, ...) as multi-attach.
    let mode = CgroupAttachMode::Single;
    match def.hook {
        Hook::SkMsg => {
            let sock_map: SockHash<_, SockKey> = ebpf
                .map(map_names::SOCKETS)
                .ok_or(DatapathError::MissingMap(map_names::SOCKETS))?
                .try_into()
                .map_err(failed(name))?;
            let fd = sock_map
                .fd()
                .try_clone()
                .map_err(|e| DatapathError::io(Path::new(map_names::SOCKETS), e))?;
            let prog: &mut SkMsg = program(ebpf, name)?;
            prog.load().map_err(failed(name))?;
            let id = prog.attach(&fd).map_err(failed(name))?;
            FdLink::try_from(prog.take_link(id).map_err(failed(name))?).map_err(failed(name))
        }
        Hook::SockOps => {
            let prog: &mut SockOps = program(ebpf, name)?;
            prog.load().map_err(failed(name))?;
            let id = prog.attach(cgroup, mode).map_err(failed(name))?;
            FdLink::try_from(prog.take_link(id).map_err(failed(name))?).map_err(failed(name))
        }
        Hook::CgroupSockAddr => {
            let prog: &mut CgroupSockAddr = program(ebpf, name)?;
            prog.load().map_err(failed(name))?;
            let id = prog.attach(cgroup, mode).map_err(failed(name))?;
            FdLink::try_from(prog.take_link(id).map_err(failed(name))?).map_err(failed(name))
        }
        Hook::Xdp | Hook::TcEgress => unreachable!("attached per interface: north_south"),
    }
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| program_error(name, std::io::Error::other("not in the object")))?
        .try_into()
        .map_err(|e| program_error(name, e))
}

/// Detaches every program and removes every pin of the layout under `pins`
/// (idempotent): links first, so no program runs on maps being removed.
pub fn remove_all(pins: &Pins) -> Result<(), DatapathError> {
    for name in pins.linked_programs() {
        let path = pins.link(&name);
        // Unpinning drops the last reference to the link: the program detaches.
        let link = PinnedLink::from_pin(&path).map_err(|e| program_error(&name, e))?;
        drop(link.unpin().map_err(|e| DatapathError::io(&path, e))?);
    }
    pins.unmark_current();
    if let Ok(dir) = std::fs::read_dir(&pins.root) {
        for entry in dir.filter_map(Result::ok) {
            // Maps are lb's (`LB_*`); anything else someone pinned here stays.
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("LB_"))
            {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| DatapathError::io(&path, e))?;
            }
        }
    }
    for dir in [&pins.root, &pins.bpffs] {
        if dir.exists() {
            // Only removes empty folders.
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(())
}
