//! Builds the eBPF object from `probe-ebpf` and leaves it in `OUT_DIR/probe`,
//! where `src/loader.rs` embeds it.
//!
//! The object is built with the same stable toolchain as the rest of the
//! workspace: `RUSTC_BOOTSTRAP=1`, set for the nested eBPF build only, lets
//! aya-build pass `-Z build-std=core` for the BPF target; the host crates
//! keep stable semantics. `bpf-linker` must be on PATH (`scripts/install.sh`
//! puts it there).
//!
//! aya-build forwards every line the nested cargo prints as a
//! `cargo:warning`, which cargo then replays on every later build, even
//! when nothing changed. So this script runs itself as a child that calls
//! aya-build, passes the child's build directives on, and shows the nested
//! output only when the build fails.
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

/// Set in the child that runs aya-build.
const CHILD: &str = "SONDE_EBPF_BUILD_CHILD";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(CHILD).is_some() {
        return build_ebpf();
    }
    let me = std::env::current_exe().context("cannot find the build script's own path")?;
    let output = Command::new(&me)
        .env(CHILD, "1")
        .env("RUSTC_BOOTSTRAP", "1")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", me.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut nested = Vec::new();
    for line in stdout.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(message) => nested.push(message),
            None => println!("{line}"),
        }
    }
    if !output.status.success() {
        for message in &nested {
            println!("cargo:warning={message}");
        }
        bail!(
            "building the eBPF object failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set by cargo")?;
    // probe-agent/capture → the workspace root.
    let workspace = std::path::Path::new(&manifest_dir)
        .ancestors()
        .nth(2)
        .ok_or_else(|| anyhow!("{manifest_dir} is not two folders below the workspace"))?;
    let ebpf_dir = workspace.join("probe-ebpf");
    let common_dir = workspace.join("probe-common");
    // aya-build watches the eBPF crate; the shared types live beside it.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "probe-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
}
