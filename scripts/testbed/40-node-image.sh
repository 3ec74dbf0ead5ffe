#!/usr/bin/env bash
# Build the node image for the docker provider if it is missing (quick when present:
# the tag is the recipe's hash, and the rootfs tarball is cached outside the repo).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start=$(date +%s.%N)
tag=$(bash "$here/../node-image/build.sh")
echo "40-node-image: $tag ready in $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
