//! Where lb pins its maps and links: `<bpffs>/layout-<fingerprint>/`, the fingerprint
//! of the map layout ([`lb_common::layout::FINGERPRINT`]), so a build never reads
//! another layout's maps as its own. `<bpffs>/current` links to the live layout for
//! people (`bpftool map dump pinned /sys/fs/bpf/lb/current/LB_SERVICES`).

use std::path::{Path, PathBuf};

/// The symlink to the live layout's folder.
const CURRENT: &str = "current";
/// Every layout folder's name starts so.
const LAYOUT_PREFIX: &str = "layout-";
/// The folder of layouts before fingerprints (`v2`), still found on upgraded nodes.
const LEGACY_PREFIX: &str = "v";

/// Pin layout under one bpffs directory.
#[derive(Debug, Clone)]
pub struct Pins {
    pub bpffs: PathBuf,
    pub root: PathBuf,
}

impl Pins {
    /// This build's layout under `bpffs`.
    pub fn new(bpffs: &Path) -> Self {
        Self::at(bpffs, lb_common::layout::FINGERPRINT)
    }

    /// The layout with fingerprint `fingerprint` under `bpffs`.
    pub fn at(bpffs: &Path, fingerprint: u32) -> Self {
        Self {
            bpffs: bpffs.to_path_buf(),
            root: bpffs.join(format!("{LAYOUT_PREFIX}{fingerprint:08x}")),
        }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.root.join(format!("link_{program}"))
    }

    /// The programs whose links are pinned here.
    pub fn linked_programs(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<String> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("link_")
                    .map(String::from)
            })
            .collect();
        out.sort();
        out
    }

    /// Whether anything of lb is pinned here.
    pub fn any(&self) -> bool {
        self.root.exists()
    }

    /// Other layouts of lb pinned under the same bpffs folder (older or newer builds):
    /// folders holding links, whose programs may still be attached.
    pub fn other_layouts(&self) -> Vec<Pins> {
        let Ok(dir) = std::fs::read_dir(&self.bpffs) else {
            return Vec::new();
        };
        let mut out: Vec<Pins> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter(|p| *p != self.root && is_layout_dir(p))
            .map(|root| Pins {
                bpffs: self.bpffs.clone(),
                root,
            })
            .filter(|p| !p.linked_programs().is_empty())
            .collect();
        out.sort_by(|a, b| a.root.cmp(&b.root));
        out
    }

    /// Points `<bpffs>/current` at this layout (a new symlink renamed over the old
    /// one, so readers never find none).
    pub fn mark_current(&self) -> std::io::Result<()> {
        let Some(name) = self.root.file_name() else {
            return Ok(());
        };
        let link = self.bpffs.join(CURRENT);
        if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(name)) {
            return Ok(());
        }
        // bpffs refuses names with a dot.
        let tmp = self.bpffs.join(format!("{CURRENT}-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(name, &tmp)?;
        std::fs::rename(&tmp, &link)
    }

    /// Removes `<bpffs>/current` if it points at this layout.
    pub fn unmark_current(&self) {
        let link = self.bpffs.join(CURRENT);
        if let (Ok(t), Some(name)) = (std::fs::read_link(&link), self.root.file_name())
            && t == Path::new(name)
        {
            let _ = std::fs::remove_file(&link);
        }
    }
}

fn is_layout_dir(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with(LAYOUT_PREFIX)
        || name
            .strip_prefix(LEGACY_PREFIX)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// bpffs's `f_type` (statfs).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted by convention.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `dir` can hold pins: mounts bpffs at /sys/fs/bpf when `dir` is under it
/// and nothing is mounted there yet (as Cilium's agent does on a bare node).
pub fn ensure_bpffs(dir: &Path) -> std::io::Result<()> {
    let mount = Path::new(BPFFS_MOUNT);
    if !dir.starts_with(mount) || is_bpffs(mount) {
        return Ok(());
    }
    std::fs::create_dir_all(mount)?;
    let (src, target, fstype) = (c"bpf", std::ffi::CString::new(BPFFS_MOUNT)?, c"bpf");
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    tracing::info!("mounted bpffs at {BPFFS_MOUNT}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_layouts_are_folders_with_links_but_this_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let pins = Pins::at(dir.path(), 0xabcd);
        for (folder, link) in [
            ("layout-0000abcd", true),
            ("layout-00001234", true),
            ("v2", true),
            ("v", true),
            ("layout-00005678", false),
            ("elsewhere", true),
        ] {
            std::fs::create_dir(dir.path().join(folder)).expect("mkdir");
            if link {
                std::fs::write(dir.path().join(folder).join("link_lb_connect4"), "").expect("link");
            }
        }
        let found: Vec<String> = pins
            .other_layouts()
            .iter()
            .map(|p| p.root.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, ["layout-00001234", "v2"]);
        assert_eq!(pins.root, dir.path().join("layout-0000abcd"));
        assert_eq!(pins.linked_programs(), ["lb_connect4"]);
        pins.mark_current().expect("mark");
        assert_eq!(
            std::fs::read_link(dir.path().join("current")).expect("link"),
            Path::new("layout-0000abcd")
        );
        Pins::at(dir.path(), 0x1234).mark_current().expect("mark");
        pins.unmark_current();
        assert!(dir.path().join("current").exists(), "not ours: stays");
    }
}
