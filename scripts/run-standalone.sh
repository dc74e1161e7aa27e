#!/usr/bin/env bash
# `make run`: the agent in standalone mode on examples/, with the demo
# application the uprobe, uretprobe and USDT examples trace running beside it.
#
# The examples name /usr/local/bin/sonde-demo-app, so the freshly built demo
# app is installed there. Ctrl-C stops both; the agent detaches everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${CARGO_TARGET_DIR:-${SONDE_CACHE:-/var/cache/sonde}/target}/release
demo=/usr/local/bin/sonde-demo-app
if ! cmp -s "$bin/sonde-demo-app" "$demo"; then
    install -m 0755 "$bin/sonde-demo-app" "$demo"
fi
# Five requests a second, each sleeping 200 ms, for at most a day.
"$demo" --requests 432000 --sleep-us 200000 >/dev/null &
demo_pid=$!
trap 'kill "$demo_pid" 2>/dev/null || true' EXIT

cat >&2 <<MSG
run: sonde-demo-app is serving requests (pid $demo_pid); starting the agent.
run: a summary per Tracepoint every 10 s shows what is captured and lost.
run: metrics on http://127.0.0.1:9464/metrics; tables over Arrow Flight on 127.0.0.1:50051.
run: inspect the programs with 'bpftool prog show'; Ctrl-C stops everything.
MSG
"$bin/probe-agent" --standalone --manifests examples --metrics-addr 127.0.0.1:9464 "$@"
