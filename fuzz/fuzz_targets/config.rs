//! The configuration path, fuzzed: any bytes as a configuration file go through the
//! loader (YAML split with its bounds, the Istio schema), the model and, when valid,
//! the compiler. A crash is a panic, an overflowed stack or a run past libFuzzer's
//! time or memory limit: bad input must end as a diagnostic, never worse.
#![no_main]

use std::path::Path;
use std::sync::Arc;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let (mut loaded, mut diags) = (Vec::new(), Vec::new());
    lb::load::load_text(Path::new("fuzz.yaml"), &text, &mut loaded, &mut diags);
    let loaded: Vec<Arc<lb::load::Loaded>> = loaded.into_iter().map(Arc::new).collect();
    let model = lb::model::build(&loaded, &mut diags);
    if !diags.iter().any(lb::diagnostic::Diagnostic::is_error) {
        let _ = lb::compile::plan(model);
    }
});
