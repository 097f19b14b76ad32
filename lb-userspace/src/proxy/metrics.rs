//! Prometheus metrics of the proxy: requests per service, subset and response code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub subset: String,
    pub code: u16,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lb");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests handled by the proxy, by service, subset and response code",
            requests.clone(),
        );
        Self { registry, requests }
    }
}

impl Metrics {
    /// OpenMetrics text, with the kernel's counters (read from the maps) added.
    pub fn render(&self, kernel: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        let body = out.strip_suffix("# EOF\n").unwrap_or(&out).to_string();
        let mut body = body;
        for (name, help, v) in kernel {
            body.push_str(&format!(
                "# HELP lb_{name} {help}\n# TYPE lb_{name} counter\nlb_{name}_total {v}\n"
            ));
        }
        body.push_str("# EOF\n");
        body
    }
}
