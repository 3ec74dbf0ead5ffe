#!/usr/bin/env bash
# moto's S3 server: the real S3 API (conditional PUTs: If-None-Match / If-Match) for the
# state-store tests. Only installed here; each test binary starts its own server on a
# free 127.0.0.1 port with `python3` (moto's own server app, requests serialised; see
# tests/common/moto.rs) and it dies with the tests.
set -euo pipefail
has_moto() {
  python3 -c 'import moto.moto_server.werkzeug_app, werkzeug' >/dev/null 2>&1 \
    && command -v moto_server >/dev/null 2>&1
}
if ! has_moto; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  # A Debian system python refuses pip installs (PEP 668) unless told otherwise.
  python3 -m pip install -q 'moto[server]' \
    || python3 -m pip install -q --break-system-packages 'moto[server]'
  if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash
  fi
fi
if ! has_moto; then
  echo "moto[server] is not usable from python3 (or moto_server is not on PATH) after installing it" >&2
  exit 1
fi
python3 -c 'import moto; print("moto", moto.__version__)'
