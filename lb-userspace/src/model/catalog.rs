//! The service catalogue from `ServiceEntry` resources: hosts, service addresses,
//! ports and endpoints with labels.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::Invalid;
use crate::diagnostic::Diagnostic;
use crate::load::{Loaded, istio};

use crate::hosts;
use crate::smallmap::{Labels, SmallMap};

/// One service of the catalogue (one ServiceEntry host).
#[derive(Debug)]
pub struct CatalogService {
    /// Canonical host (`backend-service.default.svc.cluster.local`).
    pub host: String,
    pub namespace: String,
    /// The ServiceEntry that declared it (`ns/name`), for messages.
    pub source: String,
    /// IPv4 service addresses the kernel steers (may be empty: destination only).
    pub addresses: Vec<Ipv4Addr>,
    pub ports: Vec<Port>,
    /// Its NodePorts ([`NODE_PORTS_ANNOTATION`]). Served at each node address
    /// ([`super::Options::node_addresses`]) as the service port.
    pub node_ports: Vec<NodePort>,
    /// Those of `addresses` reached from outside through the nodes
    /// ([`EXTERNAL_ADDRESSES_ANNOTATION`]): served north-south with Maglev tables.
    pub external: Vec<Ipv4Addr>,
    /// Shared by the hosts of one ServiceEntry (cloning labels per host showed in
    /// reload profiles).
    pub endpoints: std::sync::Arc<Vec<Endpoint>>,
    /// The ServiceEntry document that declared it.
    pub doc: std::sync::Arc<Loaded>,
    /// `select` answers. A service outlives reloads that leave its ServiceEntry alone
    /// (model::Cache), and each reload asks the same few questions (one per subset and
    /// port) twice: matching labels endpoint by endpoint was the largest part of a
    /// one-file change among 1000 services.
    selected: std::sync::Mutex<Vec<Selection>>,
}

const MAX_SELECTIONS: usize = 64;

#[derive(Debug)]
struct Selection {
    labels: Labels,
    port: u16,
    udp: bool,
    endpoints: Vec<SocketAddrV4>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    pub name: String,
    pub target: Option<u16>,
    /// A UDP port: split by weight in XDP only (north-south); routes and the proxy
    /// are for TCP ports.
    pub udp: bool,
}

/// A NodePort: service port `port` (UDP or TCP) also served at the node's addresses
/// at `node_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePort {
    pub port: u16,
    pub udp: bool,
    pub node_port: u16,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub labels: std::sync::Arc<Labels>,
    /// Port overrides by service port name (shared as the ServiceEntry's endpoints
    /// share theirs).
    pub ports: SmallMap<u16>,
}

impl CatalogService {
    /// Every address:port the service is dialled at, with the service port each one
    /// is: its addresses at its ports, then `node_addresses` at its NodePorts.
    pub fn frontends<'a>(
        &'a self,
        node_addresses: &'a [Ipv4Addr],
    ) -> impl Iterator<Item = (std::net::SocketAddrV4, &'a Port)> + 'a {
        let own = (self.addresses.iter()).flat_map(move |a| {
            (self.ports.iter()).map(move |p| (std::net::SocketAddrV4::new(*a, p.number), p))
        });
        let node = node_addresses.iter().flat_map(move |a| {
            self.node_ports.iter().filter_map(move |n| {
                let p = (self.ports.iter()).find(|p| p.number == n.port && p.udp == n.udp)?;
                Some((std::net::SocketAddrV4::new(*a, n.node_port), p))
            })
        });
        own.chain(node)
    }

    /// Its ports of one protocol. What routes, the proxy and lb's own listeners
    /// concern are the TCP ones (`udp` false); UDP ports are split in XDP only.
    pub fn ports_of(&self, udp: bool) -> impl Iterator<Item = &Port> {
        self.ports.iter().filter(move |p| p.udp == udp)
    }

    /// The TCP port of this service that `number` names (routes name TCP ports).
    pub fn port(&self, number: u16) -> Option<&Port> {
        self.ports_of(false).find(|p| p.number == number)
    }

    /// Endpoints matching `labels` (all of them), on service port `port`.
    pub fn select(&self, labels: &Labels, port: &Port) -> Vec<SocketAddrV4> {
        let Ok(mut memo) = self.selected.lock() else {
            return self.select_uncached(labels, port);
        };
        if let Some(s) = memo
            .iter()
            .find(|s| s.port == port.number && s.udp == port.udp && s.labels == *labels)
        {
            return s.endpoints.clone();
        }
        let endpoints = self.select_uncached(labels, port);
        // Subsets edited again and again under one ServiceEntry would pile up answers
        // nobody asks any more: start over past a bound no real service reaches.
        if memo.len() >= MAX_SELECTIONS {
            memo.clear();
        }
        memo.push(Selection {
            labels: labels.clone(),
            port: port.number,
            udp: port.udp,
            endpoints: endpoints.clone(),
        });
        endpoints
    }

    fn select_uncached(&self, labels: &Labels, port: &Port) -> Vec<SocketAddrV4> {
        self.endpoints
            .iter()
            .filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .map(|e| SocketAddrV4::new(e.address, e.port_for(port)))
            .collect()
    }
}

impl Endpoint {
    /// The port this endpoint serves service port `port` on: its own override by port
    /// name, else the port's targetPort, else the port itself.
    pub fn port_for(&self, port: &Port) -> u16 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target)
            .unwrap_or(port.number)
    }
}

/// A ServiceEntry's NodePorts, `"80:30785,53/udp:30053"`: the service ports (TCP
/// unless `/udp`) also served at the node's addresses (`lb run --xdp-iface`'s) at
/// those ports, as a Kubernetes NodePort Service's are (the Kubernetes source writes
/// it on the Services it reads).
pub const NODE_PORTS_ANNOTATION: &str = "lb.dev/node-ports";

/// A ServiceEntry's addresses that clients outside the cluster reach through the
/// nodes (an upstream router sends them to any node, `"203.0.113.10,203.0.113.11"`):
/// their subsets get Maglev tables, so a flow the router moves to another node keeps
/// its endpoint even while endpoints change. The Kubernetes source writes a Service's
/// external and load-balancer IPs here.
pub const EXTERNAL_ADDRESSES_ANNOTATION: &str = "lb.dev/external-addresses";

/// [`NODE_PORTS_ANNOTATION`]'s NodePorts; None: not that form.
pub fn node_ports(text: &str) -> Option<Vec<NodePort>> {
    text.split(',')
        .map(|pair| {
            let (port, node) = pair.trim().split_once(':')?;
            let number = |s: &str| s.trim().parse::<u16>().ok().filter(|n| *n != 0);
            let (port, udp) = match port.trim().split_once('/') {
                None => (port, false),
                Some((port, proto)) if proto.eq_ignore_ascii_case("udp") => (port, true),
                Some((port, proto)) if proto.eq_ignore_ascii_case("tcp") => (port, false),
                Some(_) => return None,
            };
            Some(NodePort {
                port: number(port)?,
                udp,
                node_port: number(node)?,
            })
        })
        .collect()
}

fn port_number(v: i64) -> Option<u16> {
    u16::try_from(v).ok().filter(|p| *p != 0)
}

/// Reads one ServiceEntry into catalogue services (one per host).
pub fn from_service_entry(
    doc: &std::sync::Arc<Loaded>,
    spec: &istio::ServiceEntrySpec,
    diags: &mut Vec<Diagnostic>,
) -> Vec<CatalogService> {
    let l: &Loaded = doc;
    let mut errors = Vec::new();
    let mut err = |path: &str, problem: Invalid| {
        errors.push(Diagnostic::error(l.at(path), path, problem));
    };
    if spec.hosts.is_empty() {
        err("spec.hosts", Invalid::NoHost);
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if h == "*" || h.is_empty() {
            err(&format!("spec.hosts[{i}]"), Invalid::BadHost(h.clone()));
        }
    }
    let mut addresses = Vec::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        let path = format!("spec.addresses[{i}]");
        let (ip, prefix) = a
            .split_once('/')
            .map_or((a.as_str(), None), |(ip, p)| (ip, Some(p)));
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) if prefix.is_none() || prefix == Some("32") => {
                addresses.push(v4)
            }
            Ok(std::net::IpAddr::V4(_)) => err(&path, Invalid::AddressRange(a.clone())),
            Ok(std::net::IpAddr::V6(_)) => {
                diags.push(Diagnostic::warning(
                    l.at(&path),
                    &path,
                    Invalid::AddressV6(a.clone()),
                ));
            }
            Err(_) => err(&path, Invalid::BadAddress(a.clone())),
        }
    }
    let mut ports: Vec<Port> = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let Some(number) = port_number(p.number) else {
            err(&format!("{path}.number"), Invalid::PortRange(p.number));
            continue;
        };
        let name = p.name.clone().unwrap_or_default();
        if name.is_empty() {
            err(&format!("{path}.name"), Invalid::NoPortName);
        }
        let target = match p.target_port.map(port_number) {
            Some(None) => {
                err(
                    &format!("{path}.targetPort"),
                    Invalid::TargetPortRange(p.target_port.unwrap_or(0)),
                );
                None
            }
            Some(t) => t,
            None => None,
        };
        let udp = p
            .protocol
            .as_ref()
            .is_some_and(|proto| proto.eq_ignore_ascii_case("UDP"));
        if ports.iter().any(|q| q.number == number && q.udp == udp) {
            err(&format!("{path}.number"), Invalid::PortTwice(number));
        }
        if !name.is_empty() && ports.iter().any(|q| q.name == name) {
            err(
                &format!("{path}.name"),
                Invalid::PortNameTwice(name.clone()),
            );
        }
        ports.push(Port {
            number,
            name,
            target,
            udp,
        });
    }
    if spec.ports.is_empty() {
        err("spec.ports", Invalid::NoPort);
    }
    let node_ports = match l.annotation(NODE_PORTS_ANNOTATION) {
        None => Vec::new(),
        Some(text) => match node_ports(&text) {
            Some(pairs)
                if pairs
                    .iter()
                    .all(|n| ports.iter().any(|q| q.number == n.port && q.udp == n.udp)) =>
            {
                pairs
            }
            _ => {
                err(
                    &format!("metadata.annotations.{NODE_PORTS_ANNOTATION}"),
                    Invalid::NodePorts(text),
                );
                Vec::new()
            }
        },
    };
    let external = match l.annotation(EXTERNAL_ADDRESSES_ANNOTATION) {
        None => Vec::new(),
        Some(text) => {
            let listed: Option<Vec<Ipv4Addr>> = (text.split(','))
                .map(|a| a.trim().parse().ok().filter(|a| addresses.contains(a)))
                .collect();
            listed.unwrap_or_else(|| {
                err(
                    &format!("metadata.annotations.{EXTERNAL_ADDRESSES_ANNOTATION}"),
                    Invalid::ExternalAddresses(text),
                );
                Vec::new()
            })
        }
    };
    match spec.resolution.as_deref() {
        None | Some("STATIC") | Some("NONE") => {}
        Some(r @ ("DNS" | "DNS_ROUND_ROBIN")) => {
            err("spec.resolution", Invalid::DnsResolution(r.to_string()));
        }
        Some(r) => err("spec.resolution", Invalid::UnknownResolution(r.to_string())),
    }
    let mut endpoints = Vec::new();
    // The last endpoint's ports, as read and as made: the next one with the same
    // shares them.
    let mut last_ports: Option<(&SmallMap<i64>, SmallMap<u16>)> = None;
    for (i, e) in spec.endpoints.iter().enumerate() {
        // Formatted only when something is reported (10k endpoints reload often).
        let path = || format!("spec.endpoints[{i}]");
        let addr = e.address.as_deref().unwrap_or("");
        let address = match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) => v4,
            Ok(std::net::IpAddr::V6(_)) => {
                let path = format!("{}.address", path());
                diags.push(Diagnostic::warning(
                    l.at(&path),
                    path,
                    Invalid::EndpointV6(addr.to_string()),
                ));
                continue;
            }
            Err(_) => {
                err(
                    &format!("{}.address", path()),
                    Invalid::BadEndpoint(addr.to_string()),
                );
                continue;
            }
        };
        // Checked for each endpoint (its problems name it); made once for those that
        // share them.
        let shared = (last_ports.as_ref())
            .filter(|(read, _)| read.same(&e.ports))
            .map(|(_, made)| made.clone());
        let mut eports = Vec::new();
        for (name, n) in e.ports.iter() {
            let ppath = || format!("{}.ports.{name}", path());
            if !ports.iter().any(|p| p.name == name) {
                err(&ppath(), Invalid::EndpointPortName(name.to_string()));
            }
            match port_number(*n) {
                Some(p) if shared.is_none() => eports.push((name, p)),
                Some(_) => {}
                None => err(&ppath(), Invalid::PortRange(*n)),
            }
        }
        let unenforced = [
            ("network", e.network.is_some()),
            ("locality", e.locality.is_some()),
            ("weight", e.weight.is_some()),
            ("serviceAccount", e.service_account.is_some()),
        ];
        if unenforced.iter().any(|(_, set)| *set) {
            super::warn_unenforced(l, &path(), &unenforced, diags);
        }
        let ports = shared.unwrap_or_else(|| eports.into_iter().collect());
        last_ports = Some((&e.ports, ports.clone()));
        endpoints.push(Endpoint {
            address,
            labels: e.labels.clone(),
            ports,
        });
    }
    super::warn_unenforced(
        l,
        "spec",
        &[
            ("workloadSelector", spec.workload_selector.is_some()),
            ("exportTo", !spec.export_to.is_empty()),
            ("subjectAltNames", !spec.subject_alt_names.is_empty()),
        ],
        diags,
    );
    if !errors.is_empty() {
        diags.extend(errors);
        return Vec::new();
    }
    let endpoints = std::sync::Arc::new(endpoints);
    spec.hosts
        .iter()
        .map(|h| CatalogService {
            host: hosts::canonical(h, &l.namespace),
            namespace: l.namespace.clone(),
            source: format!("{}/{}", l.namespace, l.name),
            addresses: addresses.clone(),
            ports: ports.clone(),
            node_ports: node_ports.clone(),
            external: external.clone(),
            endpoints: endpoints.clone(),
            doc: doc.clone(),
            selected: Default::default(),
        })
        .collect()
}
