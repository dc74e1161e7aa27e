//! Builds the eBPF object from `probe-ebpf` and leaves it in `OUT_DIR/probe`,
//! where `src/loader.rs` embeds it.
//!
//! The object is built with the same stable toolchain as the rest of the
//! workspace: `RUSTC_BOOTSTRAP=1`, set here for the nested eBPF build only,
//! lets aya-build pass `-Z build-std=core` for the BPF target; the host crates
//! keep stable semantics. `bpf-linker` must be on PATH (`scripts/install.sh`
//! puts it there).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set by cargo")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("{manifest_dir} has no parent directory"))?;
    let ebpf_dir = workspace.join("probe-ebpf");
    let common_dir = workspace.join("probe-common");
    // aya-build watches the eBPF crate; the shared types live beside it.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", ebpf_dir.display()))?;
    // SAFETY: build scripts are single-threaded; nothing reads the environment
    // concurrently. The variable reaches only the nested cargo aya-build runs.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    aya_build::build_ebpf(
        [Package {
            name: "probe-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
}
