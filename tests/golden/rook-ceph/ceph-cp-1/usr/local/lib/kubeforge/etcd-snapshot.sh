#!/bin/sh
# Rendered by kubeforge: an etcd snapshot, taken only by the etcd leader of the moment
# (one member per interval, never a minority member that may be stale), through the
# member's own client port. `kubeforge backup collect` (and `backup`, `apply`) verify
# the snapshots, encrypt them into the state store and keep 8 there.
set -eu
dir=/var/lib/kubeforge/snapshots
keep=8
curl_etcd() {
  curl -sS --cacert /etc/kubernetes/pki/etcd/ca.crt \
    --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt \
    --key /etc/kubernetes/pki/etcd/healthcheck-client.key "$@"
}
status=$(curl_etcd --max-time 10 -X POST -d '{}' https://127.0.0.1:2379/v3/maintenance/status) || {
  echo "etcd does not answer: no snapshot"; exit 0; }
leader=$(printf '%s' "$status" | sed -n 's/.*"leader":"\([0-9]*\)".*/\1/p')
me=$(printf '%s' "$status" | sed -n 's/.*"member_id":"\([0-9]*\)".*/\1/p')
if [ -z "$leader" ] || [ "$leader" != "$me" ]; then
  echo "this member ($me) is not the etcd leader ($leader): no snapshot"; exit 0
fi
umask 077
mkdir -p "$dir"
f="$dir/auto-ceph-cp-1-$(date -u +%Y%m%dT%H%M%SZ).stream"
curl_etcd --max-time 600 --fail -X POST -d '{}' https://127.0.0.1:2379/v3/maintenance/snapshot -o "$f.part"
mv "$f.part" "$f"
echo "snapshot $f: $(wc -c < "$f") bytes"
rc=0
ls -1t "$dir"/auto-*.stream | tail -n +$((keep + 1)) | xargs -r rm -f
exit $rc
