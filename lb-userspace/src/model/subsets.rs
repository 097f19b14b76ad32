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
    pub subsets: BTreeMap<String, crate::smallmap::Labels>,
    /// `spec.trafficPolicy`'s groups, and each subset's own.
    pub policy: super::traffic::Groups,
    pub subset_policies: BTreeMap<String, super::traffic::Groups>,
    /// Index of the resource in the loaded list.
    pub resource: usize,
}

impl SubsetRule {
    /// What applies to requests for `subset` (None: the whole host) at service port
    /// `port` (None: whatever the port).
    pub fn policy(
        &self,
        subset: Option<&str>,
        port: Option<u16>,
    ) -> crate::route::policy::DestinationPolicy {
        let own = subset.and_then(|s| self.subset_policies.get(s));
        own.cloned().unwrap_or_default().over(&self.policy, port)
    }

    /// Whether some port of `subset` has a policy of its own (`portLevelSettings`).
    pub fn has_port_policies(&self, subset: Option<&str>) -> bool {
        self.policy.has_ports()
            || subset
                .and_then(|s| self.subset_policies.get(s))
                .is_some_and(super::traffic::Groups::has_ports)
    }
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
    let errors_before = diags.iter().filter(|d| d.is_error()).count();
    let mut subsets = BTreeMap::new();
    let mut subset_policies = BTreeMap::new();
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
        if let Some(tp) = &s.traffic_policy {
            let groups = super::traffic::groups(l, &format!("{path}.trafficPolicy"), tp, diags);
            subset_policies.insert(name.clone(), groups);
        }
    }
    let policy = spec
        .traffic_policy
        .as_ref()
        .map(|tp| super::traffic::groups(l, "spec.trafficPolicy", tp, diags))
        .unwrap_or_default();
    ok &= diags.iter().filter(|d| d.is_error()).count() == errors_before;
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
        policy,
        subset_policies,
        resource: index,
    })
}
