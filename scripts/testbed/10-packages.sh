#!/usr/bin/env bash
# Debian packages the tests run for real: haproxy (`haproxy -c`) and keepalived
# (`keepalived -t`) check every rendered config; BIRD 2 is the BGP router MetalLB's
# rendered peers are checked against (tests/bgp_peer.rs, in namespaces of its own).
# ansible-core from PyPI: `ansible-inventory` reads `kubeforge inventory` as a dynamic
# inventory script (tests/day2_cli.rs). curl and openssl: the https S3 test makes its
# own CA and bucket (tests/s3_credentials.rs).
set -euo pipefail
need=()
for pkg in haproxy keepalived bird2 curl openssl; do
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
if ! command -v ansible-inventory >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  # A Debian system python refuses pip installs (PEP 668) unless told otherwise.
  python3 -m pip install -q ansible-core \
    || python3 -m pip install -q --break-system-packages ansible-core
  if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash
  fi
  command -v ansible-inventory >/dev/null 2>&1 || {
    echo "ansible-inventory is not on PATH after installing ansible-core" >&2
    exit 1
  }
fi
# Print the first line of each version banner; sed reads all input, so no
# SIGPIPE under pipefail (head exiting early killed CI with exit 141).
haproxy -v | sed -n 1p
keepalived --version 2>&1 | sed -n 1p
bird --version 2>&1 | sed -n 1p
ansible-inventory --version | sed -n 1p
