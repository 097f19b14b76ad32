//! The configuration path, fuzzed: any bytes as a configuration file go through the
//! loader (YAML split with its bounds, the Istio schema), the model and, when valid,
//! the compiler. A crash is a panic, an overflowed stack or a run past libFuzzer's
//! time or memory limit: bad input must end as a diagnostic, never worse. The loader's
//! one-pass path must load what its exact path loads (load/fast.rs): any difference
//! is a crash too.
#![no_main]

use std::path::Path;
use std::sync::Arc;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let (mut loaded, mut diags) = (Vec::new(), Vec::new());
    lb::load::load_text(Path::new("fuzz.yaml"), &text, &mut loaded, &mut diags);
    let (mut exact, mut exact_diags) = (Vec::new(), Vec::new());
    lb::load::load_text_exact(Path::new("fuzz.yaml"), &text, &mut exact, &mut exact_diags);
    let seen = |l: &[lb::load::Loaded]| -> Vec<String> {
        l.iter()
            .map(|l| {
                let at = (l.kind, &l.namespace, &l.name, l.doc.first_line);
                format!("{at:?} {:?}", l.resource())
            })
            .collect()
    };
    assert_eq!(seen(&loaded), seen(&exact), "the one-pass path loads otherwise");
    assert_eq!(format!("{diags:?}"), format!("{exact_diags:?}"));
    let loaded: Vec<Arc<lb::load::Loaded>> = loaded.into_iter().map(Arc::new).collect();
    let model = lb::model::build(&loaded, &mut diags);
    if !diags.iter().any(lb::diagnostic::Diagnostic::is_error) {
        let _ = lb::compile::plan(model);
    }
});
