#!/usr/bin/env bash
# Build kubeforge's crictl STAND-IN (crictl/main.go; not cri-tools) with the Go toolchain
# and the k8s.io/cri-api + gRPC vendored in the Kubernetes v1.20.2 source tree that
# build-binaries.sh extracts. It implements the crictl subcommands kubeadm 1.20 runs, as
# real CRI (v1alpha2) calls to the runtime's socket; see crictl/main.go.
#
#   build-crictl.sh OUT_DIR     build OUT_DIR/crictl (skipped when OUT_DIR/.complete exists)
#
# Needs the source tree build-binaries.sh leaves in $KUBEFORGE_CACHE_DIR/k8s-src-<pkg>
# (run that first); shares its Go build cache.
set -euo pipefail

PKG_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CRICTL_VERSION=v1.20.0   # the cri-tools release kubeadm 1.20 goes with; the path kubeforge reads

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: build-crictl.sh OUT_DIR}
cache=${KUBEFORGE_CACHE_DIR:-/var/cache/kubeforge}
log() { echo "k8s-crictl: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [ -f "$out/.complete" ]; then
    log "crictl stand-in already built in $out"
    exit 0
fi
tree="$cache/k8s-src-$PKG_VERSION/tree"
[ -f "$cache/k8s-src-$PKG_VERSION/.complete" ] || { log "no source tree in $tree (run build-binaries.sh first)"; exit 1; }

t=$(now)
rm -rf "$out.part"
mkdir -p "$out.part/gopath/src/kubeforge.dev/crictl"
pkgdir="$out.part/gopath/src/kubeforge.dev/crictl"
cp "$here/crictl/main.go" "$pkgdir/main.go"
# GOPATH mode (as for the Kubernetes binaries): the tree's vendor/ serves the imports.
ln -s "$tree/vendor" "$pkgdir/vendor"
export GOPATH="$out.part/gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= \
    GOCACHE="$cache/go-build" GOOS=linux GOARCH=amd64
(cd "$pkgdir" && go build -trimpath -ldflags "-s -w -X main.version=$CRICTL_VERSION" -o "$out.part/crictl" .) \
    >"$out.part/build.log" 2>&1 || { tail -n 40 "$out.part/build.log" >&2; exit 1; }
got=$("$out.part/crictl" --version)
case "$got" in
    "crictl version $CRICTL_VERSION "*) ;;
    *) log "crictl --version says: $got"; exit 1 ;;
esac
rm -rf "$out.part/gopath" "$out.part/build.log"
rm -rf "$out"
mv "$out.part" "$out"
touch "$out/.complete"
log "crictl stand-in built in $(elapsed "$t") s: $got"
