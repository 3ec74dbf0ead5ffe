use super::{new_plan, Phase, PhasePlan, PlanContext, Step};

pub struct WaitReady;

impl Phase for WaitReady {
    fn name(&self) -> &'static str {
        "wait-ready"
    }
    fn description(&self) -> &'static str {
        "wait until every node is Ready"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let n = ctx.cluster.topology.kubernetes_nodes().len();
        p.operator.push(Step::new(format!(
            "wait until {n} nodes report Ready through https://{}",
            ctx.cluster.topology.endpoint.address()
        )));
        p
    }
}
