#!/usr/bin/env bash
# The addon tests' real parts: Debian's etcd-server (for a real kube-apiserver built by
# 50-k8s-mirror.sh) and a local addons mirror holding the pinned upstream manifests.
#
# The pinned manifests come from the project's shared folder (../shared/addons next to
# the repository, as the team keeps it; KUBEFORGE_ADDONS_SRC overrides), checked
# against its SHA256SUMS, and are laid out as <mirror>/addons/<addon>/<version>/<file>,
# the layout `artifacts.mirror` uses. kubeforge itself checks them against its own
# pinned digests.
#
#   scripts/testbed/60-addons.sh              # install + build the mirror
#   scripts/testbed/60-addons.sh --print-dir  # the mirror root
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
root=${KUBEFORGE_CACHE_DIR:-/var/cache/kubeforge}
out="$root/addons-mirror"
if [ "${1:-}" = "--print-dir" ]; then
  echo "$out"
  exit 0
fi

if ! command -v etcd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -f /var/lib/apt/kubeforge-updated ] || [ -n "$(find /var/lib/apt/kubeforge-updated -mmin +720)" ]; then
    apt-get update -qq
    touch /var/lib/apt/kubeforge-updated
  fi
  # Install without starting Debian's etcd service: the tests start their own
  # etcd on free ports.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
fi
etcd --version | sed -n 1p

src=${KUBEFORGE_ADDONS_SRC:-}
if [ -z "$src" ]; then
  for cand in "$here/../shared/addons" /work/shared/addons; do
    if [ -f "$cand/SHA256SUMS" ]; then
      src=$cand
      break
    fi
  done
fi
if [ -z "$src" ] || [ ! -f "$src/SHA256SUMS" ]; then
  echo "60-addons: the pinned addon manifests were not found (looked for ../shared/addons next to the repository and /work/shared/addons); set KUBEFORGE_ADDONS_SRC to a folder with them and their SHA256SUMS" >&2
  exit 1
fi
( cd "$src" && sha256sum --quiet -c SHA256SUMS ) || {
  echo "60-addons: $src does not match its SHA256SUMS" >&2
  exit 1
}
rm -rf "$out.part"
mkdir -p "$out.part/addons"
( cd "$src" && find . \( -name '*.yaml' -o -name '*.yml' \) -print0 | while IFS= read -r -d '' f; do
    mkdir -p "$out.part/addons/$(dirname "$f")"
    cp "$f" "$out.part/addons/$f"
  done )
rm -rf "$out"
mv "$out.part" "$out"
echo "addons mirror: $out ($(find "$out" -name '*.yaml' -o -name '*.yml' | wc -l) manifests from $src)"
