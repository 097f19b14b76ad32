//! cgroup2 helpers: where the unified hierarchy is mounted.

use std::path::PathBuf;

/// The cgroup2 mount point from /proc/mounts (on a hybrid layout it is not
/// /sys/fs/cgroup itself).
pub fn cgroup2_root() -> std::io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no cgroup2 mount in /proc/mounts",
            )
        })
}

/// Whether this process runs inside `cgroup` (or one of its descendants): its own
/// sockets then pass through the programs attached there.
pub fn contains_self(cgroup: &std::path::Path) -> std::io::Result<bool> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    // cgroup2's line is "0::/path"; on a hybrid layout it sits among v1 lines.
    let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Ok(false);
    };
    let own = cgroup2_root()?.join(rel.trim_start_matches('/'));
    let target = cgroup.canonicalize()?;
    Ok(own.canonicalize().unwrap_or(own).starts_with(target))
}

/// Makes a spawned command join `cgroup` before it runs (the caller itself stays
/// where it is: moving the caller would move every thread of it).
pub fn spawn_into(cmd: &mut std::process::Command, cgroup: &std::path::Path) {
    use std::os::unix::process::CommandExt as _;
    let procs = cgroup.join("cgroup.procs");
    // SAFETY: the closure only writes a file between fork and exec.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, b"0"));
    }
}

/// A child cgroup that is removed (after its processes are gone) when dropped.
pub struct ChildCgroup {
    pub path: PathBuf,
}

impl ChildCgroup {
    /// Creates `<cgroup2 root>/<name>`.
    pub fn create(name: &str) -> std::io::Result<Self> {
        Self::create_in(&cgroup2_root()?, name)
    }

    /// Creates `<parent>/<name>` (a pod's cgroup under a node's, in the tests).
    pub fn create_in(parent: &std::path::Path, name: &str) -> std::io::Result<Self> {
        let path = parent.join(name);
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        // Processes still inside keep the folder busy: kill what is left, then retry.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            if let Ok(pids) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: plain kill(2) of a process inside our own test cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
