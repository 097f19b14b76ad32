//! Builds the eBPF programs (lb-ebpf) for the BPF target and leaves the object in
//! OUT_DIR, where `src/datapath/object.rs` embeds it into the `lb` binary.
use anyhow::anyhow;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("lb-ebpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {root:?}"))?;
    // The eBPF crate is built with the toolchain rust-toolchain.toml pins (bpf-linker's
    // LLVM must match rustc's); RUSTC_BOOTSTRAP for its `-Z build-std=core`.
    let toolchain = std::env::var("LB_EBPF_TOOLCHAIN").unwrap_or_else(|_| "1.98.0".into());
    println!("cargo:rerun-if-env-changed=LB_EBPF_TOOLCHAIN");
    for f in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let common = root.with_file_name("lb-common");
    println!("cargo:rerun-if-changed={}", common.join("src").display());
    // SAFETY: build scripts are single-threaded here; aya-build reads it from our env.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
