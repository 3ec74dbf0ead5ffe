use super::{new_plan, Phase, PhasePlan, PlanContext, Step};
use crate::spec::{Provider, Role};

pub struct Provision;

impl Phase for Provision {
    fn name(&self) -> &'static str {
        "provision"
    }
    fn description(&self) -> &'static str {
        "create the machines through the provider and record them in the state"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let c = ctx.cluster;
        match &c.cluster.spec.provider {
            Provider::Docker(d) => {
                let net = d.network.clone().unwrap_or_else(|| c.name().to_string());
                let subnet = c
                    .topology
                    .node_subnet
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                p.operator.push(
                    Step::new(format!(
                        "ensure docker network `{net}` ({subnet}, internal)"
                    ))
                    .unless("it exists with this subnet"),
                );
                for h in &c.topology.hosts {
                    p.operator.push(
                        Step::new(format!(
                            "ensure machine `{}` at {} ({})",
                            h.name,
                            h.address,
                            h.roles_text()
                        ))
                        .unless("a machine of that name runs"),
                    );
                }
            }
            Provider::Static(s) => {
                for h in &c.topology.hosts {
                    p.operator.push(Step::new(format!(
                        "use host `{}` at {} ({}) from {}",
                        h.name,
                        h.address,
                        h.roles_text(),
                        s.inventory
                    )));
                }
            }
        }
        let cps = c.topology.with_role(Role::ControlPlane).count();
        p.operator.push(Step::new(format!(
            "record {} machines ({cps} control-plane) in the state",
            c.topology.hosts.len()
        )));
        p
    }
}
