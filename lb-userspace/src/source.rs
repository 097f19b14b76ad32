//! What the daemon reads its configuration from, and how current that is: one
//! snapshot the daemon publishes after every reload, for `/ready`, `/source`,
//! `/metrics` and the log.

use crate::kubernetes::Health;
use crate::model::accept::Rejected;

/// The daemon's sources after its last reload.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceStatus {
    /// The configuration folder, when files are a source.
    pub files: Option<String>,
    /// The Kubernetes watches, when the cluster is a source.
    pub kubernetes: Option<Health>,
    /// Unix ms of the last plan applied (None: none yet: not ready).
    pub applied_at_ms: Option<u64>,
    /// Cluster objects left out of the plan, with why (their last good version stays
    /// where they had one).
    pub rejected: Vec<Rejected>,
}

impl SourceStatus {
    /// `/ready`: ready once a plan is applied; a stale source is said, not failed on
    /// (the datapath keeps serving the last plan).
    pub fn readiness(&self) -> (bool, String) {
        let Some(_) = self.applied_at_ms else {
            return (false, "not ready: no configuration applied yet\n".into());
        };
        let mut s = "ready".to_string();
        if let Some(since) = self.kubernetes.as_ref().and_then(Health::stale_since_ms) {
            s.push_str(&format!(
                "; the Kubernetes source is stale since {} (the running plan stays)",
                crate::status::rfc3339_ms(since)
            ));
        }
        if !self.rejected.is_empty() {
            s.push_str(&format!("; {} object(s) rejected", self.rejected.len()));
        }
        s.push('\n');
        (true, s)
    }

    /// Gauges for `/metrics`: (name, help, labels, value).
    pub fn gauges(&self) -> Vec<(&'static str, &'static str, String, u64)> {
        let mut out = vec![(
            "config_rejected_objects",
            "Cluster objects left out of the plan because they failed validation",
            String::new(),
            self.rejected.len() as u64,
        )];
        if let Some(h) = &self.kubernetes {
            out.push((
                "source_stale",
                "1 while a Kubernetes watch fails (the running plan stays)",
                String::new(),
                u64::from(h.stale_since_ms().is_some()),
            ));
            for k in &h.kinds {
                out.push((
                    "source_objects",
                    "Objects the Kubernetes source holds, by kind",
                    format!("kind=\"{}\"", k.kind),
                    k.objects as u64,
                ));
            }
        }
        out
    }
}
