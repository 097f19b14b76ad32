//! The kernel side as user space sees it: the embedded eBPF object.
pub mod object;
