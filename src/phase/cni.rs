use super::{host_plan, new_plan, Phase, PhasePlan, PlanContext, Step};
use crate::render::views::pod_cidr;
use crate::render::FileGroup;
use crate::spec::Cni as CniChoice;

pub struct Cni;

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
        let nodes = c.topology.kubernetes_nodes();
        for h in &ctx.hosts {
            let mut cmds = Vec::new();
            for other in nodes.iter().filter(|o| o.name != h.name) {
                if let Some(cidr) = pod_cidr(c, other) {
                    cmds.push(
                        Step::new(format!(
                            "ip route replace {cidr} via {}",
                            other.internal_address
                        ))
                        .unless("the route exists"),
                    );
                }
            }
            if let Some(own) = pod_cidr(c, h) {
                cmds.push(Step::new(format!(
                    "persist the routes in /etc/kubeforge/routes and set spec.podCIDR {own} on node {}",
                    h.name
                )));
            }
            p.hosts.push(host_plan(ctx, h, &[FileGroup::Cni], cmds));
        }
        p
    }
}
