# Sonde's commands:
#   make run     build the agent and run it standalone on examples/ (no cluster)
#   make test    run the whole test suite (unit, privileged eBPF, end-to-end)
#   make images  build the operator, agent and sonde-query images as OCI archives (no engine needed)
# Both install what they need first (scripts/install.sh), into SONDE_CACHE.

SONDE_CACHE ?= /var/cache/sonde
CARGO_TARGET_DIR ?= $(SONDE_CACHE)/target
PATH := $(SONDE_CACHE)/bin:$(HOME)/.cargo/bin:$(PATH)
export SONDE_CACHE CARGO_TARGET_DIR PATH

AGENT := $(CARGO_TARGET_DIR)/release/probe-agent

# Where `make images` writes the OCI archives.
SONDE_IMAGES ?= $(CARGO_TARGET_DIR)/images
export SONDE_IMAGES

.PHONY: install install-test run build images test lint unit-test privileged-test bench bench-capture bench-sockets bench-storage bench-detection bench-agent bench-operator

install:
	@scripts/install.sh

# The tests also need the end-to-end harness: a Kubernetes control plane,
# Prometheus, an OpenTelemetry Collector and Python Arrow clients.
install-test: install
	@scripts/install-harness.sh

# The agent, and the demo application the examples trace.
build: install
	cargo build --release --locked -p probe-agent --bin probe-agent
	cargo build --release --locked -p probe-capture --bin sonde-demo-app

run: build
	scripts/run-standalone.sh

# One OCI image archive per component, tagged with the workspace version
# (scripts/build-images.sh; the Containerfiles beside each component build
# the same images with a container engine).
images: install
	cargo build --release --locked -p probe-agent --bin probe-agent -p operator --bin sonde-operator -p sonde-query --bin sonde-query
	scripts/build-images.sh

test: install-test lint unit-test privileged-test

lint:
	cargo fmt --all --check
	cargo clippy --locked --workspace --exclude probe-ebpf --all-targets -- -D warnings
	scripts/clippy-ebpf.sh

# probe-ebpf only builds for the BPF target; its lints run in scripts/clippy-ebpf.sh.
unit-test:
	cargo test --locked --workspace --exclude probe-ebpf --lib --bins

# Tests that load eBPF programs and start real components; they need root.
privileged-test:
	cargo test --locked --workspace --exclude probe-ebpf --test '*' -- --test-threads=2

# Benchmarks are not tests: they measure and print ratios, asserting nothing.
# Benchmarks write their parts of one report into $(BENCH_DIR): each
# bench-* target below writes NAME.md and NAME.json there; `make bench` runs
# them all and joins the parts into $(BENCH_DIR)/report.md and report.json.
# A new benchmark is one more `bench: bench-NAME` line and its target.
BENCH_DIR := $(CARGO_TARGET_DIR)/bench

bench: bench-capture bench-sockets bench-storage bench-detection bench-agent
	@scripts/bench-report.sh $(BENCH_DIR) $^

# Capture: overhead against hand-written programs, completeness, ingest and
# decode cost. Builds on the capture crate alone (no query engine).
bench-capture: install
	cargo build --release --locked -p probe-capture --bin sonde-bench --bin sonde-loadgen --bin sonde-demo-app
	$(CARGO_TARGET_DIR)/release/sonde-bench --out $(BENCH_DIR) --name capture > /dev/null

# Socket tracing: what the socket programs cost the processes they trace
# (loopback TCP write + read untraced, on an untracked, a tracked binary and
# a tracked HTTP connection; file and pipe reads untraced and attached).
bench-sockets: install
	cargo build --release --locked -p probe-capture --bin sonde-sockets-bench
	$(CARGO_TARGET_DIR)/release/sonde-sockets-bench --out $(BENCH_DIR) --name sockets > /dev/null

# Storage: rows held per MiB, plain and compacted, side by side; append and
# GROUP BY costs. Builds on the store crate alone.
bench-storage: install
	cargo bench --locked -p probe-store --bench density -- --out $(BENCH_DIR)

# Anomaly detection: CPU per series per rollup interval, by method.
bench-detection: install
	cargo bench --locked -p probe-store --bench detection -- --out $(BENCH_DIR)

# The whole agent: a whole-table DoGet against pyarrow's own Flight server,
# a GROUP BY with an exact p99 over Flight SQL against DuckDB, and memory
# against the table budget under steady load (about 14 minutes; pass
# BENCH_AGENT_ARGS="--memory-minutes 1" for a quick check). Its Python
# clients run in a virtualenv of its own, $(SONDE_CACHE)/venv-bench.
bench-agent: install
	cargo build --release --locked -p probe-agent --bin probe-agent -p probe-capture --bin sonde-demo-app -p e2e --bin sonde-agent-bench
	$(CARGO_TARGET_DIR)/release/sonde-agent-bench --out $(BENCH_DIR) --name agent $(BENCH_AGENT_ARGS) > /dev/null

# The operator against 1,000 Node objects and 20,000 pods on a real
# apiserver, with simulated agents: sync time, memory, writes, latencies.
bench-operator: install-test
	cargo bench --locked -p operator --bench scale
