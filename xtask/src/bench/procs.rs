//! Processes the harness starts: pinned to a CPU, optionally inside a cgroup, killed
//! by PID when the harness ends (also on error), with their CPU time and peak RSS.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// CPU for balancers and backends; the load generator gets the other one.
pub const SERVER_CPU: &str = "0";
pub const CLIENT_CPU: &str = "1";

/// Children killed when dropped.
#[derive(Default)]
pub struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    /// Starts `cmd` pinned to `cpu` (and inside `cgroup`), remembering it by `name`.
    pub fn spawn(
        &mut self,
        name: &str,
        cpu: &str,
        cgroup: Option<&Path>,
        program: &str,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let mut cmd = pinned(cpu, program, args);
        if let Some(cg) = cgroup {
            lb::datapath::cgroup::spawn_into(&mut cmd, cg);
        }
        let log = std::fs::File::create(log)?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name} ({program}): {e}"))?;
        let pid = child.id();
        self.children.push((name.to_string(), child));
        Ok(pid)
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            // SAFETY: SIGTERM to a child we started, by its PID.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `taskset -c CPU program args...`
pub fn pinned(cpu: &str, program: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu, program])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// User + system CPU time of a process (and its threads), in microseconds.
pub fn cpu_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ticks * 1_000_000 / hz
}

/// Busy CPU time of the whole machine (user, nice, system, irq, softirq over all
/// CPUs: client, balancer, backends and the kernel work done for them), in µs.
pub fn machine_busy_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum();
    busy * 1_000_000 / hz
}

/// A `/proc/PID/status` field in KiB (VmHWM: peak RSS, VmRSS: current).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Fails if something already accepts connections on `addr`, before the harness
/// starts its own server there.
pub fn ensure_free(addr: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::net::TcpStream::connect(addr).is_err(),
        "{addr} already accepts connections before the harness started its server there: \
         a process left from an earlier run? Stop it and rerun"
    );
    Ok(())
}

/// Waits until `addr` accepts connections.
pub fn wait_listening(addr: &str, what: &str) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{what} did not listen on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}
