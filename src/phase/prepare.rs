use super::{host_plan, new_plan, Phase, PhasePlan, PlanContext, Step};
use crate::render::views::BIN_DIR;
use crate::render::FileGroup;

pub struct PrepareHosts;

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
        let container = crate::render::views::Profile::of(c).container;
        for h in &ctx.hosts {
            let mut cmds = vec![Step::new("swapoff -a").unless("no swap is active")];
            if container {
                cmds.push(Step::new(
                    "test -e /proc/sys/net/bridge/bridge-nf-call-iptables  # br_netfilter is loaded by the docker host",
                ));
            } else {
                cmds.push(
                    Step::new("modprobe overlay && modprobe br_netfilter")
                        .unless("both modules are loaded"),
                );
            }
            cmds.push(Step::new("sysctl --system").unless("the sysctl file is unchanged"));
            cmds.push(
                Step::new(format!(
                    "install kubeadm, kubelet, kubectl {version} into {BIN_DIR} from {source}, sha256-verified"
                ))
                .unless(format!("`kubeadm version` already reports {version}")),
            );
            cmds.push(
                Step::new("systemctl daemon-reload && systemctl restart containerd")
                    .unless("config.toml is unchanged"),
            );
            cmds.push(Step::new("systemctl enable kubelet").unless("it is enabled"));
            p.hosts
                .push(host_plan(ctx, h, &[FileGroup::NodeBase], cmds));
        }
        p
    }
}
