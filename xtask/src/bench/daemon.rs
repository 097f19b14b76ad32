//! An `lb run` for the control-plane measurements: on a cgroup and a bpffs directory
//! of its own, pinned to the server's CPU like every balancer here, stopped (and its
//! datapath removed) when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lb::datapath::cgroup::ChildCgroup;
use lb::datapath::{Pins, StatusView};
use lb_common::SockAddr4;

use super::{lb_bin, procs};

pub struct Spawned {
    ps: procs::Procs,
    bpffs: PathBuf,
    _cgroup: ChildCgroup,
    /// `lb run`: the keeper, which started the daemon.
    pid: u32,
    pub log: PathBuf,
    /// From the start to the first "configuration applied" (ms, polled every 5 ms).
    pub ready_ms: f64,
}

impl Spawned {
    /// Starts `lb run` with `args` (where the configuration comes from, and more) and
    /// waits for its first "configuration applied".
    pub fn start(name: &str, work: &Path, args: &[String]) -> anyhow::Result<Self> {
        let id = std::process::id();
        let cgroup = ChildCgroup::create(&format!("lb-bench-{name}-{id}"))?;
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/lb-bench-{name}-{id}"));
        let log = work.join(format!("{name}.log"));
        let own: Vec<String> = [
            "run",
            "--cgroup",
            &cgroup.path.to_string_lossy(),
            "--bpffs",
            &bpffs.to_string_lossy(),
            "--proxy-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--access-log",
            "off",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(args.iter().cloned())
        .collect();
        let mut ps = procs::Procs::default();
        let started = Instant::now();
        let pid = ps.spawn(
            "lb",
            procs::SERVER_CPU,
            None,
            &lb_bin().to_string_lossy(),
            &own,
            &log,
        )?;
        let mut d = Spawned {
            ps,
            bpffs,
            _cgroup: cgroup,
            pid,
            log,
            ready_ms: f64::NAN,
        };
        wait_for_log(&d.log, "configuration applied", Duration::from_secs(300))?;
        d.ready_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(d)
    }

    /// The first apply's own `took_ms` (its read, validate, compile and apply).
    pub fn first_apply_ms(&self) -> f64 {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        logged_ms(&log, "took_ms")
            .first()
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// The daemon's and the keeper's RSS (KiB), once idle: past the 2 s after an apply
    /// when the daemon hands freed memory back.
    pub fn idle_rss(&self) -> (u64, u64) {
        std::thread::sleep(Duration::from_secs(3));
        let keeper = procs::status_kib(self.pid, "VmRSS:");
        let daemon = super::with_children(self.pid)
            .skip(1)
            .map(|p| procs::status_kib(p, "VmRSS:"))
            .sum();
        (daemon, keeper)
    }

    /// The pinned maps, to see changes go live.
    pub fn maps(&self) -> anyhow::Result<StatusView> {
        Ok(StatusView::open(&Pins::new(&self.bpffs))?)
    }

    /// How many "configuration applied" the daemon has logged.
    pub fn applies(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |l| l.matches("configuration applied").count())
    }

    /// How long the service at `key` takes to show a new revision in the kernel
    /// after `change` (ms; polled every 0.2 ms).
    pub fn until_live(
        maps: &StatusView,
        key: &SockAddr4,
        change: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<f64> {
        let revision = || maps.service(key).map(|s| s.revision);
        let before = revision();
        let t = Instant::now();
        change()?;
        until_changed(|| revision() != before, t)
    }
}

/// The pinned service entry's key for `addr`:80 (how a change is seen live).
pub fn service_key(addr: &str) -> anyhow::Result<SockAddr4> {
    Ok(SockAddr4::new(
        addr.parse::<std::net::Ipv4Addr>()?.octets(),
        80,
    ))
}

/// Polls `changed` every 0.2 ms; ms since `t` when it says so (an error past 30 s).
pub fn until_changed(mut changed: impl FnMut() -> bool, t: Instant) -> anyhow::Result<f64> {
    while !changed() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(30),
            "a change never went live"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

impl Drop for Spawned {
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.ps));
        let _ = std::process::Command::new(lb_bin())
            .args(["down", "--bpffs"])
            .arg(&self.bpffs)
            .output();
    }
}

pub fn wait_for_log(log: &Path, needle: &str, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(log).is_ok_and(|s| s.contains(needle)) {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "{} never logged {needle:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every value of `field=` on the daemon's "configuration applied" lines, in order.
pub fn logged_ms(log: &str, field: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("configuration applied"))
        .filter_map(|l| {
            l.split(&format!("{field}="))
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Median and max of `v` (sorted in place).
pub fn median_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}
