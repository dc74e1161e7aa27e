#!/usr/bin/env bash
# Installs what building and testing Sonde needs, and skips what is already there.
#
# Everything downloaded or built lands in one cache folder outside the clone
# ($SONDE_CACHE, default /var/cache/sonde) so that a rerun takes seconds.
# Prints the environment the Makefile sources (PATH etc.) on the last line.
#
# SONDE_BUILD_ONLY=1 installs only what building the release needs (rust-src,
# bpf-linker): the Containerfiles use it, where nothing is mounted or tested.
set -euo pipefail

SONDE_CACHE=${SONDE_CACHE:-/var/cache/sonde}
BPF_LINKER_VERSION=0.13.0
mkdir -p "$SONDE_CACHE/bin"

log() { printf 'install: %s\n' "$*" >&2; }

# --- Rust: the eBPF crate is built with -Z build-std=core, which needs rust-src.
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    log "adding rustup component rust-src"
    rustup component add rust-src >&2
fi

# --- bpf-linker, linked against rustc's own LLVM so that the bitcode rustc emits
# and the LLVM that links it always agree. The LLVM major comes from rustc itself.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ -z "$llvm_major" ]; then
    log "cannot read the LLVM version from 'rustc -vV'"
    exit 1
fi
sysroot=$(rustc --print sysroot)
stamp="$SONDE_CACHE/bin/.bpf-linker-$BPF_LINKER_VERSION-llvm$llvm_major-$(rustc -V | cut -d' ' -f2)"
if [ ! -x "$SONDE_CACHE/bin/bpf-linker" ] || [ ! -e "$stamp" ]; then
    log "building bpf-linker $BPF_LINKER_VERSION against rustc's LLVM $llvm_major (a few minutes, once)"
    libllvm=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n 1)
    if [ -z "$libllvm" ]; then
        log "rustc's sysroot $sysroot/lib has no libLLVM.so.*; cannot link bpf-linker"
        exit 1
    fi
    mkdir -p "$SONDE_CACHE/rustc-llvm/lib"
    ln -sf "$libllvm" "$SONDE_CACHE/rustc-llvm/lib/libLLVM.so"
    # The rpath lets bpf-linker find rustc's libLLVM outside cargo too.
    LLVM_PREFIX="$SONDE_CACHE/rustc-llvm" \
    RUSTFLAGS="-C link-args=-Wl,-rpath,$sysroot/lib" \
    CARGO_TARGET_DIR="$SONDE_CACHE/target-tools" \
        cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked --force \
        --no-default-features --features "llvm-$llvm_major" \
        --root "$SONDE_CACHE" >&2
    rm -f "$SONDE_CACHE"/bin/.bpf-linker-*
    touch "$stamp"
fi

if [ "${SONDE_BUILD_ONLY:-0}" = 1 ]; then
    log "ready to build (cache: $SONDE_CACHE)"
    exit 0
fi

# --- Kernel interfaces the agent uses: tracefs (tracepoint formats, ids) and bpffs.
if [ "$(id -u)" = 0 ]; then
    if [ ! -e /sys/kernel/tracing/events ]; then
        log "mounting tracefs at /sys/kernel/tracing"
        mount -t tracefs nodev /sys/kernel/tracing
    fi
    if ! mountpoint -q /sys/fs/bpf; then
        log "mounting bpffs at /sys/fs/bpf"
        mount -t bpf bpf /sys/fs/bpf
    fi
fi

# --- Debian packages: bpftool to inspect loaded programs; binutils (readelf,
# objdump, objcopy), which the ELF tests compare their offsets against.
need_pkgs=()
command -v bpftool >/dev/null 2>&1 || need_pkgs+=(bpftool)
command -v readelf >/dev/null 2>&1 || need_pkgs+=(binutils)
if [ ${#need_pkgs[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${need_pkgs[*]}"
    apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >&2 ||
        { log "could not install ${need_pkgs[*]}"; exit 1; }
fi
log "ready (cache: $SONDE_CACHE)"
