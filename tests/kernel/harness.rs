//! Kernel test harness: every test gets its own child cgroup, bpffs folder, config
//! folder, addresses and ports, and a guard that kills what it started, detaches and
//! unpins, and removes the cgroup — also when the test panics.
//!
//! Needs root and a BPF-capable kernel. A test that cannot set up fails loudly; it
//! never passes by skipping.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lb::datapath::cgroup::{ChildCgroup, spawn_into};
use serde_json::Value;

/// Kernel tests share the kernel: one at a time, whatever the test runner does.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn lb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lb")
}

pub struct Env {
    pub name: String,
    pub cgroup: ChildCgroup,
    pub bpffs: PathBuf,
    pub config: PathBuf,
    pub work: PathBuf,
    /// Where `lb run` reads its configuration: `--config <config>` unless a test says
    /// otherwise (`--kubeconfig ...` for the Kubernetes source).
    pub source_args: Vec<String>,
    /// Where the daemon's proxy and admin listen (free loopback ports unless a test
    /// says otherwise: a node's address, for pods).
    pub listen_args: Vec<String>,
    /// A command the daemon runs under (`ip netns exec <node>`), if any.
    pub daemon_prefix: Vec<String>,
    daemons: Vec<Child>,
    others: Vec<Child>,
    last_log: Option<PathBuf>,
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    /// A fresh environment for test `name`.
    pub fn new(name: &str) -> Env {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "kernel tests need root (they attach eBPF programs)"
        );
        let id = format!("lb-test-{name}-{}", std::process::id());
        let cgroup =
            ChildCgroup::create(&id).expect("creating the test cgroup (is cgroup2 mounted?)");
        let work = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&work);
        let config = work.join("config");
        std::fs::create_dir_all(&config).expect("config folder");
        Env {
            name: name.to_string(),
            cgroup,
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{id}")),
            source_args: vec!["--config".into(), config.display().to_string()],
            listen_args: [
                "--proxy-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ]
            .map(String::from)
            .to_vec(),
            daemon_prefix: Vec::new(),
            config,
            work,
            daemons: Vec::new(),
            others: Vec::new(),
            last_log: None,
            _serial: serial,
        }
    }

    /// Writes a config file atomically (write + rename), as an editor or kubectl would.
    pub fn write_config(&self, file: &str, text: &str) {
        let tmp = self.work.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.config.join(file)).expect("rename config");
    }

    /// Starts `lb run` (inside the attached cgroup if `inside`), waits for the first apply.
    pub fn start_daemon(&mut self, inside: bool) -> u32 {
        self.start_daemon_with(inside, &[])
    }

    /// `start_daemon` with extra `lb run` arguments. Proxy and admin listen on free
    /// loopback ports (never lb's defaults); `admin` tells where.
    pub fn start_daemon_with(&mut self, inside: bool, extra: &[&str]) -> u32 {
        self.start_daemon_env(inside, extra, &[])
    }

    /// `start_daemon_with` and environment variables for the daemon.
    pub fn start_daemon_env(
        &mut self,
        inside: bool,
        extra: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> u32 {
        let before = self.applied_at();
        let log_path = self.work.join(format!("daemon-{}.log", self.daemons.len()));
        let log = std::fs::File::create(&log_path).expect("log");
        let mut cmd = match self.daemon_prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(lb_bin());
                c
            }
            None => Command::new(lb_bin()),
        };
        cmd.arg("run")
            .args(&self.source_args)
            .arg("--cgroup")
            .arg(&self.cgroup.path)
            .arg("--bpffs")
            .arg(&self.bpffs);
        cmd.args(&self.listen_args)
            .arg("--access-log")
            .arg(self.work.join("access.log"));
        cmd.args(extra);
        cmd.envs(envs.iter().copied());
        cmd.stdout(Stdio::null()).stderr(log);
        self.last_log = Some(log_path);
        if inside {
            spawn_into(&mut cmd, &self.cgroup.path);
        }
        let child = cmd.spawn().expect("spawn lb run");
        let pid = child.id();
        self.daemons.push(child);
        let start = Instant::now();
        loop {
            let now = self.applied_at();
            if now.is_some() && now != before {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "lb run did not apply its config within 20 s; its log:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pid
    }

    /// The process id of the last `lb run` started (the keeper, unless --no-keeper).
    pub fn daemon_pid(&self) -> u32 {
        self.daemons.last().expect("a daemon was started").id()
    }

    /// The process that serves: the daemon the keeper started (or `lb run` itself
    /// with --no-keeper).
    pub fn serving_pid(&self) -> u32 {
        let pid = self.daemon_pid();
        children(pid).first().copied().unwrap_or(pid)
    }

    /// The running daemon's admin listener (from its log).
    pub fn admin(&self) -> SocketAddr {
        self.logged_addr("admin=")
    }

    /// The running daemon's proxy listener (from its log).
    pub fn proxy(&self) -> SocketAddr {
        self.logged_addr("proxy=")
    }

    /// One `GET path` for Host `backend-service` straight to the proxy, in HTTP
    /// `version` with `extra` header lines, closing after it: (what came back until
    /// the close, how long it took).
    pub fn get_once(&self, version: &str, path: &str, extra: &str) -> (String, Duration) {
        use std::io::{Read, Write};
        let t = Instant::now();
        let mut s = TcpStream::connect(self.proxy()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            s,
            "GET {path} {version}\r\nhost: backend-service\r\n{extra}connection: close\r\n\r\n"
        )
        .expect("write");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
    }

    /// What the last daemon started has logged so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.last_log.as_ref().expect("a daemon was started"))
            .expect("daemon log")
    }

    fn logged_addr(&self, key: &str) -> SocketAddr {
        let log = self.daemon_log();
        let at = log.find(key).expect("address in the daemon log") + key.len();
        log[at..]
            .split_whitespace()
            .next()
            .expect("address")
            .parse()
            .expect("address")
    }

    /// GET on the admin listener; returns the body.
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(self.admin()).expect("admin connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    /// Sends SIGTERM to the running daemons and waits for them.
    pub fn stop_daemons(&mut self) {
        for mut d in self.daemons.drain(..) {
            // SAFETY: kill(2) of a child this test started.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let _ = d.wait();
        }
    }

    /// SIGKILLs every daemon this test started.
    pub fn kill_daemons(&mut self) {
        for mut d in self.daemons.drain(..) {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// Starts a test backend answering with `name` on each address; returns its pid
    /// (for `stop_backend`).
    pub fn backend(&mut self, name: &str, addrs: &[SocketAddr]) -> u32 {
        self.backend_at(name, addrs, false)
    }

    /// Stops a backend this test started (its addresses refuse from then on).
    pub fn stop_backend(&mut self, pid: u32) {
        if let Some(i) = self.others.iter().position(|c| c.id() == pid) {
            let mut c = self.others.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A backend, inside the attached cgroup if `inside` (as a local pod on a node).
    pub fn backend_at(&mut self, name: &str, addrs: &[SocketAddr], inside: bool) -> u32 {
        let mut cmd = Command::new(lb_bin());
        if inside {
            spawn_into(&mut cmd, &self.cgroup.path);
        }
        cmd.args(["backend", "--name", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for a in addrs {
            cmd.arg("--listen").arg(a.to_string());
        }
        let child = cmd.spawn().expect("spawn backend");
        let pid = child.id();
        self.others.push(child);
        for a in addrs {
            wait_for(Duration::from_secs(5), "backend to listen", || {
                TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()
            });
        }
        pid
    }

    fn probe_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(lb_bin());
        cmd.arg("probe").args(args).arg("--json");
        spawn_into(&mut cmd, &self.cgroup.path);
        cmd
    }

    /// Runs the test client inside the cgroup to completion; returns its summary.
    pub fn probe(&self, args: &[&str]) -> Value {
        run_probe(self.probe_cmd(args))
    }

    /// `count` requests on one keep-alive connection to `to` (plus `extra` probe flags).
    pub fn probe_keep_alive(&self, to: &str, count: u64, extra: &[&str]) -> Value {
        let count = count.to_string();
        let mut args = vec!["--to", to, "--count", &count, "--keep-alive"];
        args.extend_from_slice(extra);
        self.probe(&args)
    }

    /// Starts the test client in the background; `stop_probe` ends it.
    pub fn spawn_probe(&self, args: &[&str]) -> Child {
        spawn_probe(self.probe_cmd(args))
    }

    /// A client connecting to `to` every millisecond in the background (at most
    /// `count` connects and `for_ms`), until `stop` ends it.
    pub fn spawn_connect_loop(&self, to: &str, count: u32, for_ms: u32) -> Client {
        let (count, for_ms) = (count.to_string(), for_ms.to_string());
        self.spawn_client(
            "connect-loop",
            &[
                "--to",
                to,
                "--count",
                &count,
                "--every-ms",
                "1",
                "--for-ms",
                &for_ms,
            ],
        )
    }

    /// The test client with `args` in the background, until its `stop` (`name` names
    /// its stop file; clients running together need different names).
    pub fn spawn_client(&self, name: &str, args: &[&str]) -> Client {
        let stop = self.work.join(format!("stop-{name}"));
        let _ = std::fs::remove_file(&stop);
        let mut all = args.to_vec();
        all.extend(["--until-file", stop.to_str().expect("utf-8")]);
        Client {
            child: self.spawn_probe(&all),
            stop,
        }
    }

    /// lb's programs are attached to the test cgroup once each (no second set left by
    /// a restart or an upgrade).
    pub fn assert_one_set_attached(&self) {
        let progs = self.attached_programs();
        for p in ["lb_connect4", "lb_getpeername4", "lb_sockops"] {
            assert_eq!(
                progs.iter().filter(|l| l.contains(p)).count(),
                1,
                "{p} attached once, got:\n{}",
                progs.join("\n")
            );
        }
    }

    /// `lb status --json`, or Null when nothing is pinned yet.
    pub fn status(&self) -> Value {
        // The running daemon's admin listener (never lb's default); none: a port
        // nothing listens on.
        let admin = self
            .last_log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .filter(|log| log.contains("admin="))
            .map_or_else(|| "127.0.0.1:9".to_string(), |_| self.admin().to_string());
        let out = Command::new(lb_bin())
            .args(["status", "--json", "--admin", &admin, "--bpffs"])
            .arg(&self.bpffs)
            .output()
            .expect("lb status");
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    pub fn applied_at(&self) -> Option<String> {
        self.status()["config"]["applied_at"]
            .as_str()
            .map(str::to_string)
    }

    /// Weight per subset name of the service at `address`.
    pub fn weights(&self, address: &str) -> Vec<(String, u64)> {
        let s = self.status();
        let svc = s["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["address"] == address)
            .cloned()
            .unwrap_or(Value::Null);
        svc["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                (
                    x["name"].as_str().unwrap_or("").to_string(),
                    x["weight"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// `bpftool cgroup tree` lines of the test cgroup naming lb programs.
    pub fn attached_programs(&self) -> Vec<String> {
        let out = Command::new("bpftool")
            .args(["cgroup", "tree"])
            .arg(&self.cgroup.path)
            .output()
            .expect("bpftool (apt install bpftool)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("lb_"))
            .map(str::to_string)
            .collect()
    }
}

/// A background connect loop (`Env::spawn_connect_loop`).
/// A test client running in the background.
pub struct Client {
    child: Child,
    stop: PathBuf,
}

impl Client {
    /// Ends the client; its summary.
    pub fn stop(self) -> Value {
        stop_probe(self.child, &self.stop)
    }
}

/// Runs a test client (`lb probe ... --json`) to completion; returns its summary.
pub fn run_probe(mut cmd: Command) -> Value {
    summary(cmd.output().expect("run probe"))
}

/// A finished probe's JSON summary; it must have succeeded.
fn summary(out: std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe json")
}

/// Starts a test client in the background; [`stop_probe`] ends it.
pub fn spawn_probe(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn probe")
}

/// Stops a background probe started with `--until-file` and returns its summary.
pub fn stop_probe(child: Child, until_file: &Path) -> Value {
    std::fs::write(until_file, b"stop").expect("stop file");
    summary(child.wait_with_output().expect("probe output"))
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:` resident now, `VmHWM:` its peak).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("process status")
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The children of process `pid` (a keeper's daemons).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Polls `cond` until true or panics after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a probe's JSON-lines log.
pub fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("probe log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("log line"))
        .collect()
}

/// RFC 3339 (as `lb status` prints it) to unix milliseconds.
pub fn unix_ms(rfc3339: &str) -> u64 {
    let t = humantime::parse_rfc3339(rfc3339).expect("rfc3339");
    t.duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_millis() as u64
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_daemons();
        for mut c in self.others.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let down = Command::new(lb_bin())
            .args(["down", "--bpffs"])
            .arg(&self.bpffs)
            .arg("--cgroup")
            .arg(&self.cgroup.path)
            .output();
        if !matches!(&down, Ok(o) if o.status.success()) {
            eprintln!("{}: lb down failed: {down:?}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.work);
        // The cgroup guard (a field) kills leftovers and removes the folder next.
    }
}

/// The seed's configuration with the service and backends on the given addresses.
pub fn seed_config(service: &str, port: u16, v0: &str, v1: &str, w0: u32, w1: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend-service, namespace: default}}
spec:
  hosts: [backend-service]
  addresses: [{service}]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: {v0}, labels: {{app: backend, version: v0}}}}
  - {{address: {v1}, labels: {{app: backend, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend-dr, namespace: default}}
spec:
  host: backend-service
  subsets:
  - {{name: v0, labels: {{version: v0}}}}
  - {{name: v1, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend-vs, namespace: default}}
spec:
  hosts: [backend-service]
  http:
  - route:
    - {{destination: {{host: backend-service, subset: v0}}, weight: {w0}}}
    - {{destination: {{host: backend-service, subset: v1}}, weight: {w1}}}
"#
    )
}
