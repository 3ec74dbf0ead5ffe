#!/usr/bin/env bash
# Build the kubeforge node image: Debian bookworm (minbase) with systemd as PID 1, sshd,
# haproxy, keepalived, containerd, runc, CNI plugins and the kubeadm host tools, imported
# into the local Docker engine as kubeforge/node:<recipe-hash> (and :latest).
#
# The recipe is this file: its sha256 names the image, so any change rebuilds. The root
# filesystem tarball is cached outside the repo, keyed by the same hash.
#
#   build.sh               build if missing, print the tag on stdout
#   build.sh --print-tag   print the tag only (no docker, no network)
#   build.sh --force       rebuild the rootfs and re-import even if present
#
# The provider sets the stop signal (SIGRTMIN+3): `docker import` cannot.
# Environment: KUBEFORGE_CACHE_DIR (default /var/cache/kubeforge),
#              KUBEFORGE_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

PACKAGES=(
    systemd systemd-sysv dbus openssh-server iproute2 iptables sudo ca-certificates
    haproxy keepalived curl containerd runc containernetworking-plugins conntrack socat
    ebtables ethtool kmod procps iputils-ping python3 less
)
SUITE=bookworm
USER_NAME=kubeforge   # non-root user with passwordless sudo (uid/gid 1000)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hash=$(sha256sum "$here/build.sh" | cut -c1-12)
tag="kubeforge/node:$hash"

mode=build
case "${1:-}" in
    --print-tag) echo "$tag"; exit 0 ;;
    --force) mode=force ;;
    "") ;;
    *) echo "usage: $0 [--print-tag|--force]" >&2; exit 2 ;;
esac

log() { echo "node-image: $*" >&2; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [ "$mode" = build ] && docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag already present"
    docker tag "$tag" kubeforge/node:latest
    echo "$tag"
    exit 0
fi

cache=${KUBEFORGE_CACHE_DIR:-/var/cache/kubeforge}/node-image
mkdir -p "$cache"
tarball="$cache/rootfs-$hash.tar"

if [ "$mode" = force ] || [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
    rootfs=$(mktemp -d "$cache/rootfs-$hash.XXXXXX")
    cleanup() { umount -R "$rootfs/proc" 2>/dev/null || true; rm -rf "$rootfs"; }
    trap cleanup EXIT
    include=$(IFS=,; echo "${PACKAGES[*]}")
    log "debootstrap $SUITE into $rootfs (packages: $include)"
    if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" \
        "${KUBEFORGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/debootstrap-$hash.log" 2>&1; then
        tail -n 40 "$cache/debootstrap-$hash.log" >&2
        [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 40 "$rootfs/debootstrap/debootstrap.log" >&2
        exit 1
    fi
    log "debootstrap done in $(elapsed "$t0") s"

    # --- configure the root filesystem -------------------------------------------------
    # No baked-in SSH host keys: every machine generates its own at first boot.
    rm -f "$rootfs"/etc/ssh/ssh_host_*
    cat >"$rootfs/etc/systemd/system/kubeforge-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate this machine's own SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
RequiredBy=ssh.service
UNIT
    mkdir -p "$rootfs/etc/systemd/system/multi-user.target.wants" "$rootfs/etc/systemd/system/ssh.service.requires"
    ln -sf /etc/systemd/system/kubeforge-hostkeys.service "$rootfs/etc/systemd/system/multi-user.target.wants/"
    ln -sf /etc/systemd/system/kubeforge-hostkeys.service "$rootfs/etc/systemd/system/ssh.service.requires/"

    # sshd: keys only; enough sessions for many parallel channels on one connection.
    cat >"$rootfs/etc/ssh/sshd_config.d/kubeforge.conf" <<'CONF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
MaxSessions 256
MaxStartups 200:30:400
ClientAliveInterval 15
CONF

    # A machine-id per container (systemd generates one when the file is empty).
    : >"$rootfs/etc/machine-id"
    rm -f "$rootfs/var/lib/dbus/machine-id"

    # Units that cannot work (or are pointless) inside a container.
    for unit in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
        systemd-modules-load.service systemd-remount-fs.service getty@tty1.service \
        console-getty.service serial-getty@.service systemd-logind.service \
        sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
        apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
    done
    # Services the cluster phases configure and enable themselves.
    for svc in haproxy keepalived containerd; do
        rm -f "$rootfs/etc/systemd/system/multi-user.target.wants/$svc.service"
    done

    # A non-root user with passwordless sudo; root and this user get the cluster key at
    # machine creation (the provider writes ~/.ssh/authorized_keys into the container).
    chroot "$rootfs" groupadd --gid 1000 "$USER_NAME"
    chroot "$rootfs" useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash "$USER_NAME"
    echo "$USER_NAME ALL=(ALL) NOPASSWD:ALL" >"$rootfs/etc/sudoers.d/$USER_NAME"
    chmod 0440 "$rootfs/etc/sudoers.d/$USER_NAME"
    install -d -m 0700 "$rootfs/root/.ssh"
    install -d -m 0700 -o 1000 -g 1000 "$rootfs/home/$USER_NAME/.ssh"

    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs/debootstrap"

    tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    log "rootfs cached at $tarball ($(du -h "$tarball" | cut -f1)) after $(elapsed "$t0") s"
else
    log "using cached rootfs $tarball"
fi

t1=$(date +%s.%N)
docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change 'ENV container=docker' \
    --change "LABEL dev.kubeforge.recipe=$hash" \
    "$tarball" "$tag" >/dev/null
docker tag "$tag" kubeforge/node:latest
log "imported $tag in $(elapsed "$t1") s (total $(elapsed "$t0") s)"
echo "$tag"
