#!/usr/bin/env bash
# Run every test the way CI does, on a fresh machine: install and start the real
# components the tests use (each scripts/testbed/NN-*.sh step is idempotent and quick
# when already done), check formatting and lints, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
for step in scripts/testbed/*.sh; do
  t0=$(date +%s)
  echo "== testbed: $step"
  bash "$step"
  echo "== testbed: $step done in $(( $(date +%s) - t0 ))s"
done
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test --all-targets --no-fail-fast
echo "== all tests passed in $(( $(date +%s) - started ))s"
