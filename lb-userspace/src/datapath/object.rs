//! The eBPF object built by build.rs (lb-ebpf), embedded in the binary.

/// The ELF bytes of lb-ebpf, aligned as aya's loader needs.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"))
}
