#!/usr/bin/env bash
# Clippy for the no_std eBPF crate, which only builds for the BPF target.
#
# In a target directory of its own: RUSTC_BOOTSTRAP is part of every crate's
# fingerprint, so host crates (proc macros, build scripts) checked with it
# in the shared directory would be rebuilt by the next ordinary build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTC_BOOTSTRAP=1 cargo clippy --locked -p probe-ebpf \
    --target-dir "${CARGO_TARGET_DIR:-target}/clippy-ebpf" \
    --target bpfel-unknown-none -Z build-std=core -- -D warnings
