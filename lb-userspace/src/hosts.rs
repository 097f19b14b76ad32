//! Istio host names: short names expand in the resource's namespace, and a service is
//! reachable by every short or long form of its name and by its address.

/// The cluster-local suffix short names expand with.
const CLUSTER_SUFFIX: &str = "svc.cluster.local";

/// Canonical form of `host` written in namespace `ns`: lower case, no trailing dot, a
/// name without dots expanded to `<name>.<ns>.svc.cluster.local`.
pub fn canonical(host: &str, ns: &str) -> String {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h.contains('.') || h.contains('*') || h.parse::<std::net::IpAddr>().is_ok() {
        h
    } else {
        format!("{h}.{ns}.{CLUSTER_SUFFIX}")
    }
}

/// Every form a service's canonical host can be written in: `name.ns.svc.cluster.local`
/// also answers to `name.ns` and `name.ns.svc` (and to `name` in its own namespace,
/// which [`canonical`] already expands).
pub fn aliases(fqdn: &str) -> Vec<String> {
    let mut out = vec![fqdn.to_string()];
    if let Some(rest) = fqdn.strip_suffix(&format!(".{CLUSTER_SUFFIX}"))
        && rest.matches('.').count() == 1
    {
        out.push(rest.to_string());
        out.push(format!("{rest}.svc"));
    }
    out
}

/// Short display name: `name` for `name.ns.svc.cluster.local`, else the host itself.
pub fn short_name(fqdn: &str) -> &str {
    match fqdn.strip_suffix(&format!(".{CLUSTER_SUFFIX}")) {
        Some(rest) => rest.split('.').next().unwrap_or(rest),
        None => fqdn,
    }
}

/// Whether a wildcard host (`*.example.com`) covers `host`: one or more labels, never
/// the bare domain.
pub fn wildcard_covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') => {
            host.len() > suffix.len() && host.ends_with(suffix)
        }
        _ => false,
    }
}

/// Why `host` is not a host name Istio's validation accepts, if it is not: DNS labels
/// (letters, digits, inner `-`) of at most 63 characters, 253 in all; `*` only as the
/// whole first label, or alone; an IP address.
pub fn invalid(host: &str) -> Option<&'static str> {
    if host == "*" || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    if host.len() > 253 {
        return Some("longer than 253 characters");
    }
    let named = host.strip_prefix("*.").unwrap_or(host);
    for label in named.split('.') {
        let inner = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
        if label.is_empty() {
            return Some("an empty label");
        }
        if label.len() > 63 {
            return Some("a label longer than 63 characters");
        }
        if !label.bytes().all(inner) || label.starts_with('-') || label.ends_with('-') {
            return Some("a label of other than letters, digits and inner '-'");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_follow_dns_and_istio_wildcards() {
        for ok in [
            "*",
            "*.example.com",
            "a-b.c",
            "backend-service.default.svc.cluster.local",
            "10.0.0.1",
        ] {
            assert_eq!(invalid(ok), None, "{ok}");
        }
        let long_label = "a".repeat(64);
        let long = vec!["abc"; 70].join(".");
        for (bad, why) in [
            ("a..b", "an empty label"),
            (long_label.as_str(), "a label longer than 63 characters"),
            (long.as_str(), "longer than 253 characters"),
            (
                "foo*.com",
                "a label of other than letters, digits and inner '-'",
            ),
            (
                "-a.com",
                "a label of other than letters, digits and inner '-'",
            ),
            (
                "a_b.com",
                "a label of other than letters, digits and inner '-'",
            ),
        ] {
            assert_eq!(invalid(bad), Some(why), "{bad}");
        }
    }

    #[test]
    fn short_names_expand_in_their_namespace() {
        assert_eq!(
            canonical("backend-service", "default"),
            "backend-service.default.svc.cluster.local"
        );
        assert_eq!(
            canonical("Backend-Service.", "prod"),
            "backend-service.prod.svc.cluster.local"
        );
        assert_eq!(
            canonical("api.wilsontest.com", "prod"),
            "api.wilsontest.com"
        );
        assert_eq!(canonical("127.10.0.1", "prod"), "127.10.0.1");
    }

    #[test]
    fn cluster_hosts_answer_to_every_form() {
        let a = aliases("backend-service.default.svc.cluster.local");
        assert!(a.contains(&"backend-service.default".to_string()));
        assert!(a.contains(&"backend-service.default.svc".to_string()));
        assert_eq!(
            aliases("api.example.com"),
            vec!["api.example.com".to_string()]
        );
        assert_eq!(
            short_name("backend-service.default.svc.cluster.local"),
            "backend-service"
        );
    }

    #[test]
    fn wildcards_need_at_least_one_label() {
        assert!(wildcard_covers("*.example.com", "a.example.com"));
        assert!(wildcard_covers("*.example.com", "a.b.example.com"));
        assert!(!wildcard_covers("*.example.com", "example.com"));
        assert!(!wildcard_covers("*", "example.com"));
    }
}
