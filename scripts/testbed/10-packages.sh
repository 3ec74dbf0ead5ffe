#!/usr/bin/env bash
# Debian packages the tests run for real: haproxy (`haproxy -c`) and keepalived
# (`keepalived -t`) check every rendered config.
set -euo pipefail
need=()
for pkg in haproxy keepalived; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -f /var/lib/apt/kubeforge-updated ] || [ -n "$(find /var/lib/apt/kubeforge-updated -mmin +720)" ]; then
    apt-get update -qq
    touch /var/lib/apt/kubeforge-updated
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Print the first line of each version banner; sed reads all input, so no
# SIGPIPE under pipefail (head exiting early killed CI with exit 141).
haproxy -v | sed -n 1p
keepalived --version 2>&1 | sed -n 1p
