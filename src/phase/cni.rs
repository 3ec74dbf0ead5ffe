use super::{host_plan, new_plan, restart_step, Phase, PhasePlan, PlanContext, Step};
use crate::render::views::{pod_cidr, PODNET_UNIT, VXLAN_DEVICE, VXLAN_PORT};
use crate::render::FileGroup;
use crate::spec::Cni as CniChoice;

pub struct Cni;

#[async_trait::async_trait]
impl Phase for Cni {
    fn name(&self) -> &'static str {
        "cni"
    }
    fn description(&self) -> &'static str {
        "pod network: one /24 per node on a bridge, a VXLAN overlay between nodes"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let c = ctx.cluster;
        if c.cluster.spec.networking.cni == CniChoice::None {
            p.operator.push(Step::new(
                "no CNI (networking.cni: none): the operator installs one",
            ));
            return p;
        }
        for h in &ctx.hosts {
            // The script, its unit and the CNI config it fills in: a change to any of
            // them re-runs the script (which is idempotent).
            let files = ctx.files_for(&h.name, FileGroup::Cni);
            let mut cmd = restart_step(
                "podnet",
                &format!(
                    "systemctl daemon-reload && systemctl enable {PODNET_UNIT} && systemctl restart {PODNET_UNIT}"
                ),
                &files,
                None,
            );
            if let Some(own) = pod_cidr(c, h) {
                cmd.action = format!(
                    "{}  # pods of {} use {own}; {VXLAN_DEVICE} (UDP {VXLAN_PORT}) to the other nodes' /24s",
                    cmd.action, h.name
                );
            }
            let cmds = vec![cmd];
            p.hosts.push(host_plan(ctx, h, &[FileGroup::Cni], cmds));
        }
        p
    }
}
