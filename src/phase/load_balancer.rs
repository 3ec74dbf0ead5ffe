use super::{host_plan, new_plan, Phase, PhasePlan, PlanContext, Step};
use crate::render::FileGroup;
use crate::spec::Endpoint;

pub struct LoadBalancer;

impl Phase for LoadBalancer {
    fn name(&self) -> &'static str {
        "load-balancer"
    }
    fn description(&self) -> &'static str {
        "HAProxy in front of the apiservers, keepalived holding the VIP"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        for h in &ctx.hosts {
            p.hosts.push(host_plan(
                ctx,
                h,
                &[FileGroup::LoadBalancer],
                vec![
                    Step::new("haproxy -c -f /etc/haproxy/haproxy.cfg"),
                    Step::new("systemctl enable haproxy && systemctl reload-or-restart haproxy")
                        .unless("haproxy.cfg is unchanged and haproxy runs"),
                    Step::new("systemctl enable keepalived && systemctl restart keepalived")
                        .unless("keepalived.conf is unchanged and keepalived runs"),
                ],
            ));
        }
        match &ctx.cluster.topology.endpoint {
            Endpoint::Vip { .. } => p.operator.push(Step::new(format!(
                "wait until {} accepts TCP connections (VIP held by one load balancer)",
                ctx.cluster.topology.endpoint.address()
            ))),
            Endpoint::External { .. } => p.operator.push(Step::new(format!(
                "use the external load balancer {}",
                ctx.cluster.topology.endpoint.address()
            ))),
        }
        p
    }
}
