#!/usr/bin/env bash
# The main job on a fresh machine: install and start the Docker engine, build the node
# image and the Kubernetes v1.20.2 mirror (from Debian's source package; no download
# site is reachable here) if missing, build kubeforge, then bring up the HA cluster of
# examples/local.yaml: 3 control-plane nodes, 2 workers, 2 load balancers with a VIP.
#
#   ./scripts/up.sh                 # bring it up (or converge it: re-running is a no-op)
#   ./scripts/up.sh CLUSTER.yaml    # another cluster file
#
# The state (encrypted with .kubeforge/state.agekey) lives in examples/.kubeforge/;
# afterwards: target/release/kubeforge kubeconfig -f examples/local.yaml > kubeconfig
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=${1:-examples/local.yaml}
for step in scripts/testbed/10-packages.sh scripts/testbed/30-docker.sh scripts/testbed/40-node-image.sh scripts/testbed/50-k8s-mirror.sh; do
  echo "== $step"
  bash "$step"
done
mkdir -p .kubeforge
ln -sfn "$(bash scripts/k8s-mirror/build.sh --print-dir)" .kubeforge/mirror
echo "== cargo build --release"
cargo build --release --quiet
bin=target/release/kubeforge
export KUBEFORGE_STATE_KEY_FILE=${KUBEFORGE_STATE_KEY_FILE:-$PWD/.kubeforge/state.agekey}
[ -f "$KUBEFORGE_STATE_KEY_FILE" ] || "$bin" state keygen --out "$KUBEFORGE_STATE_KEY_FILE"
"$bin" apply -f "$cluster" --yes
"$bin" kubeconfig -f "$cluster" > .kubeforge/kubeconfig
echo "kubeconfig written to .kubeforge/kubeconfig (kubectl --kubeconfig .kubeforge/kubeconfig get nodes)"
