//! The decision for one request once its rule is selected: where it goes, or what lb
//! answers itself. One function for the proxy's two engines and `lb explain`, with
//! no side effects (what a request is counted as is counted where it is answered).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;

use super::policy::DestinationPolicy;
use super::{Action, Destination, Request, RouteTable, Rule, Selection, redirect_location};

/// What happens to a request.
#[derive(Debug)]
pub enum Verdict<'t> {
    /// Forwarded to an endpoint.
    Upstream(Target<'t>),
    /// Answered by lb.
    Local(Local<'t>),
}

/// Where a routed request goes.
#[derive(Debug)]
pub struct Target<'t> {
    pub rule: &'t Rule,
    pub destination: &'t Destination,
    pub endpoint: SocketAddr,
    /// Path and query after the rule's rewrite.
    pub path: String,
    /// The Host header to set (an authority rewrite, an absolute-form target, or a
    /// request without a Host value); None: the client's goes through.
    pub host: Option<String>,
    /// The endpoints of the destination's port: where a retry goes.
    pub endpoints: &'t [SocketAddr],
    /// Their in-flight counts (LEAST_REQUEST), and the index of `endpoint` there.
    pub in_flight: &'t [AtomicU32],
    pub index: usize,
    /// A fault's delay, when this request draws it (`DI`).
    pub delay: Option<std::time::Duration>,
    /// The destination's policy at the port the request goes to.
    pub policy: &'t super::policy::DestinationPolicy,
    /// Where copies of this request go (the mirrors whose share it drew).
    pub mirrors: Vec<SocketAddr>,
    /// A `Set-Cookie` for the answer: the destination hashes by a cookie this request
    /// lacks, generated here (`httpCookie.ttl`).
    pub set_cookie: Option<String>,
}

/// lb's own answer.
#[derive(Debug)]
pub struct Local<'t> {
    pub status: u16,
    /// Envoy's response flag: `NR` no route, `UH` no endpoint, `UF` not an endpoint
    /// of a configured service, `RD` redirect, `DR` direct response, `FI` a fault's
    /// abort.
    pub flag: &'static str,
    pub body: &'t str,
    /// A redirect's `Location`.
    pub location: Option<String>,
    /// The rule that answered (its response header edits apply to a direct response).
    pub rule: Option<&'t Rule>,
    /// The destination picked when it had no endpoint.
    pub destination: Option<&'t Destination>,
}

impl<'t> Local<'t> {
    fn new(status: u16, flag: &'static str, body: &'t str) -> Self {
        Local {
            status,
            flag,
            body,
            location: None,
            rule: None,
            destination: None,
        }
    }
}

/// How a destination and an endpoint are chosen.
pub trait Pick {
    /// One of a rule's destinations (by weight).
    fn destination<'d>(&mut self, dests: &'d [Destination]) -> Option<&'d Destination>;
    /// The index of one of `endpoints` (not empty) of `dest` under `policy` (its
    /// policy at their port), the one `key` (the request's consistent-hash key) maps
    /// to if there is one; None: none may take a request (all ejected).
    fn endpoint(
        &mut self,
        dest: &Destination,
        policy: &DestinationPolicy,
        endpoints: &[SocketAddr],
        in_flight: &[AtomicU32],
        key: Option<u64>,
    ) -> Option<usize>;
    /// Whether a fault with this share (0–100 %) fires.
    fn fires(&mut self, percent: f64) -> bool;
}

/// The proxy's choice: by weight, then uniformly among the endpoints.
pub struct Random;

impl Pick for Random {
    fn destination<'d>(&mut self, dests: &'d [Destination]) -> Option<&'d Destination> {
        super::pick_weighted(dests)
    }

    fn endpoint(
        &mut self,
        _: &Destination,
        _: &DestinationPolicy,
        eps: &[SocketAddr],
        _: &[AtomicU32],
        key: Option<u64>,
    ) -> Option<usize> {
        match key {
            Some(k) => super::policy::rendezvous(k, eps.iter().copied().enumerate()),
            None => Some(fastrand::usize(..eps.len())),
        }
    }

    fn fires(&mut self, percent: f64) -> bool {
        percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
    }
}

/// `lb explain`'s choice: destination `.0`, its first endpoint (explain asks once per
/// destination, so it shows what each share of the requests gets).
pub struct Forced(pub usize);

impl Pick for Forced {
    fn destination<'d>(&mut self, dests: &'d [Destination]) -> Option<&'d Destination> {
        dests.get(self.0)
    }

    /// The key's endpoint when the request has one (lb explain shows it), else the first.
    fn endpoint(
        &mut self,
        _: &Destination,
        _: &DestinationPolicy,
        eps: &[SocketAddr],
        _: &[AtomicU32],
        key: Option<u64>,
    ) -> Option<usize> {
        key.and_then(|k| super::policy::rendezvous(k, eps.iter().copied().enumerate()))
            .or(Some(0))
    }

    /// A fault for every request fires; `lb explain` reports the others with their share.
    fn fires(&mut self, percent: f64) -> bool {
        percent >= 100.0
    }
}

/// Decides what happens to `r`, whose rule `sel` selected. `host_as_sent`: the
/// request's Host header is `r.authority` (it may then go upstream as it is).
pub fn decide<'t>(
    table: &'t RouteTable,
    sel: &Selection<'t>,
    r: &Request<'_>,
    host_as_sent: bool,
    pick: &mut impl Pick,
) -> Verdict<'t> {
    let Some((_, rule)) = sel.rule else {
        return Verdict::Local(Local::new(404, "NR", "no route\n"));
    };
    let destinations = match &rule.action {
        Action::Redirect(rd) => {
            return Verdict::Local(Local {
                location: Some(redirect_location(rd, sel, r)),
                rule: Some(rule),
                ..Local::new(rd.code, "RD", "")
            });
        }
        Action::Direct { status, body } => {
            return Verdict::Local(Local {
                rule: Some(rule),
                ..Local::new(*status, "DR", body.as_deref().unwrap_or(""))
            });
        }
        Action::Route { destinations, .. } => destinations,
    };
    // Envoy's fault filter comes before the router: an aborted request reaches no
    // backend, a delayed one is routed after its delay.
    let fault = &rule.policy.fault;
    if let Some((status, share)) = fault.abort
        && pick.fires(share)
    {
        return Verdict::Local(Local {
            rule: Some(rule),
            ..Local::new(status, "FI", "fault filter abort")
        });
    }
    let delay = fault
        .delay
        .and_then(|(d, share)| pick.fires(share).then_some(d));
    // lb's sticky subsets: the request's key picks the destination, by weight.
    let sticky = rule.sticky.as_ref().and_then(|k| k.of(r));
    let dest = match sticky {
        Some(key) => super::policy::by_weight(key, destinations, |d| d.weight),
        None => pick.destination(destinations),
    };
    let Some(dest) = dest else {
        return Verdict::Local(Local {
            rule: Some(rule),
            ..Local::new(404, "NR", "no route\n")
        });
    };
    let dialled_port = r.dialled.map(|d| d.port());
    let port = dest.port_for(dialled_port);
    let endpoints = dest.endpoints_for(dialled_port);
    let in_flight = dest.in_flight_at(port);
    let policy = dest.policy_at(port);
    let mut set_cookie = None;
    let key = policy.hash.as_ref().and_then(|h| {
        h.of(r).or_else(|| match h {
            super::policy::HashKey::Cookie(c) => {
                let (key, set) = c.generated(r)?;
                set_cookie = Some(set);
                Some(key)
            }
            _ => None,
        })
    });
    let picked = match endpoints {
        [] => None,
        _ => pick.endpoint(dest, policy, endpoints, in_flight, key),
    };
    let Some(i) = picked else {
        return Verdict::Local(Local {
            rule: Some(rule),
            destination: Some(dest),
            ..Local::new(503, "UH", "no healthy upstream\n")
        });
    };
    let endpoint = endpoints[i];
    // Defence in depth: only ever forward to an endpoint of a configured service.
    let known = match endpoint {
        SocketAddr::V4(a) => table.endpoints.contains_key(&a),
        SocketAddr::V6(_) => false,
    };
    if !known {
        return Verdict::Local(Local {
            rule: Some(rule),
            destination: Some(dest),
            ..Local::new(502, "UF", "not an endpoint\n")
        });
    }
    let mut mirrors = Vec::new();
    for (m, share) in &rule.mirrors {
        let eps = m.endpoints_for(dialled_port);
        let port = m.port_for(dialled_port);
        if !eps.is_empty()
            && pick.fires(*share)
            && let Some(i) = pick.endpoint(m, m.policy_at(port), eps, m.in_flight_at(port), None)
        {
            mirrors.push(eps[i]);
        }
    }
    let (path, authority) = sel.rewritten(r);
    // Host reaches the backend as sent unless an authority rewrite, an absolute-form
    // target or an h2 request's :authority says otherwise.
    let host = (!host_as_sent || authority != r.authority).then_some(authority);
    Verdict::Upstream(Target {
        rule,
        destination: dest,
        endpoint,
        path,
        host,
        endpoints,
        in_flight,
        index: i,
        delay,
        policy,
        mirrors,
        set_cookie,
    })
}
