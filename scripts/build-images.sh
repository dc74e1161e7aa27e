#!/usr/bin/env bash
# Builds Sonde's container images as OCI image archives, with no registry and
# no container engine: `make images` runs it after the release build.
#
#   scripts/build-images.sh            # into $SONDE_IMAGES (default $CARGO_TARGET_DIR/images)
#   scripts/build-images.sh --from DIR --with-test-images
#
# --from DIR takes the executables from DIR instead of the release build (the
# real-node test packs its debug build); --with-test-images also packs the
# pause process of pod sandboxes (sonde-pause) and the demo application
# (sonde-demo-app), which the real-node test runs as containers.
#
# Each image is one layer on an empty base: the release executable, exactly
# the shared libraries it loads (scripts/image-rootfs.sh, which the
# Containerfiles run too) and a CA bundle. umoci (Debian's package, installed
# when missing) writes the OCI layout: it knows the media types, digests, diff
# ids and history the spec asks for, needs no daemon and no root. The layout is
# then packed as an OCI archive (a tar of the layout), which `podman load`,
# `skopeo copy oci-archive:...` and `ctr images import` read.
#
# Tags come from the workspace version, labels name the source revision, and
# file times are the commit's (SOURCE_DATE_EPOCH), so a rebuild of the same
# commit and binaries gives the same layer. Each image is checked before it
# is kept: its entrypoint must run from its own root filesystem (chroot, as
# root), and its config must carry the tag and labels.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

log() { printf 'images: %s\n' "$*" >&2; }
fail() {
    printf 'images: FAILED: %s\n' "$*" >&2
    exit 1
}

SONDE_CACHE=${SONDE_CACHE:-/var/cache/sonde}
target=${CARGO_TARGET_DIR:-$SONDE_CACHE/target}
out=${SONDE_IMAGES:-$target/images}

from=$target/release
test_images=false
while [ $# -gt 0 ]; do
    case $1 in
    --from)
        [ $# -ge 2 ] || fail "--from needs a directory"
        from=$2
        shift 2
        ;;
    --with-test-images)
        test_images=true
        shift
        ;;
    *) fail "unknown argument '$1' (usage: $0 [--from DIR] [--with-test-images])" ;;
    esac
done
[ -d "$from" ] || fail "--from $from is not a directory"

if ! command -v umoci >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null ||
        fail "umoci is not installed (Debian package 'umoci'); install it, or run as root with apt-get"
    log "installing Debian's umoci"
    apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci >&2 || fail "could not install umoci"
fi

# The workspace version (Cargo.toml, [workspace.package]) is the tag.
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || fail "no version in $repo/Cargo.toml [workspace.package]"
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null) || fail "$repo is not a git checkout: no revision to label"
dirty=false
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] || dirty=true
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
arch=$(uname -m)
case "$arch" in
x86_64) arch=amd64 ;;
aarch64) arch=arm64 ;;
esac

mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# build_image <image name> <executable> <user> <title> <description>
build_image() {
    local name=$1 exe=$2 user=$3 title=$4 description=$5
    local tag=$version
    local root="$work/$name/rootfs" layout="$work/$name/layout"
    [ -x "$exe" ] || fail "$name: $exe is missing; run 'make images' (it builds the release first)"
    log "$name:$tag from $exe"
    umoci init --layout "$layout"
    umoci new --image "$layout:$tag"
    # The empty image unpacked as a bundle, its root filled, repacked as one
    # layer. (umoci 0.4's `insert` ends the layer's tar stream without its
    # padding and end blocks, which GNU tar and Go's archive/tar refuse.)
    umoci unpack --image "$layout:$tag" "$root.bundle" >/dev/null
    "$here/image-rootfs.sh" "$exe" "$root.bundle/rootfs"
    find "$root.bundle/rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    umoci repack --image "$layout:$tag" --history.created "$created" \
        --history.created_by "scripts/image-rootfs.sh $(basename "$exe")" "$root.bundle"
    umoci config --image "$layout:$tag" --created "$created" --history.created "$created" \
        --history.created_by "scripts/build-images.sh" \
        --os linux --architecture "$arch" \
        --config.entrypoint "/usr/local/bin/$(basename "$exe")" \
        --config.user "$user" \
        --config.workingdir / \
        --config.label "org.opencontainers.image.title=$title" \
        --config.label "org.opencontainers.image.description=$description" \
        --config.label "org.opencontainers.image.version=$version" \
        --config.label "org.opencontainers.image.revision=$revision" \
        --config.label "org.opencontainers.image.created=$created" \
        --config.label "org.opencontainers.image.licenses=Apache-2.0" \
        --config.label "dev.sonde.source-dirty=$dirty"
    umoci gc --layout "$layout"

    # Check what was written before keeping it.
    python3 - "$layout" "$tag" "$revision" "/usr/local/bin/$(basename "$exe")" "$user" <<'PY' ||
import json, sys
layout, tag, revision, entrypoint, user = sys.argv[1:]
def blob(digest):
    with open(f"{layout}/blobs/sha256/{digest.split(':')[1]}") as f:
        return json.load(f)
index = json.load(open(f"{layout}/index.json"))
[desc] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
config = blob(blob(desc["digest"])["config"]["digest"])["config"]
assert config["Labels"]["org.opencontainers.image.revision"] == revision, config["Labels"]
assert config["Entrypoint"] == [entrypoint], config["Entrypoint"]
assert config["User"] == user, config["User"]
PY
        fail "$name: the image's config lacks its tag, revision label, entrypoint or user"
    if [ "$(id -u)" = 0 ]; then
        local check="$work/$name/check"
        umoci unpack --image "$layout:$tag" "$check" >/dev/null
        chroot "$check/rootfs" "/usr/local/bin/$(basename "$exe")" --version >/dev/null 2>&1 ||
            fail "$name: its entrypoint does not run from the image's own files (chroot $check/rootfs)"
        log "$name: entrypoint runs from the image's root filesystem"
    else
        log "$name: not root, so the entrypoint was not run from the image (chroot needs root)"
    fi

    local archive="$out/$name-$tag.oci.tar"
    tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
        -C "$layout" -cf "$archive.tmp" .
    mv -f "$archive.tmp" "$archive"
    local manifest
    manifest=$(sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' "$layout/index.json")
    printf '%s\t%s\t%s\t%s\n' "$name:$tag" "$(numfmt --to=iec --suffix=B "$(stat -c %s "$archive")")" "$manifest" "$archive"
}

printf 'IMAGE\tSIZE\tMANIFEST\tARCHIVE\n'
build_image sonde-operator "$from/sonde-operator" 65532:65532 \
    "Sonde operator" "Turns Sonde resources into per-node assignments"
build_image sonde-agent "$from/probe-agent" 0:0 \
    "Sonde agent" "Captures with eBPF on each node and serves Arrow tables"
build_image sonde-query "$from/sonde-query" 65532:65532 \
    "sonde-query" "One Flight SQL endpoint for the whole cluster"
if $test_images; then
    build_image sonde-pause "$from/sonde-pause" 65532:65532 \
        "Sonde pause" "Holds a pod sandbox's namespaces on the test node"
    build_image sonde-demo-app "$from/sonde-demo-app" 0:0 \
        "Sonde demo application" "Calls handle_request with known arguments, for tracing tests"
fi
log "done: $out (revision $revision, dirty: $dirty)"
