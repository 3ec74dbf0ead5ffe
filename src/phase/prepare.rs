use super::exec::{HostError, SpecialSteps};
use super::{
    host_plan, new_plan, restart_step, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext,
    Step,
};
use crate::render::views::{Profile, BIN_DIR};
use crate::render::FileGroup;
use crate::spec::Host;
use crate::transport::Transport;

pub struct PrepareHosts;

/// Marks the step that installs the Kubernetes binaries (carried out by the phase).
const INSTALL: &str = "install kubeadm, kubelet, kubectl";

/// Container machines: kubelet's cgroups go under the machine's own cgroup, or every
/// machine's kubelet would share (and fight over) /kubepods on the docker host.
const CGROUP_ROOT: &str =
    "cg=$(awk -F: '$2==\"memory\"{print $3; exit} $1==\"0\"{print $3; exit}' /proc/1/cgroup); \
printf 'KUBELET_EXTRA_ARGS=--cgroup-root=%s/kubelet\\n' \"${cg%/}\" > /etc/default/kubelet";

#[async_trait::async_trait]
impl Phase for PrepareHosts {
    fn name(&self) -> &'static str {
        "prepare-hosts"
    }
    fn description(&self) -> &'static str {
        "swap off, kernel modules and sysctls, containerd, kubelet/kubeadm/kubectl"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let c = ctx.cluster;
        let version = format!("v{}", c.version());
        let source = match &c.cluster.spec.artifacts.mirror {
            Some(m) => format!("mirror {m}"),
            None => "the upstream release site".to_string(),
        };
        let container = Profile::of(c).container;
        for h in &ctx.hosts {
            let files = ctx.files_for(&h.name, FileGroup::NodeBase);
            let pick = |suffix: &str| {
                files
                    .iter()
                    .copied()
                    .filter(|f| f.path.contains(suffix))
                    .collect::<Vec<_>>()
            };
            let mut cmds = vec![Step::cmd("swapoff -a").unless_check(
                "no swap is active",
                "[ -z \"$(swapon --noheadings --show 2>/dev/null)\" ]",
            )];
            if container {
                cmds.push(Step::cmd(
                    "test -e /proc/sys/net/bridge/bridge-nf-call-iptables || { echo 'br_netfilter is not loaded on the docker host: modprobe br_netfilter there' >&2; exit 1; }",
                ));
                cmds.push(Step::cmd(CGROUP_ROOT).unless_check(
                    "kubelet's cgroup root is set",
                    "grep -q -- --cgroup-root= /etc/default/kubelet",
                ));
            } else {
                cmds.push(
                    Step::cmd("modprobe overlay && modprobe br_netfilter").unless_check(
                        "both modules are loaded",
                        "grep -qw overlay /proc/filesystems && test -d /proc/sys/net/bridge",
                    ),
                );
            }
            cmds.push(restart_step(
                "sysctl",
                "sysctl -e -p /etc/sysctl.d/90-kubeforge.conf",
                &pick("sysctl.d"),
                None,
            ));
            cmds.push(
                Step::new(format!(
                    "{INSTALL} {version} into {BIN_DIR} from {source}, sha256-verified"
                ))
                .unless_check(
                    format!("`kubeadm version` already reports {version}"),
                    format!("[ \"$({BIN_DIR}/kubeadm version -o short 2>/dev/null)\" = {version} ] && [ -x {BIN_DIR}/kubelet ] && [ -x {BIN_DIR}/kubectl ]"),
                ),
            );
            cmds.push(restart_step(
                "containerd",
                "systemctl daemon-reload && systemctl enable containerd && systemctl restart containerd",
                &pick("containerd"),
                Some("containerd"),
            ));
            cmds.push(restart_step(
                "kubelet-unit",
                "systemctl daemon-reload && systemctl enable kubelet",
                &pick("kubelet"),
                None,
            ));
            p.hosts
                .push(host_plan(ctx, h, &[FileGroup::NodeBase], cmds));
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        ctx.hosts(plan, &Installer { ctx }).await.map(|_| ())
    }
}

struct Installer<'a> {
    ctx: &'a ApplyContext<'a>,
}

#[async_trait::async_trait]
impl SpecialSteps for Installer<'_> {
    async fn special(&self, t: &dyn Transport, host: &Host, step: &Step) -> Result<(), HostError> {
        if step.action.starts_with(INSTALL) {
            return crate::phase::binaries::install(self.ctx, t, host).await;
        }
        Ok(())
    }
}
