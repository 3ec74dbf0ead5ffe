use super::{host_plan, new_plan, Phase, PhasePlan, PlanContext, Step};

pub struct Connect;

impl Phase for Connect {
    fn name(&self) -> &'static str {
        "connect"
    }
    fn description(&self) -> &'static str {
        "open one SSH connection per host, pin host keys, gather facts"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let ssh = &ctx.cluster.cluster.spec.ssh;
        if let Some(b) = &ssh.bastion {
            p.operator.push(Step::new(format!(
                "connect through bastion {}:{}",
                b.host, b.port
            )));
        }
        for h in &ctx.hosts {
            p.hosts.push(host_plan(
                ctx,
                h,
                &[],
                vec![
                    Step::new(format!(
                        "ssh {}@{}:{}: check the host key against the pinned one (pin on first use)",
                        h.ssh_user, h.address, h.ssh_port
                    )),
                    Step::new(
                        "gather facts: OS, architecture, cgroup, installed versions, kubeadm state",
                    ),
                ],
            ));
        }
        p
    }
}
