use super::{host_plan, new_plan, restart_step, Phase, PhasePlan, PlanContext, Step};
use crate::render::views::pod_cidr;
use crate::render::FileGroup;
use crate::spec::Cni as CniChoice;

pub struct Cni;

#[async_trait::async_trait]
impl Phase for Cni {
    fn name(&self) -> &'static str {
        "cni"
    }
    fn description(&self) -> &'static str {
        "pod network: one /24 per node on a bridge, routes between nodes"
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
            let files = ctx.files_for(&h.name, FileGroup::Cni);
            let routes: Vec<_> = files
                .iter()
                .copied()
                .filter(|f| f.path.ends_with(".service"))
                .collect();
            let mut cmds = vec![restart_step(
                "pod-routes",
                "systemctl daemon-reload && systemctl enable kubeforge-routes && systemctl restart kubeforge-routes",
                &routes,
                None,
            )];
            if let Some(own) = pod_cidr(c, h) {
                cmds[0].action = format!(
                    "{}  # pods of {} use {own}; routes to the other nodes' /24s",
                    cmds[0].action, h.name
                );
            }
            p.hosts.push(host_plan(ctx, h, &[FileGroup::Cni], cmds));
        }
        p
    }
}
