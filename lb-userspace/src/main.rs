//! The `lb` command line. Errors surface here (anyhow) with their context.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb::datapath::{Pins, attach, cgroup};

const DEFAULT_BPFFS: &str = "/sys/fs/bpf/lb";

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "Istio traffic rules enforced on a Linux node: weights in the kernel at connect(), request rules in lb's proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// How the proxy reads requests (both engines).
#[derive(clap::Args)]
struct FrontArgs {
    /// Header fields a request head may carry (more: 431).
    #[arg(long, default_value_t = 100)]
    max_request_headers: usize,
    /// KiB a request head (request line and header fields) may take (more: 431).
    #[arg(long, default_value_t = 64)]
    max_request_headers_kb: usize,
    /// Istio's pathNormalization: NONE, BASE, MERGE_SLASHES or
    /// DECODE_AND_MERGE_SLASHES. The normalised path is matched and forwarded.
    #[arg(long, default_value = "BASE")]
    path_normalization: lb::route::path::Normalization,
}

/// How long the proxy waits and how much it holds (README: "Timeouts and limits").
#[derive(clap::Args)]
struct BoundArgs {
    /// A connection waiting for a request to begin (new, or idle between requests)
    /// closes after this (Envoy's idle_timeout). E.g. `1h`, `90s`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A request head must be whole within this of its first byte: past it 408.
    /// E.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_head_timeout: Duration,
    /// A request whose bytes stop moving (the client's body, the upstream's answer,
    /// the client reading it) ends after this: 408 or 504 if nothing was answered yet
    /// (Envoy's stream_idle_timeout).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    stream_idle_timeout: Duration,
    /// Connecting to an endpoint (Istio's connectTimeout).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Client connections held at once; at the bound the one idle longest is closed to
    /// make room, or the new one refused (503) when all are busy [default: half the
    /// descriptor limit, which lb raises as far as allowed, less a reserve].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connects in progress to one endpoint (more: 503 at once, flag UO).
    #[arg(long, default_value_t = 1024)]
    max_pending_connects: usize,
}

impl BoundArgs {
    /// The bounds, with the descriptor limit raised for them.
    fn bounds(&self) -> anyhow::Result<lb::proxy::bounds::Bounds> {
        use lb::proxy::bounds::{Bounds, raise_descriptor_limit};
        let fds = raise_descriptor_limit().context("raising the descriptor limit")?;
        let fit = Bounds::for_descriptors(fds);
        let max_connections = self.max_connections.unwrap_or(fit);
        anyhow::ensure!(max_connections > 0, "--max-connections must be at least 1");
        if max_connections > fit {
            tracing::warn!(
                "--max-connections {max_connections}: the descriptor limit ({fds}) carries about {fit}"
            );
        }
        anyhow::ensure!(
            self.max_pending_connects > 0,
            "--max-pending-connects must be at least 1"
        );
        for (flag, d) in [
            ("--idle-timeout", self.idle_timeout),
            ("--request-head-timeout", self.request_head_timeout),
            ("--stream-idle-timeout", self.stream_idle_timeout),
            ("--connect-timeout", self.connect_timeout),
        ] {
            anyhow::ensure!(!d.is_zero(), "{flag} must be more than 0");
        }
        Ok(Bounds {
            idle: self.idle_timeout,
            head: self.request_head_timeout,
            stream_idle: self.stream_idle_timeout,
            connect: self.connect_timeout,
            max_connections,
            max_pending_connects: self.max_pending_connects,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: attach the datapath, apply the configuration (a folder of Istio
    /// YAML, the Kubernetes cluster, or both), follow its changes.
    Run {
        /// Directory of Istio YAML (ServiceEntry, DestinationRule, VirtualService).
        #[arg(long, required_unless_present_any = ["kubernetes", "kubeconfig"])]
        config: Option<PathBuf>,
        /// Read Services, EndpointSlices, Pod labels and Istio's VirtualService,
        /// DestinationRule and ServiceEntry from the cluster (in a pod: its service
        /// account; elsewhere `--kubeconfig`, `KUBECONFIG` or ~/.kube/config).
        #[arg(long)]
        kubernetes: bool,
        /// The kubeconfig to reach the cluster with (implies --kubernetes).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The cluster's DNS domain: a Service's host is name.namespace.svc.<domain>.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Absolute path of the cgroup2 directory to attach to [default: the cgroup2 root].
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// bpffs directory for lb's pinned maps and links.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// On exit, detach the programs and remove the pins (default: leave them steering).
        #[arg(long)]
        detach_on_exit: bool,
        /// Where lb's proxy listens (the L7 path); port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:15001")]
        proxy_listen: SocketAddr,
        /// Admin listener: /ready, /config_dump, /metrics; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin_listen: SocketAddr,
        /// Access log: `stdout`, `off`, or a file path.
        #[arg(long, default_value = "stdout")]
        access_log: String,
        /// Which local hops sk_msg shortcuts: `all`, `off`, or a comma list of
        /// `client` (client <-> proxy), `upstream` (proxy <-> local backend) and
        /// `kernel` (kernel-path client <-> local backend). The first two need lb
        /// inside the cgroup it attaches to. Client connections join only while their
        /// process's connections to the service carry more than one message.
        #[arg(long, default_value = "all")]
        sk_msg: lb::run::SkMsgHops,
        /// Same as `--sk-msg off`.
        #[arg(long, conflicts_with = "sk_msg")]
        no_sk_msg: bool,
        /// An interface of the node (repeat for more) whose incoming packets to a
        /// service address — a ServiceEntry address that is this interface's, a
        /// NodePort — lb splits in XDP before the stack, translating them to the picked
        /// endpoint (replies are translated back on the way out). Native XDP where the
        /// driver has it, generic otherwise (`lb status` says which). An IPv4 address
        /// names the interface that holds it (a DaemonSet's `$(NODE_IP)`).
        #[arg(long = "xdp-iface", value_name = "IFACE")]
        xdp_ifaces: Vec<String>,
        /// Force XDP's mode on the `--xdp-iface` interfaces: `native` (in the driver;
        /// an interface whose driver lacks it fails the start) or `generic` (in the
        /// stack, any interface). Default: native where the driver has it.
        #[arg(long, value_name = "MODE")]
        xdp_mode: Option<lb::datapath::north_south::XdpMode>,
        /// Bound on finishing in-flight requests at SIGTERM, in seconds.
        #[arg(long, default_value_t = 10)]
        drain_seconds: u64,
        /// Keep nothing between changes: each one reads, validates and compiles the
        /// whole configuration again (a little less memory, much slower changes).
        #[arg(long)]
        no_parse_cache: bool,
        #[command(flatten)]
        front: FrontArgs,
        #[command(flatten)]
        bounds: BoundArgs,
        /// `lean` (default): the lean HTTP/1.1 path serves the plain requests, hyper
        /// the rest; `hyper`: hyper serves every request (same answers, more CPU).
        #[arg(long, default_value = "lean", value_parser = ["lean", "hyper"])]
        http1_engine: String,
        /// Run as one process. By default `lb run` is a keeper holding the proxy's
        /// listening sockets and the daemon it starts with them, restarted at once
        /// if it dies (connects wait for it instead of losing their L7 rules); SIGHUP
        /// starts a daemon from the binary on disk and drains the old one.
        #[arg(long)]
        no_keeper: bool,
        /// With no daemon serving for this long, the keeper closes the listeners and
        /// connects take the kernel's split until one is back.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        fallback_after: Duration,
    },
    /// Explain how one request is routed, offline (the live proxy's routing code).
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// Host header.
        #[arg(long)]
        host: String,
        #[arg(long)]
        path: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// `name: value`, repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The service address the client dialled; without it routing is Host-only.
        #[arg(long)]
        to: Option<std::net::SocketAddrV4>,
        #[arg(long)]
        json: bool,
        /// As `lb run --path-normalization`.
        #[arg(long, default_value = "BASE")]
        path_normalization: lb::route::path::Normalization,
    },
    /// Print CustomResourceDefinitions for Istio's VirtualService, DestinationRule and
    /// ServiceEntry, for a cluster without Istio (`lb crds | kubectl apply -f -`).
    Crds,
    /// Check a config directory; one line per problem; exit 1 on errors.
    Validate {
        dir: PathBuf,
        /// The proxy address `lb run` will use: an endpoint there is an error (a loop).
        #[arg(long, default_value = "127.0.0.1:15001")]
        proxy_listen: SocketAddr,
        /// The admin address `lb run` will use (likewise).
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin_listen: SocketAddr,
    },
    /// Show what the pinned maps hold (works while the daemon is down).
    Status {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// The daemon's admin listener, asked what it reads its configuration from.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// Detach lb's programs and remove its pins.
    Down {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// The cgroup the programs were attached to (informational; pinned links know it).
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
    /// The seed's 90/10 split end to end on this machine, in its own cgroup; exits 1 if
    /// the observed split disagrees with the configured one.
    Demo {
        #[arg(long, default_value_t = 1000)]
        connections: u64,
    },
    /// Test client: connects repeatedly and tallies which backend answered.
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 100)]
        count: u64,
        #[arg(long, default_value_t = 0)]
        every_ms: u64,
        #[arg(long, default_value_t = 60_000)]
        for_ms: u64,
        #[arg(long)]
        keep_alive: bool,
        /// Bind each connection to this source address first.
        #[arg(long)]
        from: Option<std::net::Ipv4Addr>,
        /// Bind connection i to source port `from_port + i` (closed with a reset, so
        /// another run can reuse the same ports: the same flows again).
        #[arg(long)]
        from_port: Option<u16>,
        /// One UDP datagram per attempt, from a socket of its own (a new flow), the
        /// answering backend named by the reply.
        #[arg(long)]
        udp: bool,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        log: Option<PathBuf>,
        #[arg(long)]
        until_file: Option<PathBuf>,
        #[arg(long, default_value = "/test")]
        path: String,
        /// `name: value`, repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Send each request of this JSON-lines file once; print the answers.
        #[arg(long)]
        batch: Option<PathBuf>,
        /// One HTTP/1.0 request.
        #[arg(long)]
        http10: bool,
        /// One HTTP/2 request with prior knowledge.
        #[arg(long)]
        h2c: bool,
        /// A WebSocket handshake and one echoed message.
        #[arg(long)]
        websocket: Option<String>,
        /// Send this file's bytes as they are; print the answer.
        #[arg(long)]
        raw: Option<PathBuf>,
        /// With `--raw`: shut the write side down after the bytes (a client that
        /// half-closes once its request is sent).
        #[arg(long, requires = "raw")]
        half_close: bool,
        /// With `--raw`: read answers until the connection closes; print them all.
        #[arg(long, requires = "raw")]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Test backend: answers every request with its name (x-backend header), and every
    /// UDP datagram to its address with its name.
    #[command(hide = true)]
    Backend {
        /// `ADDR:PORT` (answers as `--name`) or `NAME=ADDR:PORT`; repeatable, so one
        /// process can serve several backends (v0 and v1 on one event loop).
        #[arg(long, required = true)]
        listen: Vec<String>,
        #[arg(long)]
        name: Option<String>,
    },
}

/// mimalloc, not glibc's malloc: a reload allocates and frees a lot in a short time
/// (a burst of 1,000 changed Services spent ~45 % of its time in glibc's malloc and
/// free; with mimalloc it is live in 114–123 ms instead of 161–169, and 10,000
/// services from files load in 0.66 s instead of 0.87), and glibc kept what the
/// parallel load's threads had used (one arena each). Built without transparent huge
/// pages (`no_thp`): with them 1,000 services idled at 45 MiB instead of 31.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Run {
            config,
            kubernetes,
            kubeconfig,
            cluster_domain,
            cgroup,
            bpffs,
            detach_on_exit,
            proxy_listen,
            admin_listen,
            access_log,
            sk_msg,
            no_sk_msg,
            xdp_ifaces,
            xdp_mode,
            drain_seconds,
            no_parse_cache,
            front,
            bounds,
            http1_engine,
            no_keeper,
            fallback_after,
        } => {
            anyhow::ensure!(
                (1..=10_000).contains(&front.max_request_headers),
                "--max-request-headers must be 1-10000, got {}",
                front.max_request_headers
            );
            anyhow::ensure!(
                (1..=1024).contains(&front.max_request_headers_kb),
                "--max-request-headers-kb must be 1-1024, got {}",
                front.max_request_headers_kb
            );
            let cgroup = match cgroup {
                Some(c) => c,
                None => cgroup::cgroup2_root().context("finding the cgroup2 mount")?,
            };
            anyhow::ensure!(
                cgroup.is_absolute(),
                "--cgroup must be an absolute path, got {}",
                cgroup.display()
            );
            if let Some(config) = &config {
                anyhow::ensure!(
                    config.is_dir(),
                    "--config {}: not a directory",
                    config.display()
                );
            }
            let kubernetes =
                (kubernetes || kubeconfig.is_some()).then_some(lb::kubernetes::Options {
                    kubeconfig,
                    domain: cluster_domain,
                });
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let access_log = match access_log.as_str() {
                "off" => None,
                "stdout" => Some(lb::proxy::access_log::Target::Stdout),
                path => Some(lb::proxy::access_log::Target::File(path.into())),
            };
            let proxy = lb::proxy::ProxyOptions {
                listen: proxy_listen,
                admin: admin_listen,
                access_log,
                drain: Duration::from_secs(drain_seconds),
                limits: lb::proxy::h1::Limits {
                    headers: front.max_request_headers,
                    head_bytes: front.max_request_headers_kb * 1024,
                },
                bounds: bounds.bounds()?,
                lean: http1_engine == "lean",
            };
            let inherited = lb::keeper::Inherited::take()?;
            if inherited.is_none() && !no_keeper {
                let held = lb::proxy::Proxy::bind(&proxy)?;
                let code = rt.block_on(lb::keeper::keep(held, fallback_after))?;
                return Ok(ExitCode::from(code));
            }
            rt.block_on(lb::run::run(lb::run::RunOptions {
                inherited,
                config,
                kubernetes,
                cgroup,
                bpffs,
                detach_on_exit,
                proxy,
                sk_msg: if no_sk_msg {
                    lb::run::SkMsgHops::OFF
                } else {
                    sk_msg
                },
                north_south: lb::datapath::north_south::NorthSouth {
                    ifaces: interfaces(xdp_ifaces)?,
                    mode: xdp_mode,
                },
                parse_cache: !no_parse_cache,
                model: lb::model::Options {
                    normalization: front.path_normalization,
                    ..Default::default()
                },
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Validate {
            dir,
            proxy_listen,
            admin_listen,
        } => validate(&dir, &[proxy_listen, admin_listen]),
        Cmd::Explain {
            config,
            host,
            path,
            method,
            headers,
            to,
            json,
            path_normalization,
        } => {
            let opts = lb::model::Options {
                normalization: path_normalization,
                ..Default::default()
            };
            let validated = lb::model::load_dir_with(&config, &mut Default::default(), &opts)?;
            let mut map = http::HeaderMap::new();
            for h in &headers {
                let (k, v) = h
                    .split_once(':')
                    .with_context(|| format!("--header {h:?}: expected 'name: value'"))?;
                map.append(
                    http::HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes())?,
                    v.trim().parse()?,
                );
            }
            let q = lb::explain::Query {
                host,
                path,
                method,
                headers: map,
                to,
            };
            let plan = lb::compile::plan(validated.model)?;
            let e = lb::explain::explain(&plan, &q);
            if json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                print!("{}", e.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { bpffs, admin, json } => {
            let mut status = lb::status::read(&Pins::new(&bpffs))
                .with_context(|| format!("reading lb's pins under {}", bpffs.display()))?;
            status.source = lb::status::source_from(admin);
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { bpffs, cgroup: _ } => {
            // This build's layout and any other lb left attached there.
            let pins = Pins::new(&bpffs);
            for layout in pins.other_layouts().iter().chain([&pins]) {
                attach::remove_all(layout)?;
            }
            eprintln!("lb: detached and unpinned {}", bpffs.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Crds => {
            print!("{}", lb::kubernetes::crds::yaml());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { connections } => {
            lb::demo::run(connections)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe {
            to,
            count,
            every_ms,
            for_ms,
            keep_alive,
            from,
            from_port,
            udp,
            host,
            log,
            until_file,
            path,
            headers,
            batch,
            http10,
            h2c,
            websocket,
            raw,
            half_close,
            all,
            json,
        } => {
            let host_or_to = host.clone().unwrap_or_else(|| to.to_string());
            let single = if let Some(file) = batch {
                Some(serde_json::to_string(&lb::probe::batch(&file)?)?)
            } else if http10 {
                Some(serde_json::to_string(
                    &lb::probe::http10(to, &host_or_to, &path).map_err(anyhow::Error::msg)?,
                )?)
            } else if h2c {
                Some(serde_json::to_string(
                    &lb::probe::h2c(to, &host_or_to, &path).map_err(anyhow::Error::msg)?,
                )?)
            } else if let Some(msg) = websocket {
                Some(serde_json::to_string(
                    &lb::probe::websocket(to, &host_or_to, &msg).map_err(anyhow::Error::msg)?,
                )?)
            } else if let Some(file) = raw {
                let bytes = std::fs::read(file)?;
                Some(if all {
                    serde_json::to_string(
                        &lb::probe::raw_all(to, &bytes).map_err(anyhow::Error::msg)?,
                    )?
                } else {
                    serde_json::to_string(
                        &lb::probe::raw(to, &bytes, half_close).map_err(anyhow::Error::msg)?,
                    )?
                })
            } else {
                None
            };
            if let Some(out) = single {
                println!("{out}");
                return Ok(ExitCode::SUCCESS);
            }
            let headers = headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                        .with_context(|| format!("--header {h:?}: expected 'name: value'"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opts = lb::probe::ProbeOptions {
                to,
                count,
                every: Duration::from_millis(every_ms),
                limit: Duration::from_millis(for_ms),
                keep_alive,
                from,
                from_port,
                udp,
                host,
                path,
                headers,
                log,
                until_file,
            };
            let summary = lb::probe::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{summary:#?}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backend { listen, name } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut tasks = Vec::new();
                let mut names = Vec::new();
                for spec in &listen {
                    let (answer_as, addr) = match spec.split_once('=') {
                        Some((n, a)) => (n.to_string(), a),
                        None => (
                            name.clone()
                                .context("--listen ADDR needs --name (or NAME=ADDR)")?,
                            spec.as_str(),
                        ),
                    };
                    let addr: SocketAddr = addr
                        .parse()
                        .with_context(|| format!("--listen {spec}: not ADDR:PORT"))?;
                    let l = lb::backend::bind(addr)
                        .await
                        .with_context(|| format!("binding {addr}"))?;
                    let udp = tokio::net::UdpSocket::bind(addr)
                        .await
                        .with_context(|| format!("binding {addr}/udp"))?;
                    names.push(answer_as.clone());
                    tasks.push(tokio::spawn(lb::backend::serve_udp(udp, answer_as.clone())));
                    tasks.push(tokio::spawn(lb::backend::serve(l, answer_as)));
                }
                eprintln!("lb backend {}: ready", names.join(", "));
                for t in tasks {
                    let _ = t.await;
                }
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn validate(dir: &std::path::Path, listeners: &[SocketAddr]) -> anyhow::Result<ExitCode> {
    let opts = lb::model::Options {
        own: lb::run::own_listeners(listeners),
        ..Default::default()
    };
    match lb::model::load_dir_with(dir, &mut Default::default(), &opts) {
        Ok(v) => {
            for w in &v.warnings {
                println!("{w}");
            }
            let image = lb::compile::compile(&v.model)?;
            eprintln!(
                "{}: valid, {} service address(es), {} warning(s)",
                dir.display(),
                image.services.len(),
                v.warnings.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(lb::model::ModelError::Invalid { diagnostics }) => {
            for d in &diagnostics {
                println!("{d}");
            }
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
            eprintln!(
                "{}: {errors} error(s), {} warning(s)",
                dir.display(),
                diagnostics.len() - errors
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// `--xdp-iface` values as interface names: an IPv4 address names the interface that
/// holds it.
fn interfaces(values: Vec<String>) -> anyhow::Result<Vec<String>> {
    let held = lb::datapath::north_south::ipv4_by_interface();
    values
        .into_iter()
        .map(|v| match v.parse::<std::net::Ipv4Addr>() {
            Err(_) => Ok(v),
            Ok(addr) => held
                .iter()
                .find(|(_, a)| *a == addr)
                .map(|(name, _)| name.clone())
                .with_context(|| format!("--xdp-iface {v}: no interface holds this address")),
        })
        .collect()
}
