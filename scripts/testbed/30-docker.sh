#!/usr/bin/env bash
# Install the Docker engine and debootstrap from Debian if missing, and start dockerd
# (PID 1 is not systemd on these machines) if it is not answering. Idempotent; prints
# how long each step took. Run by scripts/test.sh with `set -euo pipefail`.
set -euo pipefail

t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

need=()
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
    echo "30-docker: installing ${need[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${need[@]}" >/tmp/kubeforge-apt.log 2>&1; then
        apt-get update >>/tmp/kubeforge-apt.log 2>&1
        apt-get install -y --no-install-recommends "${need[@]}" >>/tmp/kubeforge-apt.log 2>&1 \
            || { tail -n 30 /tmp/kubeforge-apt.log >&2; exit 1; }
    fi
    echo "30-docker: installed in $(elapsed "$t0") s"
fi

if docker info >/dev/null 2>&1; then
    echo "30-docker: dockerd already running ($(elapsed "$t0") s)"
    exit 0
fi

t1=$(date +%s.%N)
log=${KUBEFORGE_DOCKERD_LOG:-/var/log/kubeforge-dockerd.log}
echo "30-docker: starting dockerd (log: $log)"
# setsid + nohup: the daemon must outlive this script and the test run's process group.
setsid nohup /usr/sbin/dockerd >"$log" 2>&1 </dev/null &
for _ in $(seq 1 300); do
    if docker info >/dev/null 2>&1; then
        echo "30-docker: dockerd ready in $(elapsed "$t1") s (total $(elapsed "$t0") s)"
        exit 0
    fi
    sleep 0.1
done
echo "30-docker: dockerd did not answer within 30 s; last log lines:" >&2
tail -n 30 "$log" >&2
exit 1
