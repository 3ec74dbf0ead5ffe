#!/usr/bin/env bash
# Build a kubeforge artifact mirror for Kubernetes v1.20.2, offline, from Debian:
#   - the seven binaries from Debian's `kubernetes` source package (build-binaries.sh),
#   - pause 3.2 (gcc -static from build/pause/linux/pause.c, also in build-binaries.sh),
#   - single-layer docker-archive image tarballs (mkimage.py, no registry, no daemon) for
#     k8s.gcr.io/{kube-apiserver,kube-controller-manager,kube-scheduler,kube-proxy}:v1.20.2,
#     k8s.gcr.io/pause:3.2 and k8s.gcr.io/etcd:3.4.13-0 (Debian's etcd-server inside),
#   - laid out the way kubeforge's mirror code reads it (docs/artifacts.md):
#       <mirror>/v1.20.2/bin/linux/amd64/<binary>          (+ <binary>.sha256, hex digest)
#       <mirror>/images/v1.20.2/<name>-<tag>.tar           (+ .sha256)
#
#   build.sh               build if missing, print the mirror directory on stdout
#   build.sh --print-dir   print the mirror directory only (no build)
#
# The recipe (this directory's files) is hashed: the result lives in
# $KUBEFORGE_CACHE_DIR/k8s-<recipe-hash> (default /var/cache/kubeforge), so a second run
# only checks a marker. Each stage prints its time on stderr.
set -euo pipefail

K8S_VERSION=v1.20.2
REPO=k8s.gcr.io
PAUSE_TAG=3.2
ETCD_TAG=3.4.13-0
APT_PACKAGES=(golang-go dpkg-dev rsync make gcc libc6-dev python3 etcd-server
    golang-github-modern-go-reflect2-dev conntrack iptables)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${KUBEFORGE_CACHE_DIR:-/var/cache/kubeforge}
hash=$(cat "$here/build.sh" "$here/build-binaries.sh" "$here/mkimage.py" | sha256sum | cut -c1-12)
bin_hash=$(sha256sum "$here/build-binaries.sh" | cut -c1-12)
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
    log "mirror for $K8S_VERSION already built: $mirror"
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
bins="$root/k8s-bin-$bin_hash"
bash "$here/build-binaries.sh" "$bins"
log "stage binaries: $(elapsed "$t") s"

rm -rf "$out.part"
mkdir -p "$out.part/work" "$out.part/mirror"
work="$out.part/work"

# --- stage 3: image tarballs ------------------------------------------------------------
t=$(now)
images="$out.part/mirror/images/$K8S_VERSION"
mkdir -p "$images"
mk() { python3 "$here/mkimage.py" "$@"; }
mk --ref "$REPO/pause:$PAUSE_TAG" --out "$images/pause-$PAUSE_TAG.tar" \
    --entrypoint /pause --file "$bins/pause:/pause"
for c in kube-apiserver kube-controller-manager kube-scheduler; do
    mk --ref "$REPO/$c:$K8S_VERSION" --out "$images/$c-$K8S_VERSION.tar" \
        --entrypoint "/usr/local/bin/$c" --file "$bins/$c:/usr/local/bin/$c"
done
# kube-proxy (iptables mode) runs iptables-save/-restore and conntrack: Debian's nft
# backend (the node image's default alternative) with its extensions and libraries.
xt=/usr/lib/x86_64-linux-gnu/xtables
proxy_args=(--ref "$REPO/kube-proxy:$K8S_VERSION" --out "$images/kube-proxy-$K8S_VERSION.tar"
    --entrypoint /usr/local/bin/kube-proxy --file "$bins/kube-proxy:/usr/local/bin/kube-proxy"
    --elf /usr/sbin/xtables-nft-multi:/usr/sbin/xtables-nft-multi --tree "$xt:$xt"
    --elf /usr/sbin/conntrack:/usr/sbin/conntrack)
for l in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    proxy_args+=(--symlink "/usr/sbin/$l:xtables-nft-multi")
done
mk "${proxy_args[@]}"
# etcd: Debian's etcd-server (3.4.23, API-compatible with the 3.4.13 kubeadm 1.20 pins).
mk --ref "$REPO/etcd:$ETCD_TAG" --out "$images/etcd-$ETCD_TAG.tar" \
    --entrypoint /usr/local/bin/etcd --elf /usr/bin/etcd:/usr/local/bin/etcd \
    --dir /var/lib/etcd --dir /var/etcd
log "stage images: $(elapsed "$t") s"

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
check "$images/kube-proxy-$K8S_VERSION.tar" /usr/sbin/iptables-save --version
check "$images/kube-proxy-$K8S_VERSION.tar" /usr/sbin/conntrack --version
check "$images/kube-proxy-$K8S_VERSION.tar" /usr/local/bin/kube-proxy --version
check "$images/pause-$PAUSE_TAG.tar" /pause -v
log "stage image checks: $(elapsed "$t") s"

# --- stage 5: the mirror layout ---------------------------------------------------------
t=$(now)
bindir="$out.part/mirror/$K8S_VERSION/bin/linux/amd64"
mkdir -p "$bindir"
for c in kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    cp -l "$bins/$c" "$bindir/$c" 2>/dev/null || cp "$bins/$c" "$bindir/$c"
done
# Upstream's .sha256 files hold the bare hex digest; so do ours.
for f in "$bindir"/* "$images"/*.tar; do
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
for d in "$root"/k8s-*; do
    case "$d" in
        "$out"|"$bins"|"$root"/k8s-src-*|"$root"/k8s-gopath) ;;
        "$root"/k8s-go-build.log) ;;
        *) [ -d "$d" ] && { log "removing stale $d"; rm -rf "$d"; } ;;
    esac
done
log "mirror for $K8S_VERSION ready in $(elapsed "$t_all") s: $mirror"
echo "$mirror"
