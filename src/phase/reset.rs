//! `reset-hosts`: take what the cluster put on a host off it again, the bare-metal
//! counterpart of deleting a machine (`kubeforge reset`): the kubeadm state
//! (`kubeadm reset`, without asking the cluster: every host goes), etcd's data, the
//! kubelet's, the pod network (CNI configuration, the vxlan device and bridge, the
//! KUBE-* and kubeforge iptables rules, other rules kept), kubeforge's own files and
//! units, and on load balancers HAProxy and keepalived stopped with their configuration
//! removed (the VIP goes with keepalived). Installed binaries and containerd stay: a
//! later `apply` builds the cluster anew on the same hosts.

use super::{
    exec, host_plan, new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step,
};
use crate::render::views::BIN_DIR;
use crate::spec::Role;

pub struct ResetHosts;

/// What a Kubernetes node is reset with. kubeadm is given a kubeconfig that does not
/// exist, so that it does not read its configuration from the cluster: every host is
/// reset at once, etcd loses its quorum on the way, and a request to the API server
/// then waits forever (seen: kubeadm reset hung on the last control plane). kubeadm
/// removes containers with crictl, which a node may not have: the containers of
/// kubelet's namespace (`k8s.io`) are removed with containerd's own `ctr` (other
/// namespaces untouched) and containerd restarted so that its CRI forgets them. The
/// volumes kubelet mounted for Pods are unmounted before /var/lib/kubelet is deleted.
pub fn node_command() -> String {
    format!(
        "for u in $(systemctl list-units --all --plain --no-legend 'kubeforge-*' 2>/dev/null | awk '{{print $1}}'); do systemctl disable --now \"$u\" >/dev/null 2>&1; done; \
if [ -x {BIN_DIR}/kubeadm ]; then timeout 180 {BIN_DIR}/kubeadm reset -f --kubeconfig /var/lib/kubeforge/no-cluster.conf --skip-phases=update-cluster-status,remove-etcd-member --cri-socket /run/containerd/containerd.sock; fi; \
systemctl disable --now kubelet >/dev/null 2>&1; \
if command -v ctr >/dev/null; then for t in $(ctr -n k8s.io task ls -q); do ctr -n k8s.io task rm -f \"$t\" >/dev/null 2>&1; done; \
for c in $(ctr -n k8s.io container ls -q); do ctr -n k8s.io container rm \"$c\" >/dev/null 2>&1; done; systemctl restart containerd; fi; \
for m in $(awk '$2 ~ \"^/var/lib/kubelet\" {{print $2}}' /proc/mounts | sort -r); do umount -l \"$m\"; done; \
rm -rf /etc/kubernetes /var/lib/etcd /var/lib/kubelet /etc/cni/net.d /var/lib/cni /root/.kube; \
ip link delete kubeforge.vxlan 2>/dev/null; ip link delete cni0 2>/dev/null; \
for t in filter nat mangle; do iptables-save -t $t | grep -v -e KUBE -e kubeforge | iptables-restore -T $t; done; \
{lb}{common}",
        lb = lb_part(),
        common = common_command()
    )
}

/// What every host is reset with: kubeforge's files and units.
fn common_command() -> String {
    "rm -rf /etc/kubeforge /var/lib/kubeforge /var/log/kubeforge /usr/local/lib/kubeforge \
/etc/systemd/system/kubeforge-* /etc/systemd/system/kubelet.service /etc/systemd/system/kubelet.service.d/10-kubeadm.conf \
/etc/sysctl.d/90-kubeforge.conf /etc/modules-load.d/kubeforge.conf; \
systemctl daemon-reload; echo reset"
        .to_string()
}

/// HAProxy and keepalived stopped and their configuration removed, where kubeforge
/// wrote it (load balancers, and control planes with `placement: control-plane`; an
/// HAProxy of the operator's own is left alone).
fn lb_part() -> &'static str {
    "if grep -qs 'Managed by kubeforge' /etc/keepalived/keepalived.conf; then systemctl disable --now keepalived >/dev/null 2>&1; \
rm -f /etc/keepalived/keepalived.conf /etc/keepalived/check_haproxy.sh; fi; \
if grep -qs 'Managed by kubeforge' /etc/haproxy/haproxy.cfg; then systemctl disable --now haproxy >/dev/null 2>&1; \
rm -f /etc/haproxy/haproxy.cfg; fi; "
}

/// What a load balancer is reset with.
pub fn lb_command() -> String {
    format!("{}{}", lb_part(), common_command())
}

#[async_trait::async_trait]
impl Phase for ResetHosts {
    fn name(&self) -> &'static str {
        "reset-hosts"
    }
    fn description(&self) -> &'static str {
        "remove the cluster from the hosts: kubeadm state, etcd and kubelet data, pod network, kubeforge's files"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        for h in &ctx.hosts {
            let mut steps = Vec::new();
            if h.is_kubernetes_node() {
                steps.push(Step {
                    run: Some(node_command()),
                    ..Step::new(format!(
                        "kubeadm reset -f (without updating the cluster: every host goes); stop kubelet{}; delete /etc/kubernetes, /var/lib/kubelet, the CNI configuration, the vxlan device and bridge, KUBE-* and kubeforge iptables rules; kubeforge's files and units",
                        if h.has(Role::ControlPlane) { " and etcd, delete /var/lib/etcd" } else { "" }
                    ))
                });
            } else {
                steps.push(Step {
                    run: Some(lb_command()),
                    ..Step::new("stop HAProxy and keepalived (the VIP goes), delete their configuration; kubeforge's files and units")
                });
            }
            p.hosts.push(host_plan(ctx, h, &[], steps));
        }
        p.operator.push(Step::new(
            "in the state: forget the cluster's CAs, kubeconfig and applied addons (the machines, host keys and etcd snapshots stay); the next `apply` bootstraps a new cluster",
        ));
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        ctx.hosts(plan, &exec::NoSpecial).await?;
        ctx.state
            .update(|doc| {
                doc.secrets.pki.clear();
                doc.secrets.admin_kubeconfig = None;
                doc.secrets.extra.remove(super::init::CA_HASH_KEY);
                doc.addons.clear();
                doc.pod_cidrs.clear();
            })
            .await
            .map_err(|source| PhaseError::State {
                phase: self.name().into(),
                source,
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reset_commands_are_valid_shell() {
        for cmd in [super::node_command(), super::lb_command()] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &cmd])
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(super::node_command()
            .contains("awk '$2 ~ \"^/var/lib/kubelet\" {print $2}' /proc/mounts"));
    }
}
