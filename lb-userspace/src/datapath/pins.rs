//! Where lb pins its maps and links: `<bpffs>/v<LAYOUT_VERSION>/`, so an upgrade with a
//! new map layout never reads an old layout as new.

use std::path::{Path, PathBuf};

/// The programs lb attaches, by program name; each link is pinned as `link_<name>`.
pub const PROGRAMS: [&str; 4] = ["lb_connect4", "lb_getpeername4", "lb_sockops", "lb_sk_msg"];

/// Pin layout under one bpffs directory.
#[derive(Debug, Clone)]
pub struct Pins {
    pub bpffs: PathBuf,
    pub root: PathBuf,
}

impl Pins {
    pub fn new(bpffs: &Path) -> Self {
        Self {
            bpffs: bpffs.to_path_buf(),
            root: bpffs.join(format!("v{}", lb_common::LAYOUT_VERSION)),
        }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.root.join(format!("link_{program}"))
    }

    /// Whether every program's link is pinned (the datapath is live).
    pub fn all_links_pinned(&self) -> bool {
        PROGRAMS.iter().all(|p| self.link(p).exists())
    }

    /// Whether anything of lb is pinned here.
    pub fn any(&self) -> bool {
        self.root.exists()
    }
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
