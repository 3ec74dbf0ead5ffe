#!/usr/bin/env bash
# Build a kubeforge artifact mirror for Kubernetes v1.20.2, offline, from Debian:
#   - the seven binaries from Debian's `kubernetes` source package (build-binaries.sh),
#   - pause 3.2 (gcc -static from build/pause/linux/pause.c, also in build-binaries.sh),
#   - single-layer docker-archive image tarballs (mkimage.py, no registry, no daemon) for
#     k8s.gcr.io/{kube-apiserver,kube-controller-manager,kube-scheduler,kube-proxy}:v1.20.2,
#     k8s.gcr.io/pause:3.2 and k8s.gcr.io/etcd:3.4.13-0 (Debian's etcd-server inside),
#   - a SECOND version for upgrade tests: the same v1.20.2 code stamped $TEST_VERSION
#     (a label no upstream release carries; docs/testbed-versions.md says why this one),
#     with its own kube-* images and the same pause/etcd images (kubeadm pins them by minor),
#   - kubeforge's crictl STAND-IN (crictl/main.go, build-crictl.sh; not cri-tools),
#     packaged as cri-tools' release tarball is,
#   - laid out the way kubeforge's mirror code reads it (docs/artifacts.md):
#       <mirror>/<version>/bin/linux/amd64/<binary>        (+ <binary>.sha256, hex digest)
#       <mirror>/images/<version>/<name>-<tag>.tar         (+ .sha256)
#       <mirror>/cri-tools/v1.20.0/crictl-v1.20.0-linux-amd64.tar.gz   (+ .sha256)
#     for <version> in v1.20.2 and $TEST_VERSION.
#
#   build.sh               build if missing, print the mirror directory on stdout
#   build.sh --print-dir   print the mirror directory only (no build)
#
# The recipe (this directory's files) is hashed: the result lives in
# $KUBEFORGE_CACHE_DIR/k8s-<recipe-hash> (default /var/cache/kubeforge), so a second run
# only checks a marker. Each stage prints its time on stderr. Older recipes' mirrors are
# removed after a build, unless KUBEFORGE_K8S_KEEP_STALE=1 (a machine where another
# checkout still uses them).
set -euo pipefail

K8S_VERSION=v1.20.2
# The upgrade target: v1.20.2's code under a pre-release label of the next patch. It sorts
# above v1.20.2 and below any v1.20.3 (semver), is a valid image tag as it is, and no
# upstream tag carries "-kf."; `kubeadm upgrade apply` needs --allow-experimental-upgrades.
TEST_VERSION=v1.20.3-kf.0
CRICTL_VERSION=v1.20.0
REPO=k8s.gcr.io
PAUSE_TAG=3.2
ETCD_TAG=3.4.13-0
APT_PACKAGES=(golang-go dpkg-dev rsync make gcc libc6-dev python3 etcd-server etcd-client
    golang-github-modern-go-reflect2-dev conntrack iptables)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${KUBEFORGE_CACHE_DIR:-/var/cache/kubeforge}
hash=$(cat "$here/build.sh" "$here/build-binaries.sh" "$here/build-crictl.sh" "$here/mkimage.py" \
    "$here/crictl/main.go" | sha256sum | cut -c1-12)
# Binaries are cached per (recipe of build-binaries.sh, label), the stand-in per its recipe.
bin_hash() { { cat "$here/build-binaries.sh"; echo "$1"; } | sha256sum | cut -c1-12; }
crictl_hash=$(cat "$here/build-crictl.sh" "$here/crictl/main.go" | sha256sum | cut -c1-12)
out="$root/k8s-$hash"
mirror="$out/mirror"

case "${1:-}" in
    --print-dir) echo "$mirror"; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--print-dir]" >&2; exit 2 ;;
esac

log() { echo "k8s-mirror: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
t_all=$(now)

if [ -f "$mirror/.complete" ]; then
    log "mirror for $K8S_VERSION and $TEST_VERSION already built: $mirror"
    echo "$mirror"
    exit 0
fi

# --- stage 1: build dependencies from Debian --------------------------------------------
t=$(now)
src_list=/etc/apt/sources.list.d/kubeforge-src.sources
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    # The same Debian mirror as the binary entries; `apt-get source` needs a deb-src line.
    cat >"$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    rm -f /var/lib/apt/kubeforge-src-updated
fi
need=()
for pkg in "${APT_PACKAGES[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ! -f /var/lib/apt/kubeforge-src-updated ] || ! apt-cache showsrc kubernetes >/dev/null 2>&1; then
    apt-get update -qq >/tmp/kubeforge-k8s-apt.log 2>&1 || { tail -n 20 /tmp/kubeforge-k8s-apt.log >&2; exit 1; }
    touch /var/lib/apt/kubeforge-src-updated
fi
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >>/tmp/kubeforge-k8s-apt.log 2>&1 || { tail -n 20 /tmp/kubeforge-k8s-apt.log >&2; exit 1; }
fi
log "stage packages: $(elapsed "$t") s"

# --- stage 2: the Kubernetes binaries ---------------------------------------------------
t=$(now)
bins="$root/k8s-bin-$(bin_hash "$K8S_VERSION")"
bash "$here/build-binaries.sh" "$bins" "$K8S_VERSION"
log "stage binaries ($K8S_VERSION): $(elapsed "$t") s"

# --- stage 2b: the same code as $TEST_VERSION (Go relinks with other -X flags) ------------
t=$(now)
bins2="$root/k8s-bin-$(bin_hash "$TEST_VERSION")"
bash "$here/build-binaries.sh" "$bins2" "$TEST_VERSION"
t_bins2=$(elapsed "$t")
log "stage binaries ($TEST_VERSION): $t_bins2 s"

# --- stage 2c: the crictl stand-in -------------------------------------------------------
t=$(now)
crictl_bin="$root/k8s-crictl-$crictl_hash"
bash "$here/build-crictl.sh" "$crictl_bin"
log "stage crictl stand-in: $(elapsed "$t") s"

rm -rf "$out.part"
mkdir -p "$out.part/work" "$out.part/mirror"
work="$out.part/work"

# --- stage 3: image tarballs ------------------------------------------------------------
t=$(now)
mk() { python3 "$here/mkimage.py" "$@"; }
images="$out.part/mirror/images/$K8S_VERSION"
images2="$out.part/mirror/images/$TEST_VERSION"
mkdir -p "$images" "$images2"
mk --ref "$REPO/pause:$PAUSE_TAG" --out "$images/pause-$PAUSE_TAG.tar" \
    --entrypoint /pause --file "$bins/pause:/pause"
# etcd: Debian's etcd-server (3.4.23, API-compatible with the 3.4.13 kubeadm 1.20 pins),
# and etcdctl where the real image has it (backup verification and restore run it).
mk --ref "$REPO/etcd:$ETCD_TAG" --out "$images/etcd-$ETCD_TAG.tar" \
    --entrypoint /usr/local/bin/etcd --elf /usr/bin/etcd:/usr/local/bin/etcd \
    --elf /usr/bin/etcdctl:/usr/local/bin/etcdctl \
    --dir /var/lib/etcd --dir /var/etcd
# kube-proxy (iptables mode) runs iptables-save/-restore and conntrack: Debian's nft
# backend (the node image's default alternative) with its extensions and libraries.
xt=/usr/lib/x86_64-linux-gnu/xtables
kube_images() { # version, binaries dir, images dir
    local v=$1 b=$2 dir=$3 c l
    for c in kube-apiserver kube-controller-manager kube-scheduler; do
        mk --ref "$REPO/$c:$v" --out "$dir/$c-$v.tar" \
            --entrypoint "/usr/local/bin/$c" --file "$b/$c:/usr/local/bin/$c"
    done
    local proxy_args=(--ref "$REPO/kube-proxy:$v" --out "$dir/kube-proxy-$v.tar"
        --entrypoint /usr/local/bin/kube-proxy --file "$b/kube-proxy:/usr/local/bin/kube-proxy"
        --elf /usr/sbin/xtables-nft-multi:/usr/sbin/xtables-nft-multi --tree "$xt:$xt"
        --elf /usr/sbin/conntrack:/usr/sbin/conntrack)
    for l in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
        proxy_args+=(--symlink "/usr/sbin/$l:xtables-nft-multi")
    done
    mk "${proxy_args[@]}"
}
kube_images "$K8S_VERSION" "$bins" "$images"
log "stage images ($K8S_VERSION): $(elapsed "$t") s"
t=$(now)
kube_images "$TEST_VERSION" "$bins2" "$images2"
# kubeadm pins pause and etcd by minor: the same tarballs (same refs) serve both versions.
for f in "pause-$PAUSE_TAG.tar" "etcd-$ETCD_TAG.tar"; do
    cp -l "$images/$f" "$images2/$f" 2>/dev/null || cp "$images/$f" "$images2/$f"
done
t_images2=$(elapsed "$t")
log "stage images ($TEST_VERSION): $t_images2 s"

# --- stage 4: check the dynamically linked images run from their own root -----------------
t=$(now)
check() { # image-tar, command...
    local tarball=$1; shift
    local dir
    dir=$(mktemp -d "$work/check.XXXXXX")
    tar -xOf "$tarball" --wildcards '*/layer.tar' | tar -C "$dir" -xf -
    if ! chroot "$dir" "$@" >"$dir.out" 2>&1; then
        log "$(basename "$tarball"): \`$*\` fails inside the image:"; cat "$dir.out" >&2; exit 1
    fi
    log "$(basename "$tarball"): $* -> $(head -c 80 "$dir.out" | sed -n 1p)"
    rm -rf "$dir" "$dir.out"
}
check "$images/etcd-$ETCD_TAG.tar" /usr/local/bin/etcd --version
check "$images/etcd-$ETCD_TAG.tar" /usr/local/bin/etcdctl version
check "$images/kube-proxy-$K8S_VERSION.tar" /usr/sbin/iptables-save --version
check "$images/kube-proxy-$K8S_VERSION.tar" /usr/sbin/conntrack --version
check "$images/kube-proxy-$K8S_VERSION.tar" /usr/local/bin/kube-proxy --version
check "$images/pause-$PAUSE_TAG.tar" /pause -v
check "$images2/kube-proxy-$TEST_VERSION.tar" /usr/local/bin/kube-proxy --version
check "$images2/kube-apiserver-$TEST_VERSION.tar" /usr/local/bin/kube-apiserver --version
log "stage image checks: $(elapsed "$t") s"

# --- stage 5: the mirror layout ---------------------------------------------------------
t=$(now)
bindir="$out.part/mirror/$K8S_VERSION/bin/linux/amd64"
bindir2="$out.part/mirror/$TEST_VERSION/bin/linux/amd64"
mkdir -p "$bindir" "$bindir2"
for c in kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    cp -l "$bins/$c" "$bindir/$c" 2>/dev/null || cp "$bins/$c" "$bindir/$c"
    cp -l "$bins2/$c" "$bindir2/$c" 2>/dev/null || cp "$bins2/$c" "$bindir2/$c"
done
# The crictl stand-in, packaged as cri-tools' release tarball is (just `crictl` inside);
# reproducible: fixed mtime and owner, gzip without a timestamp.
cri="$out.part/mirror/cri-tools/$CRICTL_VERSION"
mkdir -p "$cri"
tar -C "$crictl_bin" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1610544000 \
    -cf - crictl | gzip -n -9 >"$cri/crictl-$CRICTL_VERSION-linux-amd64.tar.gz"
# Upstream's .sha256 files hold the bare hex digest; so do ours.
for f in "$bindir"/* "$images"/*.tar "$bindir2"/* "$images2"/*.tar "$cri"/*.tar.gz; do
    sha256sum "$f" | cut -d' ' -f1 >"$f.sha256"
done
rm -rf "$work"
mv "$out.part" "$out"
touch "$mirror/.complete"
log "stage layout: $(elapsed "$t") s"
( cd "$mirror" && find . -type f ! -name '*.sha256' ! -name .complete -printf '%P %s\n' | sort \
    | awk '{ printf "k8s-mirror:   %-50s %6.1f MiB\n", $1, $2 / 1048576 }' ) >&2

# Older recipes' mirrors and binaries are dead weight (the source tree and the Go build
# cache are kept: they make the next recipe change quick).
if [ "${KUBEFORGE_K8S_KEEP_STALE:-0}" = 1 ]; then
    log "KUBEFORGE_K8S_KEEP_STALE=1: older recipes' directories are kept"
else
    for d in "$root"/k8s-*; do
        case "$d" in
            "$out"|"$bins"|"$bins2"|"$crictl_bin"|"$root"/k8s-src-*|"$root"/k8s-gopath) ;;
            "$root"/k8s-go-build.log) ;;
            *) [ -d "$d" ] && { log "removing stale $d"; rm -rf "$d"; } ;;
        esac
    done
fi
log "second version $TEST_VERSION: binaries $t_bins2 s + images $t_images2 s"
log "mirror for $K8S_VERSION and $TEST_VERSION ready in $(elapsed "$t_all") s: $mirror"
echo "$mirror"
