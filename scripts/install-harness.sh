#!/usr/bin/env bash
# Installs what the end-to-end harness (e2e/) runs, and skips what is already there:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet, built from pinned releases;
#   containerd, runc and the CNI plugins, from Debian's packages (the real node);
#   an OpenTelemetry Collector built with the official collector builder;
#   Prometheus and promtool, taken from Debian's package;
#   helm, built from its pinned release, to lint, render and install the chart;
#   a Python virtualenv with pyarrow and the ADBC Flight SQL driver.
#
# Versions live in scripts/harness/versions.env (the e2e crate reads the same
# file). Everything lands in $SONDE_CACHE (default /var/cache/sonde) in folders
# keyed by version, with Go's module and build caches there too, so a rerun
# takes about a second and a version bump rebuilds only what changed.
# The first run builds Kubernetes from source: about 10 minutes on 2 cores.
#
# Environment: SONDE_CACHE, SONDE_GO_JOBS (parallel Go compile jobs, default 2).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
harness="$here/harness"
# shellcheck source=harness/versions.env
. "$harness/versions.env"

SONDE_CACHE=${SONDE_CACHE:-/var/cache/sonde}
mkdir -p "$SONDE_CACHE/logs"

log() { printf 'install-harness: %s\n' "$*" >&2; }
fail() {
    printf 'install-harness: FAILED: %s\n' "$*" >&2
    exit 1
}

# Runs a command with its output in $SONDE_CACHE/logs/<name>.log; on failure
# shows the end of that log and names what failed.
run_logged() {
    local name=$1
    shift
    local logfile="$SONDE_CACHE/logs/$name.log"
    if ! "$@" >"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2 || true
        fail "$name: '$*' failed (full log: $logfile)"
    fi
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || fail "'$1' is not installed; $2"
}

# Go's caches stay inside the cache folder so that reruns reuse every module
# and compiled package. GOTOOLCHAIN=local: build with the installed Go only.
export GOPATH="$SONDE_CACHE/go"
export GOMODCACHE="$SONDE_CACHE/go/pkg/mod"
export GOCACHE="$SONDE_CACHE/go/cache"
export GOTOOLCHAIN=local
export GOFLAGS="-buildvcs=false -p=${SONDE_GO_JOBS:-2}"

go_build_into() { # <component> <module dir> <output dir> <go build args...>
    local name=$1 dir=$2 out=$3
    shift 3
    need_cmd go "the harness builds $name from source with Go"
    mkdir -p "$out"
    rm -rf "$out"/.build.* # left by an interrupted run
    local tmp
    tmp=$(mktemp -d "$out/.build.XXXXXX")
    log "$name: building (several minutes on the first run; log: $SONDE_CACHE/logs/$name.log)"
    (cd "$dir" && run_logged "$name" go build -trimpath -o "$tmp/" "$@")
    # Move into place only once everything built, so a half-done build is never taken for a finished one.
    mv -f "$tmp"/* "$out/"
    rmdir "$tmp"
}

# --- etcd ---------------------------------------------------------------------
etcd_bin="$SONDE_CACHE/etcd/$ETCD_VERSION/bin/etcd"
if [ -x "$etcd_bin" ]; then
    log "etcd $ETCD_VERSION: cached"
else
    grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$harness/etcd/go.mod" ||
        fail "etcd: scripts/harness/etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION (versions.env)"
    go_build_into etcd "$harness/etcd" "$(dirname "$etcd_bin")" -ldflags "-s -w" .
    # The module path ends in /etcd, so that is the binary's name.
    [ -x "$etcd_bin" ] || fail "etcd: the build produced no $etcd_bin"
fi

# --- kube-apiserver and kube-controller-manager ------------------------------
k8s_bin="$SONDE_CACHE/k8s/$KUBERNETES_VERSION/bin"
if [ -x "$k8s_bin/kube-apiserver" ] && [ -x "$k8s_bin/kube-controller-manager" ] && [ -x "$k8s_bin/kubelet" ] && [ -x "$k8s_bin/kube-scheduler" ]; then
    log "kubernetes $KUBERNETES_VERSION: cached"
else
    grep -Eq "^(require)?\s*k8s.io/kubernetes $KUBERNETES_VERSION( // indirect)?\$" "$harness/kubernetes/go.mod" ||
        fail "kubernetes: scripts/harness/kubernetes/go.mod does not require k8s.io/kubernetes $KUBERNETES_VERSION (versions.env)"
    minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
    # What the release build stamps in, so that /version and kubectl report the real release.
    ldflags="-s -w"
    ldflags+=" -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
    ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
    ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
    go_build_into kubernetes "$harness/kubernetes" "$k8s_bin" -ldflags "$ldflags" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet
fi

# --- the real node's container runtime: containerd, runc, CNI plugins ----------
# Debian's packages, used as installed (the real-node test starts containerd
# with a configuration of its own; no service is enabled).
missing=()
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
if [ ${#missing[@]} -eq 0 ]; then
    log "containerd, runc, CNI plugins: installed"
else
    need_cmd apt-get "the real node's runtime comes from Debian's packages: ${missing[*]}"
    log "installing Debian's ${missing[*]}"
    run_logged apt-update apt-get update
    DEBIAN_FRONTEND=noninteractive run_logged runtime-install apt-get install -y -q "${missing[@]}"
fi

# --- real servers and clients the baseline-table tests trace ----------------------
# Debian's python3 (its ssl module links the system's libssl.so.3), openssl
# for a self-signed certificate, dnsmasq and dig for DNS.
missing=()
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v dnsmasq >/dev/null 2>&1 || missing+=(dnsmasq-base)
command -v dig >/dev/null 2>&1 || missing+=(bind9-dnsutils)
if [ ${#missing[@]} -eq 0 ]; then
    log "python3, openssl, dnsmasq, dig: installed"
else
    need_cmd apt-get "the traced servers and clients come from Debian's packages: ${missing[*]}"
    log "installing Debian's ${missing[*]}"
    run_logged apt-update apt-get update
    DEBIAN_FRONTEND=noninteractive run_logged tools-install apt-get install -y -q "${missing[@]}"
fi

# --- Helm -----------------------------------------------------------------------
helm_bin="$SONDE_CACHE/helm/$HELM_VERSION/bin/helm"
if [ -x "$helm_bin" ]; then
    log "helm $HELM_VERSION: cached"
else
    grep -Eq "^\s*helm.sh/helm/v3 $HELM_VERSION( // indirect)?\$" "$harness/helm/go.mod" ||
        fail "helm: scripts/harness/helm/go.mod does not require helm.sh/helm/v3 $HELM_VERSION (versions.env)"
    # What Helm's own release build stamps in: its version, and the Kubernetes
    # version lint and template assume (client-go v0.X is Kubernetes 1.X).
    client_go_minor=$(sed -n 's|^\s*k8s.io/client-go v0\.\([0-9]*\)\..*|\1|p' "$harness/helm/go.mod")
    [ -n "$client_go_minor" ] || fail "helm: scripts/harness/helm/go.mod names no k8s.io/client-go version"
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in lint/rules chartutil; do
        ldflags+=" -X helm.sh/helm/v3/pkg/$pkg.k8sVersionMajor=1"
        ldflags+=" -X helm.sh/helm/v3/pkg/$pkg.k8sVersionMinor=$client_go_minor"
    done
    go_build_into helm "$harness/helm" "$(dirname "$helm_bin")" -ldflags "$ldflags" helm.sh/helm/v3/cmd/helm
    "$helm_bin" version --short 2>/dev/null | grep -q "^$HELM_VERSION" ||
        fail "helm: $helm_bin does not run or is not $HELM_VERSION"
fi

# --- OpenTelemetry Collector -------------------------------------------------
otelcol_dir="$SONDE_CACHE/otelcol/$OTELCOL_VERSION"
if [ -x "$otelcol_dir/otelcol-sonde" ]; then
    log "otelcol $OTELCOL_VERSION: cached"
else
    need_cmd go "the harness builds the OpenTelemetry Collector with Go"
    grep -q "otlpreceiver $OTELCOL_VERSION\$" "$harness/otelcol/builder-config.yaml" ||
        fail "otelcol: scripts/harness/otelcol/builder-config.yaml is not on $OTELCOL_VERSION (versions.env)"
    if [ ! -x "$otelcol_dir/tools/builder" ]; then
        log "otelcol: installing the collector builder $OTELCOL_VERSION"
        GOBIN="$otelcol_dir/tools" run_logged otelcol-builder \
            go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION"
    fi
    log "otelcol $OTELCOL_VERSION: building (a few minutes on the first run; log: $SONDE_CACHE/logs/otelcol.log)"
    rm -rf "$otelcol_dir/build"
    run_logged otelcol "$otelcol_dir/tools/builder" \
        --config="$harness/otelcol/builder-config.yaml" --output-path="$otelcol_dir/build"
    [ -x "$otelcol_dir/build/otelcol-sonde" ] || fail "otelcol: the builder produced no $otelcol_dir/build/otelcol-sonde"
    mv -f "$otelcol_dir/build/otelcol-sonde" "$otelcol_dir/otelcol-sonde"
    rm -rf "$otelcol_dir/build"
fi

# --- Prometheus (Debian's build, unpacked into the cache) ---------------------
# Unpacking the package rather than installing it keeps the machine free of a
# system Prometheus service listening on :9090; tests start their own.
prom_dir="$SONDE_CACHE/prometheus/$PROMETHEUS_VERSION/bin"
if [ -x "$prom_dir/prometheus" ] && [ -x "$prom_dir/promtool" ]; then
    log "prometheus $PROMETHEUS_VERSION: cached"
else
    need_cmd apt-get "Prometheus comes from Debian's 'prometheus' package"
    need_cmd dpkg-deb "Prometheus comes from Debian's 'prometheus' package"
    log "prometheus: updating the package index"
    run_logged apt-update apt-get update
    candidate=$(apt-cache policy prometheus | sed -n 's/^ *Candidate: *//p')
    case "$candidate" in
    "$PROMETHEUS_VERSION"+* | "$PROMETHEUS_VERSION"-*) ;;
    *) fail "prometheus: Debian offers '${candidate:-nothing}', not $PROMETHEUS_VERSION (versions.env)" ;;
    esac
    log "prometheus: unpacking Debian's prometheus $candidate"
    work=$(mktemp -d)
    (cd "$work" && run_logged prometheus-download apt-get download "prometheus=$candidate")
    run_logged prometheus-unpack dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
    mkdir -p "$prom_dir"
    cp "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$prom_dir/"
    rm -rf "$work"
    "$prom_dir/prometheus" --version 2>&1 | grep -q "version $PROMETHEUS_VERSION" ||
        fail "prometheus: $prom_dir/prometheus does not run or is not $PROMETHEUS_VERSION"
fi

# --- Python Arrow clients ----------------------------------------------------
venv="$SONDE_CACHE/venv"
want="pyarrow==$PYARROW_VERSION adbc-driver-manager==$ADBC_VERSION adbc-driver-flightsql==$ADBC_VERSION"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.sonde-requirements" 2>/dev/null)" = "$want" ]; then
    log "python venv: cached"
else
    need_cmd python3 "the harness makes a Python virtualenv for the Arrow clients"
    log "python venv: installing $want"
    rm -rf "$venv"
    run_logged venv python3 -m venv "$venv"
    # shellcheck disable=SC2086 # $want is a list of requirements
    run_logged pip "$venv/bin/pip" install --quiet --disable-pip-version-check $want
    run_logged venv-check "$venv/bin/python" -c 'import pyarrow.flight, adbc_driver_flightsql.dbapi'
    echo "$want" >"$venv/.sonde-requirements"
fi

log "ready (cache: $SONDE_CACHE)"
