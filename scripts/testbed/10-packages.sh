#!/usr/bin/env bash
# Debian packages the tests run for real: haproxy (`haproxy -c`) and keepalived
# (`keepalived -t`) check every rendered config; BIRD 2 is the BGP router MetalLB's
# rendered peers are checked against (tests/bgp_peer.rs, in namespaces of its own).
set -euo pipefail
need=()
for pkg in haproxy keepalived bird2; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -f /var/lib/apt/kubeforge-updated ] || [ -n "$(find /var/lib/apt/kubeforge-updated -mmin +720)" ]; then
    apt-get update -qq
    touch /var/lib/apt/kubeforge-updated
  fi
  # Install without starting Debian's services (BIRD would run on the host's network).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Print the first line of each version banner; sed reads all input, so no
# SIGPIPE under pipefail (head exiting early killed CI with exit 141).
haproxy -v | sed -n 1p
keepalived --version 2>&1 | sed -n 1p
bird --version 2>&1 | sed -n 1p
