#!/usr/bin/env bash
# Build the seven Kubernetes v1.20.2 binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubelet, kubeadm, kubectl) and pause 3.2 offline from
# Debian's source package `kubernetes` (1.20.5+really1.20.2-1.1+deb12u1: the orig tarball is the full
# upstream v1.20.2 tree with vendor/), with the three fixes the build needs here
# (see ../shared/TESTBED.md) and upstream's version stamping.
#
#   build-binaries.sh OUT_DIR [LABEL]
#       build into OUT_DIR (skipped when OUT_DIR/.complete exists). LABEL (default
#       v1.20.2) is the version stamped into the binaries (gitVersion): the test bed's
#       second version is the SAME v1.20.2 code under a test label such as v1.20.3-kf.0
#       (docs/testbed-versions.md); gitCommit stays v1.20.2's commit, so `kubectl
#       version` shows where the code comes from. pause is built for v1.20.2 only.
#
# Caches (outside the repo): the extracted source tree under
# $KUBEFORGE_CACHE_DIR/k8s-src-<package version>, the Go build cache under
# $KUBEFORGE_CACHE_DIR/go-build (a warm rebuild takes ~1.5 min instead of ~4.5).
set -euo pipefail

PKG_VERSION=1.20.5+really1.20.2-1.1+deb12u1
K8S_VERSION=v1.20.2
K8S_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56   # upstream tag v1.20.2
BUILD_DATE=2021-01-13T13:20:00Z                       # fixed: reproducible binaries
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl)

out=${1:?usage: build-binaries.sh OUT_DIR [LABEL]}
label=${2:-$K8S_VERSION}
cache=${KUBEFORGE_CACHE_DIR:-/var/cache/kubeforge}
log() { echo "k8s-binaries: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# Only 1.20 labels: the code is 1.20.2's, and gitMinor must say so.
if ! [[ "$label" =~ ^v1\.20\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$ ]]; then
    log "label $label is not a v1.20.x semantic version"
    exit 2
fi

if [ -f "$out/.complete" ]; then
    log "binaries ($label) already built in $out"
    exit 0
fi

# --- the source tree (downloaded and extracted once per package version) -------------
src="$cache/k8s-src-$PKG_VERSION"
if [ ! -f "$src/.complete" ]; then
    t=$(now)
    rm -rf "$src" "$src.part"
    mkdir -p "$src.part/dl"
    (cd "$src.part/dl" && apt-get source --download-only "kubernetes=$PKG_VERSION" >download.log 2>&1) \
        || { tail -n 20 "$src.part/dl/download.log" >&2; exit 1; }
    log "source package downloaded in $(elapsed "$t") s ($(du -sh "$src.part/dl" | cut -f1))"
    t=$(now)
    dpkg-source -x "$src.part"/dl/kubernetes_*.dsc "$src.part/tree" >"$src.part/extract.log" 2>&1 \
        || { tail -n 20 "$src.part/extract.log" >&2; exit 1; }
    rm -rf "$src.part/dl"
    tree="$src.part/tree"
    # Fix 3: vendor/github.com/modern-go/reflect2 1.0.1 crashes kube-apiserver (SIGSEGV in
    # map iteration) under Go >= 1.18; Debian's 1.0.2 does not.
    rm -rf "$tree/vendor/github.com/modern-go/reflect2"
    cp -a /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
    rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod" "$tree/vendor/github.com/modern-go/reflect2/go.sum"
    mv "$src.part" "$src"
    touch "$src/.complete"
    log "source extracted and patched in $(elapsed "$t") s"
fi
tree="$src/tree"

# Fix 1: GOPATH mode (-mod=vendor fails on this tree).
gopath="$cache/k8s-gopath"
mkdir -p "$gopath/src/k8s.io"
ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"
export GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= \
    GOCACHE="$cache/go-build" GOOS=linux GOARCH=amd64
cd "$gopath/src/k8s.io/kubernetes"

# Fix 2: the generated OpenAPI definitions are not in the tarball.
if [ ! -s pkg/generated/openapi/zz_generated.openapi.go ]; then
    t=$(now)
    make -f Makefile.generated_files gen_openapi CALLED_FROM_MAIN_MAKEFILE=1 \
        OUT_DIR=_output BIN_DIR=_output/bin PRJ_SRC_PATH=k8s.io/kubernetes \
        GENERATED_FILE_PREFIX=zz_generated. META_DIR=.make KUBE_VERBOSE=0 >"$src/gen-openapi.log" 2>&1 \
        || { tail -n 30 "$src/gen-openapi.log" >&2; exit 1; }
    log "openapi generated in $(elapsed "$t") s"
fi

# Version stamping as upstream's hack/lib/version.sh does it.
ldflags="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$label -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
    ldflags+=" -X $pkg.gitCommit=$K8S_COMMIT -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
done

t=$(now)
rm -rf "$out.part"
mkdir -p "$out.part"
pkgs=()
for c in "${COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
log "go build ${COMMANDS[*]} as $label ($(go version | cut -d' ' -f3), GOCACHE=$GOCACHE)"
go build -trimpath -ldflags "$ldflags" -o "$out.part/" "${pkgs[@]}" >"$cache/k8s-go-build.log" 2>&1 \
    || { tail -n 40 "$cache/k8s-go-build.log" >&2; exit 1; }
for c in "${COMMANDS[@]}"; do [ -x "$out.part/$c" ] || { log "missing $c after the build"; exit 1; }; done
log "go build done in $(elapsed "$t") s"
# The sandbox image's only binary, from the same tree (pause.c of v1.20.2 is pause 3.2);
# kubeadm pins pause by minor, so a second label of 1.20 shares it.
if [ "$label" = "$K8S_VERSION" ]; then
    t=$(now)
    gcc -Os -Wall -Werror -static -DVERSION=v3.2-kubeforge -o "$out.part/pause" build/pause/linux/pause.c
    strip "$out.part/pause"
    case "$("$out.part/pause" -v 2>&1)" in
      *v3.2*) ;;
      *) log "pause -v does not report v3.2"; exit 1 ;;
    esac
    log "pause built in $(elapsed "$t") s"
fi
got=$("$out.part/kubeadm" version -o short)
[ "$got" = "$label" ] || { log "kubeadm reports $got, expected $label"; exit 1; }
got=$("$out.part/kubelet" --version)
[ "$got" = "Kubernetes $label" ] || { log "kubelet reports $got, expected Kubernetes $label"; exit 1; }
rm -rf "$out"
mv "$out.part" "$out"
touch "$out/.complete"
log "binaries ready in $out ($(du -sh "$out" | cut -f1))"
