//! What the model finds wrong with a configuration's meaning: one variant per problem,
//! its text the line `lb validate` prints after the origin and field (Istio's wording
//! where Istio has one), and its name the reason an Event on a rejected cluster object
//! carries.

use std::net::SocketAddrV4;

/// A problem with the meaning of a resource (the load step has checked its schema).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    // -- any resource
    /// A field lb parses and does not act on yet (a warning).
    #[error("{field} is valid Istio but lb does not enforce it yet{consequence}")]
    Unenforced {
        field: String,
        /// What happens instead, with its leading separator (may be empty).
        consequence: &'static str,
    },
    #[error("port number {0} is out of range 1-65535")]
    PortRange(i64),
    #[error("duplicate {kind} {namespace}/{name}: already defined at {at}")]
    Duplicate {
        kind: &'static str,
        namespace: String,
        name: String,
        /// `file:line` of the first definition.
        at: String,
    },

    // -- ServiceEntry
    #[error("ServiceEntry must have at least one host")]
    NoHost,
    #[error("invalid host {0:?}")]
    BadHost(String),
    #[error("address {0:?}: CIDR ranges are not supported, give single IPv4 addresses")]
    AddressRange(String),
    #[error("address {0:?} is IPv6: lb steers IPv4 only, connects to it pass through untouched")]
    AddressV6(String),
    #[error("invalid address {0:?}: expected an IPv4 address")]
    BadAddress(String),
    #[error("port name must be set")]
    NoPortName,
    #[error("targetPort {0} is out of range 1-65535")]
    TargetPortRange(i64),
    #[error("port number {0} is declared twice")]
    PortTwice(u16),
    #[error("port name {0:?} is declared twice")]
    PortNameTwice(String),
    #[error("ServiceEntry must have at least one port")]
    NoPort,
    #[error(
        "resolution {0} is not supported yet: list endpoint IP addresses with resolution STATIC"
    )]
    DnsResolution(String),
    #[error("unknown resolution {0:?}: expected STATIC, NONE, DNS or DNS_ROUND_ROBIN")]
    UnknownResolution(String),
    #[error("endpoint {0:?} is IPv6: lb steers IPv4 only, it is left out")]
    EndpointV6(String),
    #[error("invalid endpoint address {0:?}: expected an IPv4 address (resolution STATIC)")]
    BadEndpoint(String),
    #[error("endpoint port {0:?} names no port of the ServiceEntry")]
    EndpointPortName(String),
    #[error("host {host} is already declared by ServiceEntry {by}")]
    HostTaken { host: String, by: String },
    #[error("address {address} is claimed by both {first} and {second}")]
    AddressTaken {
        address: SocketAddrV4,
        first: String,
        second: String,
    },
    #[error(
        "endpoint {endpoint} (port {port}) is one of lb's own listeners: requests would loop through the proxy"
    )]
    OwnListener { endpoint: SocketAddrV4, port: u16 },

    // -- DestinationRule
    #[error("host must be set to a service host")]
    NoRuleHost,
    #[error("subset name must be set")]
    NoSubsetName,
    #[error("duplicate subset name {0:?}")]
    SubsetTwice(String),
    #[error("Referenced host not found: {0:?}: no ServiceEntry declares it")]
    RuleHostUnknown(String),
    #[error("host {host} already has DestinationRule {by}: merge the subsets into one")]
    RuleHostTaken { host: String, by: String },

    // -- VirtualService
    #[error("virtual service must have at least one host")]
    NoVirtualHost,
    #[error("wildcard host * is not allowed for virtual services bound to the mesh gateway")]
    MeshWildcard,
    #[error("host must not be empty")]
    EmptyHost,
    #[error("host {host} is listed twice in this VirtualService (also as {other:?})")]
    HostListedTwice { host: String, other: String },
    #[error(
        "The VirtualServices {first},{second} define the same host {host}: lb needs exactly one"
    )]
    HostTwice {
        first: String,
        second: String,
        host: String,
    },
    /// Not a host name Istio accepts (`host` cut to 64 characters).
    #[error("invalid host {host:?}: {why}")]
    HostName { host: String, why: &'static str },
    #[error("unknown datapath {0:?}: expected proxy or kernel")]
    UnknownDatapath(String),
    #[error(
        "invalid sticky-subsets key {0:?}: expected cookie:<name>, header:<name>, query:<name> or source-ip"
    )]
    BadStickyKey(String),
    #[error("unreachable: rule {0} before it matches every request")]
    Unreachable(usize),
    #[error("delegate is not supported yet")]
    Delegate,
    #[error("HTTP route or redirect or directResponse is required")]
    NoAction,
    #[error(
        "no rule matches every request: without the proxy, the kernel balances this service evenly over all its endpoints"
    )]
    NoCatchAll,
    #[error("destination is required")]
    NoDestination,
    #[error("destination.host is required")]
    NoDestinationHost,
    #[error("weight {0} < 0")]
    NegativeWeight(i64),
    #[error("total destination weight = 0: at least one weight must be positive")]
    ZeroWeights,
    #[error("Referenced host not found: {0:?}")]
    HostUnknown(String),
    #[error("Referenced host+subset in destinationrule not found: \"{host}+{subset}\"")]
    SubsetUnknown { host: String, subset: String },
    #[error(
        "subset {subset:?} selects no endpoint of {host}: connects picking it are refused (ECONNREFUSED)"
    )]
    SubsetEmpty { subset: String, host: String },
    #[error("port {port} is not a port of {host}")]
    NotAPort { port: u16, host: String },
    #[error("destination port is required: {0} has several ports")]
    PortRequired(String),

    // -- HTTP matches and actions
    #[error("only one of exact, prefix or regex may be set")]
    ManyMatchers,
    #[error("one of exact, prefix or regex must be set")]
    NoMatcher,
    #[error("prefix must not be empty")]
    EmptyPrefix,
    #[error("invalid regex {pattern:?}: {why}")]
    BadRegex { pattern: String, why: String },
    #[error("{0:?} is not a valid HTTP header name")]
    BadHeaderName(String),
    #[error("ignoreUriCase applies to exact and prefix only; the regex stays case-sensitive")]
    RegexCase,
    #[error("HTTP route cannot contain both {0} and {1}")]
    Both(&'static str, &'static str),
    #[error("HTTP route rule cannot contain both rewrite and redirect or directResponse")]
    RewriteAndLocal,
    #[error("redirect must specify URI, authority, scheme, or port")]
    EmptyRedirect,
    #[error("{0} is not a valid redirect code, must be 301, 302, 303, 307, or 308")]
    RedirectCode(i64),
    #[error("port number is out of range 1-65535")]
    RedirectPort,
    #[error("status {0} is not a valid HTTP status code")]
    Status(i64),
    #[error("body.bytes is not supported yet: use body.string")]
    BodyBytes,
    #[error("rewrite may only contain one of uri or uriRegexRewrite")]
    RewriteBoth,
    #[error("rewrite must specify uri, uriRegexRewrite, or authority")]
    EmptyRewrite,
    #[error("header {0:?} cannot be changed")]
    FixedHeader(String),
    #[error("{0} is matched twice: as a header and as its own field")]
    PseudoTwice(String),
    #[error("authority is rewritten twice: by rewrite.authority and by setting the Host header")]
    AuthorityTwice,
    #[error("invalid header {name:?}: {value:?}")]
    BadHeader { name: String, value: String },

    // -- traffic policy of an HTTP rule (Istio's wording)
    #[error("invalid duration {0:?}: expected a duration such as 10s, 0.5s or 250ms")]
    BadDuration(String),
    #[error("duration must be greater than 1ms")]
    DurationTooShort,
    #[error("attempts cannot be negative")]
    NegativeAttempts,
    #[error("http retry policy configured when attempts are set to 0 (disabled)")]
    RetryDisabled,
    #[error("{0:?} is not a valid retryOn policy")]
    BadRetryOn(String),
    #[error("HTTP fault injection must have an abort and/or a delay")]
    EmptyFault,
    #[error("httpStatus must be in range 200 - 599")]
    AbortStatus,
    #[error("percentage {0} is neither less than 0.0, nor greater than 100.0")]
    Percentage(String),
    #[error("delay must have fixedDelay")]
    NoFixedDelay,
    #[error("exponentialDelay not supported yet")]
    ExponentialDelay,

    // -- traffic policy of a DestinationRule
    #[error(
        "unknown load balancer {0:?}: expected LEAST_REQUEST, ROUND_ROBIN, RANDOM or PASSTHROUGH"
    )]
    UnknownBalance(String),
    #[error("outlier detection consecutive errors cannot be negative")]
    NegativeConsecutive,
    #[error("outlier detection {0} must be in range [0, 100]")]
    PercentRange(String),
    #[error(
        "consistentHash must set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName"
    )]
    HashKeyCount,
    #[error("name required for HttpCookie")]
    CookieName,
    #[error("connectionPool must set tcp or http")]
    EmptyConnectionPool,
    #[error("portTrafficPolicy must have valid port")]
    PortLevelWithoutPort,
    #[error("port traffic policy must have at least one field")]
    PortLevelEmpty,
    #[error("{0} must be a count, 0 or more")]
    NegativeCount(String),
    #[error("{0:?} is not a valid HTTP header name")]
    HashHeader(String),
    #[error("unknown consistentHash field {0:?}")]
    HashField(String),
    #[error(
        "{0:?}: expected a comma list of SERVICE_PORT[/udp]:NODE_PORT (`80:30785`, `53/udp:30053`), each service port one of spec.ports (of its protocol), each node port 1-65535"
    )]
    NodePorts(String),
    #[error("{0:?}: expected a comma list of IPv4 addresses, each one of spec.addresses")]
    ExternalAddresses(String),
}

impl Invalid {
    /// A field lb does not act on yet, with nothing more to say.
    pub fn unenforced(field: impl Into<String>) -> Self {
        Invalid::Unenforced {
            field: field.into(),
            consequence: "",
        }
    }

    /// A short name for the problem: the reason a Kubernetes Event on a rejected
    /// object gives.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::Unenforced { .. } => "Unenforced",
            Invalid::PortRange(_) | Invalid::TargetPortRange(_) | Invalid::RedirectPort => {
                "PortOutOfRange"
            }
            Invalid::Duplicate { .. } => "Duplicate",
            Invalid::HostTaken { .. }
            | Invalid::AddressTaken { .. }
            | Invalid::RuleHostTaken { .. }
            | Invalid::HostTwice { .. } => "Conflict",
            Invalid::OwnListener { .. } => "OwnListener",
            Invalid::HostUnknown(_) | Invalid::RuleHostUnknown(_) => "HostNotFound",
            Invalid::SubsetUnknown { .. } => "SubsetNotFound",
            Invalid::SubsetEmpty { .. } => "SubsetEmpty",
            Invalid::BadRegex { .. } => "InvalidRegex",
            Invalid::DnsResolution(_) | Invalid::Delegate | Invalid::BodyBytes => "Unsupported",
            _ => "Invalid",
        }
    }
}
