//! The north-south programs on the node's interfaces (`--xdp-iface`): `lb_xdp` on
//! each one's way in — native (in the driver) where the driver has it, generic (in
//! the stack) otherwise — and `lb_tc_egress` (TCX) on its way out. Their links are
//! pinned like the cgroup programs' (they keep running while the daemon is away),
//! one per program and interface, named so `lb status` can tell the interface and
//! the XDP mode from the pin alone; an interface no longer asked for is detached.
//! Also what `lb_xdp` needs from user space to forward to other nodes: the served
//! interfaces' addresses (`LB_XDP_IFACES`) and next hops resolved (`Neighbours`).

use std::net::Ipv4Addr;
use std::path::Path;

use aya::Ebpf;
use aya::maps::{HashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{SchedClassifier, TcAttachType, Xdp};
use lb_common::map_names;

use super::attach::failed;
use super::layout::{Hook, ProgramDef};
use super::{DatapathError, Pins};

/// The interfaces to serve and how (`--xdp-iface`, `--xdp-mode`).
#[derive(Clone, Debug, Default)]
pub struct NorthSouth {
    pub ifaces: Vec<String>,
    /// None: native where the driver has it, else generic.
    pub mode: Option<XdpMode>,
}

/// How `lb_xdp` runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// In the stack (any interface), after the skb is built: slower.
    Generic,
}

impl std::str::FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            other => Err(format!("unknown XDP mode `{other}`: native or generic")),
        }
    }
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// One north-south link as pinned: program, interface, and XDP mode (XDP only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceLink {
    pub program: String,
    pub iface: String,
    pub mode: Option<XdpMode>,
}

impl IfaceLink {
    /// The pin's name after `link_`: `lb_xdp@eth0@native`, `lb_tc_egress@eth0`. An
    /// interface name may hold `.` (a VLAN's), which bpffs refuses: it is written `%2E`
    /// (and `%` as `%25`).
    pub fn pin_name(&self) -> String {
        let iface = self.iface.replace('%', "%25").replace('.', "%2E");
        match self.mode {
            Some(m) => format!("{}@{iface}@{}", self.program, m.as_str()),
            None => format!("{}@{iface}", self.program),
        }
    }

    /// The link a pin name stands for, if it is a north-south one.
    pub fn parse(name: &str) -> Option<IfaceLink> {
        let mut parts = name.split('@');
        let program = parts.next()?.to_string();
        let iface = parts.next()?.replace("%2E", ".").replace("%25", "%");
        let mode = match parts.next() {
            None => None,
            Some(m) => Some(m.parse().ok()?),
        };
        Some(IfaceLink {
            program,
            iface,
            mode,
        })
    }
}

/// The north-south links pinned under `pins`.
pub fn pinned(pins: &Pins) -> Vec<IfaceLink> {
    pins.linked_programs()
        .iter()
        .filter_map(|n| IfaceLink::parse(n))
        .collect()
}

/// Makes sure each north-south program of the object runs on each of `want`'s
/// interfaces (XDP in the mode asked for), and on no other interface. Returns the
/// links attached now and those switched to this build's program, by pin name.
pub fn ensure(
    ebpf: &mut Ebpf,
    defs: &[ProgramDef],
    pins: &Pins,
    want: &NorthSouth,
) -> Result<(Vec<String>, Vec<String>), DatapathError> {
    let (mut attached, mut replaced) = (Vec::new(), Vec::new());
    let ifaces = &want.ifaces;
    // XDP in another mode than asked for is attached anew.
    for link in pinned(pins) {
        if let (Some(asked), Some(running)) = (want.mode, link.mode)
            && asked != running
        {
            detach(&pins.link(&link.pin_name()), &link.program)?;
        }
    }
    let pinned = pinned(pins);
    for def in defs {
        if !matches!(def.hook, Hook::Xdp | Hook::TcEgress) {
            continue;
        }
        for iface in ifaces {
            let held = pinned
                .iter()
                .find(|l| l.program == def.name && l.iface == *iface);
            if let Some(link) = held {
                let path = pins.link(&link.pin_name());
                if super::attach::replace_if_changed(ebpf, def, &path)? {
                    replaced.push(link.pin_name());
                }
                continue;
            }
            let (link, mode) = attach(ebpf, def, iface, want.mode)?;
            let name = IfaceLink {
                program: def.name.clone(),
                iface: iface.clone(),
                mode,
            }
            .pin_name();
            let path = pins.link(&name);
            link.pin(&path).map_err(|e| DatapathError::Pin {
                path: path.clone(),
                source: Box::new(e),
            })?;
            attached.push(name);
        }
    }
    for link in pinned.iter().filter(|l| !ifaces.contains(&l.iface)) {
        detach(&pins.link(&link.pin_name()), &link.program)?;
        tracing::info!(program = %link.program, iface = %link.iface, "detached: the interface is no longer served");
    }
    publish_addresses(ebpf, ifaces)?;
    Ok((attached, replaced))
}

/// Unpins a link, which detaches its program (the pin held the last reference).
pub fn detach(path: &Path, program: &str) -> Result<(), DatapathError> {
    let link = PinnedLink::from_pin(path).map_err(failed(program))?;
    drop(link.unpin().map_err(|e| DatapathError::io(path, e))?);
    Ok(())
}

fn attach(
    ebpf: &mut Ebpf,
    def: &ProgramDef,
    iface: &str,
    mode: Option<XdpMode>,
) -> Result<(FdLink, Option<XdpMode>), DatapathError> {
    let name = def.name.as_str();
    let cname = std::ffi::CString::new(iface).map_err(|e| super::attach::program_error(name, e))?;
    if def.hook == Hook::TcEgress {
        let prog: &mut SchedClassifier = super::attach::program(ebpf, name)?;
        // One program runs on every interface: loaded for the first.
        if prog.fd().is_err() {
            prog.load().map_err(failed(name))?;
        }
        let id = prog
            .attach(cname.as_c_str(), TcAttachType::Egress)
            .map_err(failed(name))?;
        let link =
            FdLink::try_from(prog.take_link(id).map_err(failed(name))?).map_err(failed(name))?;
        return Ok((link, None));
    }
    let prog: &mut Xdp = super::attach::program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(failed(name))?;
    }
    let generic = |prog: &mut Xdp| {
        prog.attach(cname.as_c_str(), aya::programs::XdpMode::Skb)
            .map_err(failed(name))
    };
    let native = |prog: &mut Xdp| prog.attach(cname.as_c_str(), aya::programs::XdpMode::Driver);
    let (id, mode) = match mode {
        Some(XdpMode::Generic) => (generic(prog)?, XdpMode::Generic),
        Some(XdpMode::Native) => (native(prog).map_err(failed(name))?, XdpMode::Native),
        None => match native(prog) {
            Ok(id) => (id, XdpMode::Native),
            Err(e) => {
                tracing::info!(iface, "native XDP refused ({e}): generic XDP instead");
                (generic(prog)?, XdpMode::Generic)
            }
        },
    };
    let link = FdLink::try_from(prog.take_link(id).map_err(failed(name))?).map_err(failed(name))?;
    Ok((link, Some(mode)))
}

/// Each interface's IPv4 addresses (getifaddrs), by interface name; empty if it fails.
pub fn ipv4_by_interface() -> Vec<(String, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below; each entry's
    // address is read only when it is an AF_INET sockaddr.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = a.cast::<libc::sockaddr_in>();
                let name = std::ffi::CStr::from_ptr((*cur).ifa_name);
                out.push((
                    name.to_string_lossy().into_owned(),
                    Ipv4Addr::from(u32::from_be((*sin).sin_addr.s_addr)),
                ));
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

/// `LB_XDP_IFACES`: each served interface's index and (first) IPv4 address, the
/// source `lb_xdp` gives the flows it forwards to other nodes out of it; no other
/// interface. An interface without an IPv4 address forwards none (they pass).
fn publish_addresses(ebpf: &mut Ebpf, ifaces: &[String]) -> Result<(), DatapathError> {
    let name = map_names::XDP_IFACES;
    let map = ebpf.map_mut(name).ok_or(DatapathError::MissingMap(name))?;
    let mut map: HashMap<_, u32, [u8; 4]> =
        HashMap::try_from(map).map_err(|e| DatapathError::map(name, e))?;
    let held = ipv4_by_interface();
    let want: Vec<(u32, [u8; 4])> = ifaces
        .iter()
        .filter_map(|iface| {
            let cname = std::ffi::CString::new(iface.as_str()).ok()?;
            // SAFETY: a NUL-terminated name; 0 when there is no such interface.
            let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            let (_, addr) = held.iter().find(|(n, _)| n == iface)?;
            (index != 0).then_some((index, addr.octets()))
        })
        .collect();
    let stale: Vec<u32> = (map.keys().filter_map(Result::ok))
        .filter(|k| !want.iter().any(|(i, _)| i == k))
        .collect();
    for index in stale {
        map.remove(&index)
            .map_err(|e| DatapathError::map(format!("{name} remove {index}"), e))?;
    }
    for (index, addr) in want {
        map.insert(&index, &addr, 0)
            .map_err(|e| DatapathError::map(format!("{name} insert {index}"), e))?;
    }
    Ok(())
}

/// The next hops `lb_xdp` found without a link-layer address (`LB_XDP_NEIGH`): XDP
/// cannot ask for one, so the daemon does, by sending each a datagram (to the discard
/// port): the kernel resolves the address on the way. A packet that met the
/// unresolved hop was dropped; TCP sends it again within a second, by when it is
/// resolved. The gateways of the routes out of the served interfaces (other nodes,
/// as a cluster's routes name them) are asked for as they appear, before a flow meets
/// them unresolved (`gateways`).
pub struct Neighbours {
    map: HashMap<MapData, [u8; 4], u32>,
    /// The served interfaces (`LB_XDP_IFACES`), whose routes' gateways are asked for.
    served: HashMap<MapData, u32, [u8; 4]>,
    /// The gateways asked for so far (once each: one the neighbour table forgets is
    /// asked for again the first time `lb_xdp` meets it unresolved).
    asked: std::collections::HashSet<std::net::Ipv4Addr>,
    socket: std::net::UdpSocket,
}

impl Neighbours {
    /// How often the daemon looks: well under TCP's first retransmission (1 s).
    pub const PERIOD: std::time::Duration = std::time::Duration::from_millis(100);
    /// How often it reads the routing table for new gateways, in periods (5 s).
    const GATEWAYS_EVERY: u32 = 50;

    pub fn open(pins: &Pins) -> Result<Self, DatapathError> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| DatapathError::map("a socket to resolve next hops", e))?;
        Ok(Self {
            map: super::open(pins, map_names::XDP_NEIGH, false)?,
            served: super::open(pins, map_names::XDP_IFACES, false)?,
            asked: Default::default(),
            socket,
        })
    }

    /// Asks for each next hop waiting, once, and forgets it.
    pub fn resolve(&mut self) {
        let waiting: Vec<[u8; 4]> = self.map.keys().filter_map(Result::ok).collect();
        for hop in &waiting {
            self.ask((*hop).into());
            let _ = self.map.remove(hop);
        }
        if !waiting.is_empty() {
            let hops: Vec<std::net::Ipv4Addr> = waiting.iter().map(|h| (*h).into()).collect();
            tracing::debug!(?hops, "next hops XDP met unresolved asked for");
        }
    }

    /// Asks for the gateways of the routes out of the served interfaces not asked for
    /// yet.
    pub fn resolve_gateways(&mut self) {
        let served: Vec<u32> = self.served.keys().filter_map(Result::ok).collect();
        let gateways = match super::gateways::of(&served) {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!("reading the routes' gateways: {e}");
                return;
            }
        };
        let new: Vec<_> = (gateways.into_iter())
            .filter(|g| self.asked.insert(*g))
            .collect();
        for g in &new {
            self.ask(*g);
        }
        if !new.is_empty() {
            tracing::debug!(gateways = ?new, "the served interfaces' gateways asked for");
        }
    }

    /// A datagram to `hop`'s discard port: the kernel resolves its link-layer
    /// address to send it.
    fn ask(&self, hop: std::net::Ipv4Addr) {
        let to = std::net::SocketAddrV4::new(hop, 9);
        if let Err(e) = self.socket.send_to(&[], to) {
            tracing::debug!(%to, "asking for a next hop's link-layer address: {e}");
        }
    }

    /// [`Neighbours::resolve`] every [`Neighbours::PERIOD`], and
    /// [`Neighbours::resolve_gateways`] every few seconds, for ever.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Self::PERIOD);
        let mut n: u32 = 0;
        loop {
            tick.tick().await;
            n = n.wrapping_add(1);
            if n.is_multiple_of(Self::GATEWAYS_EVERY) {
                self.resolve_gateways();
            }
            self.resolve();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_name_gives_back_its_link() {
        for (program, iface, mode) in [
            ("lb_xdp", "eth0", Some(XdpMode::Native)),
            ("lb_xdp", "eth0.100", Some(XdpMode::Generic)),
            ("lb_tc_egress", "we%rd.1", None),
        ] {
            let link = IfaceLink {
                program: program.into(),
                iface: iface.into(),
                mode,
            };
            let name = link.pin_name();
            assert!(!name.contains('.'), "bpffs refuses dots: {name}");
            assert_eq!(IfaceLink::parse(&name), Some(link));
        }
        assert_eq!(IfaceLink::parse("lb_connect4"), None);
    }
}
