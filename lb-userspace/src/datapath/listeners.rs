//! Listeners that were already open inside the cgroup when lb attached.
//!
//! `sock_ops` learns a local backend at its `listen()` (TCP_LISTEN_CB), but pods that
//! were running before lb attached (a DaemonSet starting on a busy node, a restarted
//! daemon with fresh pins) listened before any program could see it. The daemon finds
//! those once at start: the processes of the cgroup, their socket inodes, and the
//! LISTEN entries of their network namespace's `/proc/<pid>/net/tcp`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use lb_common::SockAddr4;

/// The IPv4 addresses listened on by processes inside `cgroup` (and its children).
/// Unreadable processes (gone meanwhile) are skipped.
pub fn inside(cgroup: &Path) -> std::io::Result<BTreeSet<SockAddr4>> {
    let mut pids = Vec::new();
    collect_pids(cgroup, &mut pids)?;
    let mut found = BTreeSet::new();
    // One read of a network namespace's table serves all its processes.
    let mut tables: HashMap<String, Vec<(SockAddr4, u64)>> = HashMap::new();
    for pid in pids {
        let proc = Path::new("/proc").join(pid.to_string());
        let Ok(netns) = std::fs::read_link(proc.join("ns/net")) else {
            continue;
        };
        let netns = netns.to_string_lossy().into_owned();
        if !tables.contains_key(&netns) {
            let text = std::fs::read_to_string(proc.join("net/tcp")).unwrap_or_default();
            tables.insert(netns.clone(), parse_listeners(&text));
        }
        let table = &tables[&netns];
        if table.is_empty() {
            continue;
        }
        let inodes = socket_inodes(&proc);
        found.extend(
            table
                .iter()
                .filter(|(_, inode)| inodes.contains(inode))
                .map(|(addr, _)| *addr),
        );
    }
    Ok(found)
}

fn collect_pids(cgroup: &Path, pids: &mut Vec<u32>) -> std::io::Result<()> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs"))?;
    pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    for entry in std::fs::read_dir(cgroup)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            // A child removed meanwhile is not an error.
            let _ = collect_pids(&entry.path(), pids);
        }
    }
    Ok(())
}

/// Inodes of the sockets a process holds (`/proc/<pid>/fd/*` -> `socket:[N]`).
fn socket_inodes(proc: &Path) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(proc.join("fd")) else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The LISTEN entries of a `/proc/net/tcp` table: (address, socket inode).
/// Lines look like `0: 0100007F:1F90 00000000:0000 0A ... <uid> <timeout> <inode> ...`,
/// the address in host byte order hex (little-endian here) and the port in hex.
pub fn parse_listeners(text: &str) -> Vec<(SockAddr4, u64)> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != LISTEN {
                return None;
            }
            let (ip, port) = f[1].split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = f[9].parse().ok()?;
            // The kernel prints the __be32 as a host integer: its bytes in memory
            // order are the address in network order.
            Some((SockAddr4::new(ip.to_ne_bytes(), port), inode))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_entries_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0200007F:4E20 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
   2: 0100007F:9C40 0200007F:4E20 01 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 20 4 30 10 -1
";
        let got = parse_listeners(table);
        if cfg!(target_endian = "little") {
            assert_eq!(
                got,
                vec![
                    (SockAddr4::new([127, 0, 0, 2], 20000), 4242),
                    (SockAddr4::new([0, 0, 0, 0], 8080), 77),
                ]
            );
        }
        assert!(parse_listeners("header only\n").is_empty());
    }
}
