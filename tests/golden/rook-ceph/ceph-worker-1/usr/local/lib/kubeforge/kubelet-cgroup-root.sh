#!/bin/sh
# Managed by kubeforge (container machines): make kubelet's --cgroup-root, set in
# /etc/default/kubelet, exist in every cgroup v1 hierarchy before kubelet starts.
# systemd in the machine removes empty cgroups on every daemon-reload.
cg=$(sed -n 's/.*--cgroup-root=\([^ ]*\).*/\1/p' /etc/default/kubelet 2>/dev/null)
[ -n "$cg" ] || exit 0
for d in /sys/fs/cgroup/*/; do
  [ -L "${d%/}" ] || mkdir -p "$d${cg#/}"
done
