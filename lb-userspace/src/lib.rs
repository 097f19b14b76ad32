//! lb: Istio traffic rules enforced on a Linux node — weights in the kernel at
//! connect(), request-level rules in lb's proxy.
//!
//! The modules follow the data flow: [`load`] (YAML → Istio types) → [`model`]
//! (validated services and splits) → [`compile`] (pure: model → map image) →
//! [`apply`] (the only writer of the pinned maps) → [`datapath`] (the eBPF object).

pub mod apply;
pub mod backend;
pub mod compile;
pub mod datapath;
pub mod demo;
pub mod diagnostic;
pub mod explain;
pub mod fasthash;
pub mod hosts;
pub mod keeper;
pub mod kubernetes;
pub mod load;
pub mod model;
pub mod probe;
pub mod proxy;
pub mod route;
pub mod run;
pub mod smallmap;
pub mod source;
pub mod status;
pub mod watch;
