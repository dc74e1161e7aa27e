#!/usr/bin/env bash
# Clippy for the no_std eBPF crate, which only builds for the BPF target.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTC_BOOTSTRAP=1 cargo clippy --locked -p probe-ebpf \
    --target bpfel-unknown-none -Z build-std=core -- -D warnings
