# Sonde's two commands:
#   make run   build the agent and run it standalone on examples/ (no cluster)
#   make test  run the whole test suite (unit, privileged eBPF, end-to-end)
# Both install what they need first (scripts/install.sh), into SONDE_CACHE.

SONDE_CACHE ?= /var/cache/sonde
CARGO_TARGET_DIR ?= $(SONDE_CACHE)/target
PATH := $(SONDE_CACHE)/bin:$(HOME)/.cargo/bin:$(PATH)
export SONDE_CACHE CARGO_TARGET_DIR PATH

AGENT := $(CARGO_TARGET_DIR)/release/probe-agent

.PHONY: install run build test lint unit-test privileged-test

install:
	@scripts/install.sh

build: install
	cargo build --release --locked -p probe-agent

run: build
	$(AGENT) --standalone --manifests examples

test: install lint unit-test privileged-test

lint:
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	scripts/clippy-ebpf.sh

unit-test:
	cargo test --locked --workspace --lib --bins

# Tests that load eBPF programs and start real components; they need root.
privileged-test:
	cargo test --locked --workspace --tests --exclude probe-common -- --test-threads=2
