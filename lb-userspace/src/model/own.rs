//! lb's own listeners, as the model sees them: an endpoint among them would hand the
//! proxy its own requests, one loop after another until descriptors and memory run
//! out. Such an endpoint is a validation error naming the ServiceEntry; a loop through
//! another hop is ended by the proxy's Via marker instead (proxy/h1).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::Catalog;
use crate::diagnostic::Diagnostic;

/// The addresses lb listens on (proxy, admin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnListeners {
    /// Listeners on one address.
    exact: Vec<SocketAddrV4>,
    /// Ports of listeners on every address (`0.0.0.0:p`): any local address at them.
    every_address: Vec<u16>,
    /// The machine's own IPv4 addresses (loopback aside: all of 127/8 is local).
    local: Vec<Ipv4Addr>,
}

impl OwnListeners {
    /// `listeners` as bound; `local`: the machine's IPv4 addresses (for listeners on
    /// every address).
    pub fn new(listeners: &[SocketAddr], local: Vec<Ipv4Addr>) -> Self {
        let mut own = OwnListeners {
            local,
            ..Default::default()
        };
        for l in listeners {
            match l {
                SocketAddr::V4(a) if a.ip().is_unspecified() => own.every_address.push(a.port()),
                SocketAddr::V4(a) => own.exact.push(*a),
                // An IPv6 wildcard takes IPv4 connects too (unless v6only).
                SocketAddr::V6(a) if a.ip().is_unspecified() => own.every_address.push(a.port()),
                SocketAddr::V6(_) => {}
            }
        }
        own
    }

    pub fn contains(&self, ep: SocketAddrV4) -> bool {
        self.exact.contains(&ep)
            || (self.every_address.contains(&ep.port())
                && (ep.ip().is_loopback() || self.local.contains(ep.ip())))
    }
}

/// An error for each ServiceEntry endpoint that is one of lb's listeners.
pub fn check(catalog: &Catalog, own: &OwnListeners, diags: &mut Vec<Diagnostic>) {
    if own == &OwnListeners::default() {
        return;
    }
    for svc in &catalog.services {
        // lb's listeners are TCP: a UDP port's endpoint is never one of them.
        for port in svc.ports_of(false) {
            for (i, e) in svc.endpoints.iter().enumerate() {
                let ep = SocketAddrV4::new(e.address, e.port_for(port));
                if own.contains(ep) {
                    let p = format!("spec.endpoints[{i}]");
                    diags.push(Diagnostic::error(
                        svc.doc.at(&p),
                        &p,
                        super::Invalid::OwnListener {
                            endpoint: ep,
                            port: port.number,
                        },
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_every_address_listeners() {
        let own = OwnListeners::new(
            &[
                "127.0.0.1:15001".parse().expect("addr"),
                "0.0.0.0:15000".parse().expect("addr"),
            ],
            vec![Ipv4Addr::new(10, 0, 0, 5)],
        );
        let has = |s: &str| own.contains(s.parse().expect("addr"));
        assert!(has("127.0.0.1:15001"));
        assert!(!has("127.0.0.2:15001"));
        assert!(has("127.0.0.9:15000") && has("10.0.0.5:15000"));
        assert!(!has("10.0.0.6:15000"));
    }
}
