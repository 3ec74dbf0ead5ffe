use super::init::patches_flag;
use super::{host_plan, new_plan, Phase, PhasePlan, PlanContext, Step};
use crate::render::FileGroup;

pub struct JoinControlPlane;
pub struct JoinWorkers;

fn join_step(ctx: &PlanContext<'_>, control_plane: bool) -> Step {
    let patches = if control_plane {
        patches_flag(ctx)
    } else {
        String::new()
    };
    Step::new(format!(
        "kubeadm join --config /etc/kubeforge/kubeadm-join.yaml{patches}"
    ))
    .unless("/etc/kubernetes/kubelet.conf exists and the node is registered")
}

impl Phase for JoinControlPlane {
    fn name(&self) -> &'static str {
        "join-control-plane"
    }
    fn description(&self) -> &'static str {
        "join the other control-plane nodes one at a time, health-gated"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let endpoint = ctx.cluster.topology.endpoint.address();
        let mut members = 1;
        for h in &ctx.hosts {
            members += 1;
            p.hosts.push(host_plan(
                ctx,
                h,
                &[FileGroup::Kubeadm],
                vec![join_step(ctx, true)],
            ));
            p.operator.push(Step::new(format!(
                "after {}: etcd lists {members} started members; https://{endpoint}/readyz answers ok",
                h.name
            )));
        }
        if !ctx.hosts.is_empty() {
            p.operator.insert(
                0,
                Step::new("snapshot etcd into the state store before adding members"),
            );
        }
        p
    }
}

impl Phase for JoinWorkers {
    fn name(&self) -> &'static str {
        "join-workers"
    }
    fn description(&self) -> &'static str {
        "join the worker nodes in parallel"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        for h in &ctx.hosts {
            p.hosts.push(host_plan(
                ctx,
                h,
                &[FileGroup::Kubeadm],
                vec![join_step(ctx, false)],
            ));
        }
        p
    }
}
