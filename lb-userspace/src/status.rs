//! `lb status`: what the pinned maps hold, read without the daemon (works after
//! `kill -9`, and shows slots edited by hand with bpftool).

use std::fmt::Write as _;

use lb_common::{StatKey, mode};
use serde::Serialize;

use crate::datapath::plan_maps::{c_str, read_services};
use crate::datapath::{DatapathError, Pins, StatusView};

#[derive(Debug, Serialize)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    pub config: ConfigStatus,
    pub counters: Counters,
    pub sk_msg: SkMsgStatus,
    /// The interfaces served north-south (`--xdp-iface`) and how XDP runs on each.
    pub xdp: Vec<XdpIface>,
    /// What the running daemon reads its configuration from (its admin `/source`);
    /// None: no daemon answered.
    pub source: Option<serde_json::Value>,
}

/// Which local hops the daemon asked sk_msg to shortcut, and to which backends.
#[derive(Debug, Serialize)]
pub struct SkMsgStatus {
    /// Hops on (`client`, `upstream`, `kernel`); the proxy's hops are off when lb runs
    /// outside the cgroup it attaches to.
    pub hops: Vec<&'static str>,
    /// Addresses listened on inside the cgroup (`0.0.0.0` = every address at that
    /// port): connects to these can skip TCP.
    pub local_backends: Vec<String>,
}

/// An interface whose incoming packets `lb_xdp` splits.
#[derive(Debug, Serialize)]
pub struct XdpIface {
    pub iface: String,
    /// `native` (in the driver) or `generic` (in the stack).
    pub mode: Option<crate::datapath::north_south::XdpMode>,
    /// Whether replies are translated back on its way out (`lb_tc_egress`).
    pub egress: bool,
}

/// Datapath-wide counters (summed over CPUs).
#[derive(Debug, Serialize)]
pub struct Counters {
    /// Messages `sk_msg` redirected straight into the peer socket.
    pub sk_msg_redirected: u64,
    /// Connects handed to the proxy.
    pub proxy_handoffs: u64,
    /// Proxy-path connects that found no proxy and took the kernel split.
    pub proxy_fallbacks: u64,
    /// Sockets in the socket map whose peer was not there at their first message:
    /// their bytes stay on TCP for the connection's life.
    pub sk_msg_stayed_on_tcp: u64,
    /// Client connections left off the socket map: their process's recent connections
    /// to the service carried one message each (`lb_common::habit`).
    pub sk_msg_skipped: u64,
    /// North-south flows handed to the proxy.
    pub xdp_proxy_flows: u64,
    /// North-south flows whose picked endpoint runs on another node behind an
    /// interface lb does not serve, passed to the stack untranslated.
    pub xdp_remote_passed: u64,
    /// North-south flows forwarded to another node's endpoint by XDP (SNAT).
    pub xdp_remote_flows: u64,
    /// North-south packets dropped while their next hop's link-layer address was
    /// resolved.
    pub xdp_no_neigh: u64,
    /// New north-south flows to another node dropped: no SNAT port free.
    pub xdp_snat_exhausted: u64,
    /// North-south packets to a proxy-path service passed to the node's stack: the
    /// proxy listens on loopback only.
    pub xdp_proxy_passed: u64,
}

/// Requests whose Host named no VirtualService host, for one service.
#[derive(Debug, Serialize)]
pub struct UnknownHost {
    pub host: String,
    pub requests: u64,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub namespace: String,
    pub address: String,
    pub port: u16,
    /// "tcp", or "udp" (split north-south in XDP only).
    pub protocol: &'static str,
    pub datapath: &'static str,
    /// Why the service takes that datapath.
    pub reason: &'static str,
    pub subsets: Vec<SubsetStatus>,
    /// Host headers that named no VirtualService host (the dialled service's routes
    /// applied), most requests first.
    pub unknown_hosts: Vec<UnknownHost>,
}

#[derive(Debug, Serialize)]
pub struct SubsetStatus {
    pub name: String,
    /// Slots held × the gcd the configured weights were reduced by.
    pub weight: u64,
    pub backends: Vec<Backend>,
    pub connects_total: u64,
    /// Connects refused because the subset had no endpoint.
    pub refused_total: u64,
    /// North-south packets (XDP) sent to the subset, and the new flows among them.
    pub xdp_packets_total: u64,
    pub xdp_flows_total: u64,
    /// North-south packets dropped because the subset had no endpoint.
    pub xdp_dropped_total: u64,
    /// Entries of the subset's Maglev table (north-south new flows pick from it; 0:
    /// none, the flow hash modulo the endpoints).
    pub maglev_table: u32,
}

#[derive(Debug, Serialize)]
pub struct Backend {
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Serialize)]
pub struct ConfigStatus {
    /// RFC 3339 time of the last successful apply, null if none.
    pub applied_at: Option<String>,
    /// The last rejected configuration's errors, null if the last change applied.
    pub last_error: Option<String>,
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Reads the status from the maps pinned under `pins` (read-only).
pub fn read(pins: &Pins) -> Result<Status, DatapathError> {
    let view = StatusView::open(pins)?;
    let services = read_services(view.plan())?;
    let stats = view.stats()?;
    let state = view.plan().state();
    let counter = |i: u32| view.counter(i);
    let counters = Counters {
        sk_msg_redirected: counter(lb_common::counters::SK_MSG_REDIRECTED),
        proxy_handoffs: counter(lb_common::counters::PROXY_HANDOFFS),
        proxy_fallbacks: counter(lb_common::counters::PROXY_FALLBACKS),
        sk_msg_stayed_on_tcp: counter(lb_common::counters::SK_MSG_STAYED_ON_TCP),
        sk_msg_skipped: counter(lb_common::counters::SK_MSG_SKIPPED),
        xdp_proxy_flows: counter(lb_common::counters::XDP_PROXY_FLOWS),
        xdp_remote_passed: counter(lb_common::counters::XDP_REMOTE_PASSED),
        xdp_remote_flows: counter(lb_common::counters::XDP_REMOTE_FLOWS),
        xdp_no_neigh: counter(lb_common::counters::XDP_NO_NEIGH),
        xdp_snat_exhausted: counter(lb_common::counters::XDP_SNAT_EXHAUSTED),
        xdp_proxy_passed: counter(lb_common::counters::XDP_PROXY_PASSED),
    };
    let links = crate::datapath::north_south::pinned(pins);
    let xdp = links
        .iter()
        .filter(|l| l.mode.is_some())
        .map(|l| XdpIface {
            iface: l.iface.clone(),
            mode: l.mode,
            egress: links.iter().any(|e| e.iface == l.iface && e.mode.is_none()),
        })
        .collect();
    let flags = view.settings().flags;
    let sk_msg = SkMsgStatus {
        hops: lb_common::settings_flags::HOPS
            .iter()
            .filter(|(_, f)| flags & f != 0)
            .map(|(name, _)| *name)
            .collect(),
        local_backends: view
            .local_listeners()
            .iter()
            .map(crate::datapath::plan_maps::addr)
            .collect(),
    };
    let mut hosts: std::collections::HashMap<lb_common::SockAddr4, Vec<UnknownHost>> =
        Default::default();
    for (k, n) in view.unknown_hosts() {
        hosts.entry(k.service).or_default().push(UnknownHost {
            host: c_str(&k.host),
            requests: n,
        });
    }
    let mut out = Vec::new();
    for (key, svc) in &services {
        let img = &svc.image;
        let subsets = img
            .subsets
            .iter()
            .map(|s| {
                let st = stats
                    .get(&StatKey {
                        service: *key,
                        subset: s.id,
                    })
                    .copied()
                    .unwrap_or_default();
                SubsetStatus {
                    name: s.name.clone(),
                    weight: img.slots_of(s.id) as u64 * u64::from(img.weight_scale),
                    backends: s
                        .endpoints
                        .iter()
                        .map(|e| Backend {
                            address: std::net::Ipv4Addr::from(e.addr).to_string(),
                            port: e.port,
                        })
                        .collect(),
                    connects_total: st.connects,
                    refused_total: st.refused,
                    xdp_packets_total: st.xdp_packets,
                    xdp_flows_total: st.xdp_flows,
                    xdp_dropped_total: st.xdp_dropped,
                    maglev_table: s.table,
                }
            })
            .collect();
        out.push(ServiceStatus {
            name: img.name.clone(),
            namespace: img.namespace.clone(),
            address: std::net::Ipv4Addr::from(key.addr).to_string(),
            port: key.port,
            protocol: if key.is_udp() { "udp" } else { "tcp" },
            datapath: if svc.entry.mode == mode::PROXY {
                "proxy"
            } else {
                "kernel"
            },
            reason: crate::compile::reason::describe(img.reason),
            subsets,
            unknown_hosts: {
                let mut h = hosts.remove(key).unwrap_or_default();
                h.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.host.cmp(&b.host)));
                h
            },
        });
    }
    let last_error = (state.last_error_len > 0).then(|| {
        let len = (state.last_error_len as usize).min(state.last_error.len());
        String::from_utf8_lossy(&state.last_error[..len]).into_owned()
    });
    Ok(Status {
        counters,
        sk_msg,
        xdp,
        source: None,
        services: out,
        config: ConfigStatus {
            applied_at: (state.applied_at_ms > 0).then(|| rfc3339_ms(state.applied_at_ms)),
            last_error,
        },
    })
}

/// The daemon's `/source` from its admin listener, if it answers within a moment.
pub fn source_from(admin: std::net::SocketAddr) -> Option<serde_json::Value> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_millis(500);
    let mut s = std::net::TcpStream::connect_timeout(&admin, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /source HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| serde_json::from_str(body).ok())
        .flatten()
}

/// The source section of `lb status`.
fn render_source(s: &mut String, source: &serde_json::Value) {
    let mut from = Vec::new();
    if let Some(dir) = source["files"].as_str() {
        from.push(format!("files in {dir}"));
    }
    let k = &source["kubernetes"];
    if k.is_object() {
        from.push(format!(
            "Kubernetes (Istio {})",
            k["istio_version"].as_str().unwrap_or("not served")
        ));
    }
    let _ = writeln!(s, "source: {}", from.join(" and "));
    for kind in k["kinds"].as_array().into_iter().flatten() {
        let sync = kind["last_sync_ms"]
            .as_u64()
            .map_or("never".to_string(), rfc3339_ms);
        let _ = write!(
            s,
            "  {:<16} {:>6} objects, last sync {sync}",
            kind["kind"].as_str().unwrap_or(""),
            kind["objects"]
        );
        if let Some(since) = kind["stale_since_ms"].as_u64() {
            let _ = write!(
                s,
                ", STALE since {} ({})",
                rfc3339_ms(since),
                kind["error"].as_str().unwrap_or("")
            );
        }
        s.push('\n');
    }
    for r in source["rejected"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  rejected {} ({}): {}",
            r["object"].as_str().unwrap_or(""),
            if r["last_good_stays"] == true {
                "its last good version stays"
            } else {
                "left out"
            },
            r["problems"][0].as_str().unwrap_or("")
        );
    }
}

impl Status {
    /// Human-readable table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        match &self.source {
            Some(source) => render_source(&mut s, source),
            None => s.push_str("source: no daemon answered on the admin address\n"),
        }
        for svc in &self.services {
            let total: u64 = svc.subsets.iter().map(|x| x.weight).sum();
            let _ = writeln!(
                s,
                "{}/{} {}:{}{} datapath={} ({})",
                svc.namespace,
                svc.name,
                svc.address,
                svc.port,
                if svc.protocol == "udp" { "/udp" } else { "" },
                svc.datapath,
                svc.reason
            );
            for sub in &svc.subsets {
                let pct = if total > 0 {
                    sub.weight as f64 * 100.0 / total as f64
                } else {
                    0.0
                };
                let eps: Vec<String> = sub
                    .backends
                    .iter()
                    .map(|b| format!("{}:{}", b.address, b.port))
                    .collect();
                let _ = writeln!(
                    s,
                    "  {:<12} weight {:>4} ({pct:5.1}%)  connects {:>8}  refused {:>4}  backends [{}]",
                    sub.name,
                    sub.weight,
                    sub.connects_total,
                    sub.refused_total,
                    eps.join(", ")
                );
                if sub.xdp_packets_total + sub.xdp_dropped_total + u64::from(sub.maglev_table) > 0 {
                    let _ = writeln!(
                        s,
                        "  {:<12} north-south (XDP): packets {}  new flows {}  dropped (no endpoint) {}  maglev table {}",
                        "",
                        sub.xdp_packets_total,
                        sub.xdp_flows_total,
                        sub.xdp_dropped_total,
                        sub.maglev_table
                    );
                }
            }
            for h in &svc.unknown_hosts {
                let _ = writeln!(
                    s,
                    "  unknown Host {:?}: {} requests (routed by the dialled service)",
                    h.host, h.requests
                );
            }
        }
        if self.services.is_empty() {
            s.push_str("no services\n");
        }
        let _ = writeln!(
            s,
            "config applied at {}",
            self.config.applied_at.as_deref().unwrap_or("never")
        );
        let c = &self.counters;
        let _ = writeln!(
            s,
            "proxy handoffs {}, proxy fallbacks to the kernel split {}, sk_msg redirected messages {}, sockets kept on TCP {}, one-request connections kept off the socket map {}",
            c.proxy_handoffs,
            c.proxy_fallbacks,
            c.sk_msg_redirected,
            c.sk_msg_stayed_on_tcp,
            c.sk_msg_skipped
        );
        let k = &self.sk_msg;
        let shown = k.local_backends.len().min(8);
        let _ = writeln!(
            s,
            "sk_msg hops: {}; local backends (listening inside the cgroup): {} [{}{}]",
            if k.hops.is_empty() {
                "none".to_string()
            } else {
                k.hops.join(", ")
            },
            k.local_backends.len(),
            k.local_backends[..shown].join(", "),
            if shown < k.local_backends.len() {
                ", …"
            } else {
                ""
            }
        );
        for x in &self.xdp {
            let _ = writeln!(
                s,
                "north-south on {}: XDP {}, replies translated back: {}",
                x.iface,
                x.mode.map_or("?", |m| m.as_str()),
                if x.egress {
                    "yes"
                } else {
                    "NO (lb_tc_egress missing)"
                }
            );
        }
        if !self.xdp.is_empty() {
            let _ = writeln!(
                s,
                "north-south flows handed to the proxy {}, forwarded to another node's pod {}, left to the stack because their pod's node is behind an interface lb does not serve {}; packets to proxy-path services passed to the stack (proxy on loopback only) {}",
                c.xdp_proxy_flows, c.xdp_remote_flows, c.xdp_remote_passed, c.xdp_proxy_passed
            );
            let _ = writeln!(
                s,
                "north-south drops: next hop not resolved yet {}, no SNAT port free {}",
                c.xdp_no_neigh, c.xdp_snat_exhausted
            );
        }
        if let Some(e) = &self.config.last_error {
            let _ = writeln!(s, "rejected (the plan above stays):\n{e}");
        }
        s
    }
}
