//! DestinationRule subsets: named label selectors over a service's endpoints.

use std::collections::BTreeMap;

use super::Invalid;
use crate::diagnostic::Diagnostic;
use crate::load::{Loaded, istio};

use crate::hosts;

/// DestinationRules by canonical host.
pub type SubsetRules = super::HashMap<String, SubsetRule>;

/// The subsets a DestinationRule defines for one host.
#[derive(Debug, Clone)]
pub struct SubsetRule {
    /// Canonical host the rule is for.
    pub host: String,
    /// `ns/name` of the DestinationRule.
    pub source: String,
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// Index of the resource in the loaded list.
    pub resource: usize,
}

/// Reads one DestinationRule.
pub fn from_destination_rule(
    l: &Loaded,
    index: usize,
    spec: &istio::DestinationRuleSpec,
    diags: &mut Vec<Diagnostic>,
) -> Option<SubsetRule> {
    let host = match spec.host.as_deref() {
        Some(h) if !h.is_empty() && h != "*" => hosts::canonical(h, &l.namespace),
        _ => {
            diags.push(Diagnostic::error(
                l.at("spec.host"),
                "spec.host",
                Invalid::NoRuleHost,
            ));
            return None;
        }
    };
    let mut subsets = BTreeMap::new();
    let mut ok = true;
    for (i, s) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        let name = s.name.clone().unwrap_or_default();
        if name.is_empty() {
            diags.push(Diagnostic::error(
                l.at(&path),
                format!("{path}.name"),
                Invalid::NoSubsetName,
            ));
            ok = false;
            continue;
        }
        if subsets.insert(name.clone(), s.labels.clone()).is_some() {
            diags.push(Diagnostic::error(
                l.at(&path),
                format!("{path}.name"),
                Invalid::SubsetTwice(name.clone()),
            ));
            ok = false;
        }
        super::warn_unenforced(
            l,
            &path,
            &[("trafficPolicy", s.traffic_policy.is_some())],
            diags,
        );
    }
    if let Some(tp) = &spec.traffic_policy {
        let simple = tp
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.simple.as_deref());
        // RANDOM is exactly what connect4 does; anything else is not enforced yet.
        let only_random = simple == Some("RANDOM")
            && tp.connection_pool.is_none()
            && tp.outlier_detection.is_none()
            && tp.tls.is_none()
            && tp.port_level_settings.is_empty();
        if !only_random {
            let problem = Invalid::Unenforced {
                field: "trafficPolicy".into(),
                consequence: " (endpoints are picked at random)",
            };
            diags.push(Diagnostic::warning(
                l.at("spec.trafficPolicy"),
                "spec.trafficPolicy",
                problem,
            ));
        }
    }
    super::warn_unenforced(
        l,
        "spec",
        &[
            ("exportTo", !spec.export_to.is_empty()),
            ("workloadSelector", spec.workload_selector.is_some()),
        ],
        diags,
    );
    ok.then(|| SubsetRule {
        host,
        source: format!("{}/{}", l.namespace, l.name),
        subsets,
        resource: index,
    })
}
