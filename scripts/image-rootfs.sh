#!/usr/bin/env bash
# Lays out the root filesystem of one Sonde image: the executable at
# /usr/local/bin/<name>, exactly the shared libraries it loads (and their own),
# and the CA bundle for TLS peers without a configured CA. Nothing else: no
# shell, no package manager. Used by `make images` (scripts/build-images.sh)
# and by each component's Containerfile, so both give the same file tree.
#
#   scripts/image-rootfs.sh <executable> <rootfs dir>
set -euo pipefail

fail() {
    printf 'image-rootfs: %s\n' "$*" >&2
    exit 1
}

[ $# -eq 2 ] || fail "usage: $0 <executable> <rootfs dir>"
exe=$1
root=$2
[ -x "$exe" ] || fail "$exe is not an executable file"
command -v ldd >/dev/null || fail "ldd is missing (Debian package libc-bin)"

mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
install -m 0755 "$exe" "$root/usr/local/bin/$(basename "$exe")"

# ldd lists every library the dynamic loader maps, transitively, and the
# loader itself (an absolute path). A static executable has none.
libs=$(ldd "$exe" 2>/dev/null | awk '/=> \// { print $3 } /^[ \t]*\/[^ ]+ \(0x/ { print $1 }') || true
if ldd "$exe" 2>&1 | grep -q 'not found'; then
    fail "$exe needs a library that is not installed: $(ldd "$exe" | grep 'not found')"
fi
for lib in $libs; do
    # Keep the path the executable asks for (the loader's is compiled in);
    # copy the file it resolves to.
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
else
    fail "/etc/ssl/certs/ca-certificates.crt is missing (Debian package ca-certificates)"
fi
# Name the unprivileged user the operator runs as, for tools that show it.
printf 'root:x:0:0:root:/:/nonexistent\nnonroot:x:65532:65532:nonroot:/:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
