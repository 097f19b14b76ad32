//! The eBPF object built by build.rs (lb-ebpf), embedded in the binary.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::DatapathError;

/// Names a file to load instead of the embedded object: for eBPF development, and the
/// upgrade test (a build whose programs differ). Read once, at first use.
pub const OVERRIDE_ENV: &str = "LB_EBPF_OBJECT";

/// The ELF bytes lb attaches: the embedded object, or the file [`OVERRIDE_ENV`] names.
pub fn bytes() -> Result<&'static [u8], DatapathError> {
    static OVERRIDE: OnceLock<Option<(PathBuf, std::io::Result<Vec<u8>>)>> = OnceLock::new();
    let file = OVERRIDE.get_or_init(|| {
        let path = PathBuf::from(std::env::var_os(OVERRIDE_ENV)?);
        let read = std::fs::read(&path);
        if read.is_ok() {
            tracing::warn!(path = %path.display(), "{OVERRIDE_ENV}: using this eBPF object, not the embedded one");
        }
        Some((path, read))
    });
    match file {
        None => Ok(embedded()),
        Some((_, Ok(b))) => Ok(b),
        Some((path, Err(e))) => Err(DatapathError::io(
            path,
            std::io::Error::new(e.kind(), format!("{OVERRIDE_ENV}: {e}")),
        )),
    }
}

/// The object built with this binary, aligned as aya's loader needs.
pub fn embedded() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"))
}
