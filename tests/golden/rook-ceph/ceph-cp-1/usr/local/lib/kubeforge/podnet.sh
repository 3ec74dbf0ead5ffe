#!/bin/sh
# Managed by kubeforge: the pod network of ceph-cp-1 (networking.cni: bridge).
# Pods of this node live on cni0 in 10.244.0.0/24; the other nodes' pods are reached
# through a VXLAN overlay between node addresses (VNI 4242, UDP 8472), as
# flannel's vxlan backend does: per peer a route to its /24 via its VTEP address, a
# permanent neighbour entry (VTEP address -> MAC) and a forwarding entry (MAC -> node
# address). The node network only carries node addresses. Idempotent: run at boot and
# on every change by kubeforge-podnet.service; entries of nodes that left are removed.
set -eu

DEV=kubeforge.vxlan
VNI=4242
PORT=8472
NODE_IP=172.29.15.10
VTEP=10.244.0.0
MAC=0e:6b:0a:f4:00:00
POD_SUBNET=10.244.0.0/16
# Peers: node  node-address  pod-cidr  vtep-address  mac
PEERS='
ceph-cp-2 172.29.15.11 10.244.1.0/24 10.244.1.0 0e:6b:0a:f4:01:00
ceph-cp-3 172.29.15.12 10.244.2.0/24 10.244.2.0 0e:6b:0a:f4:02:00
ceph-worker-1 172.29.15.20 10.244.3.0/24 10.244.3.0 0e:6b:0a:f4:03:00
ceph-worker-2 172.29.15.21 10.244.4.0/24 10.244.4.0 0e:6b:0a:f4:04:00
ceph-worker-3 172.29.15.22 10.244.5.0/24 10.244.5.0 0e:6b:0a:f4:05:00
'

fail() { echo "kubeforge podnet: $*" >&2; exit 1; }

# The interface that holds this node's address carries the overlay; its MTU less the
# VXLAN overhead (50 bytes) is the MTU of the VXLAN device and of the pods.
UNDERLAY=$(ip -o -4 addr show | awk -v ip="$NODE_IP" '{split($4, a, "/"); if (a[1] == ip) {print $2; exit}}')
[ -n "$UNDERLAY" ] || fail "no interface holds $NODE_IP (ip -4 addr)"
UNDER_MTU=$(cat "/sys/class/net/$UNDERLAY/mtu") || fail "cannot read the MTU of $UNDERLAY"
MTU=$((UNDER_MTU - 50))

# The VXLAN device, re-created only when its parameters differ.
modprobe vxlan 2>/dev/null || true
if ip link show "$DEV" >/dev/null 2>&1; then
    info=$(ip -d -o link show "$DEV")
    case "$info" in
        *"vxlan id $VNI local $NODE_IP dev $UNDERLAY "*"dstport $PORT "*"nolearning"*) ;;
        *) ip link del "$DEV" ;;
    esac
fi
if ! ip link show "$DEV" >/dev/null 2>&1; then
    ip link add "$DEV" type vxlan id "$VNI" local "$NODE_IP" dev "$UNDERLAY" dstport "$PORT" nolearning \
        || fail "cannot create the VXLAN device $DEV (is the vxlan kernel module available?)"
fi
ip link set "$DEV" address "$MAC" mtu "$MTU"
ip addr replace "$VTEP/32" dev "$DEV"
for a in $(ip -o -4 addr show dev "$DEV" | awk '{print $4}'); do
    [ "$a" = "$VTEP/32" ] || ip addr del "$a" dev "$DEV"
done
ip link set "$DEV" up

# Peers: neighbour, forwarding entry, then the route (flannel's order).
routes=' '; neighs=' '; fdbs=' '
echo "$PEERS" | while read -r name ip cidr vtep mac; do
    [ -n "$name" ] || continue
    ip neigh replace "$vtep" lladdr "$mac" dev "$DEV" nud permanent
    bridge fdb replace "$mac" dev "$DEV" dst "$ip" self permanent
    ip route replace "$cidr" via "$vtep" dev "$DEV" onlink
done
for p in $(echo "$PEERS" | awk 'NF {print $3}'); do routes="$routes$p "; done
for p in $(echo "$PEERS" | awk 'NF {print $4}'); do neighs="$neighs$p "; done
for p in $(echo "$PEERS" | awk 'NF {print $5 "/" $2}'); do fdbs="$fdbs$p "; done

# What nodes that left the cluster had.
ip -o -4 route show dev "$DEV" | awk '{print $1}' | while read -r dst; do
    case "$routes" in *" $dst "*) ;; *) ip route del "$dst" dev "$DEV" ;; esac
done
ip -4 neigh show dev "$DEV" | awk '{print $1}' | while read -r addr; do
    case "$neighs" in *" $addr "*) ;; *) ip neigh del "$addr" dev "$DEV" ;; esac
done
bridge fdb show dev "$DEV" | awk '$2 == "dst" {print $1, $3}' | while read -r mac dst; do
    case "$fdbs" in *" $mac/$dst "*) ;; *) bridge fdb del "$mac" dev "$DEV" dst "$dst" self ;; esac
done

# Pods keep their addresses inside the pod subnet; traffic leaving it is masqueraded
# (the bridge plugin's own ipMasq would also hide pod addresses from other nodes' pods).
iptables -w -t nat -N KUBEFORGE-PODNET 2>/dev/null || true
iptables -w -t nat -F KUBEFORGE-PODNET
iptables -w -t nat -A KUBEFORGE-PODNET -d "$POD_SUBNET" -j RETURN
iptables -w -t nat -A KUBEFORGE-PODNET -d 224.0.0.0/4 -j RETURN
iptables -w -t nat -A KUBEFORGE-PODNET -j MASQUERADE
iptables -w -t nat -C POSTROUTING -s "$POD_SUBNET" -m comment --comment "kubeforge pod network" -j KUBEFORGE-PODNET 2>/dev/null \
    || iptables -w -t nat -A POSTROUTING -s "$POD_SUBNET" -m comment --comment "kubeforge pod network" -j KUBEFORGE-PODNET

# The CNI config, with the MTU now known; written only when it changes.
conf=/etc/cni/net.d/10-kubeforge.conflist
mkdir -p "$(dirname "$conf")"
sed "s/@MTU@/$MTU/" /etc/kubeforge/podnet/10-kubeforge.conflist.in > "$conf.kubeforge-tmp"
if cmp -s "$conf.kubeforge-tmp" "$conf"; then
    rm -f "$conf.kubeforge-tmp"
else
    mv "$conf.kubeforge-tmp" "$conf"
fi

# Earlier kubeforge releases routed pod /24s via node addresses (kubeforge-routes).
if [ -e /etc/systemd/system/kubeforge-routes.service ]; then
    systemctl disable kubeforge-routes.service >/dev/null 2>&1 || true
    rm -f /etc/systemd/system/kubeforge-routes.service
fi
echo "kubeforge podnet: $DEV (VNI $VNI, MTU $MTU over $UNDERLAY) with $(echo "$PEERS" | awk 'NF' | wc -l) peer(s)"
