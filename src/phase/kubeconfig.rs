use super::{host_plan, new_plan, Phase, PhasePlan, PlanContext, Step};

pub struct Kubeconfig;

impl Phase for Kubeconfig {
    fn name(&self) -> &'static str {
        "kubeconfig"
    }
    fn description(&self) -> &'static str {
        "store the admin kubeconfig (encrypted) in the state"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        for h in &ctx.hosts {
            p.hosts.push(host_plan(
                ctx,
                h,
                &[],
                vec![Step::new("read /etc/kubernetes/admin.conf")],
            ));
        }
        p.operator.push(Step::new(format!(
            "point the kubeconfig at https://{} and store it encrypted in the state (`kubeforge kubeconfig` prints it)",
            ctx.cluster.topology.endpoint.address()
        )));
        p
    }
}
