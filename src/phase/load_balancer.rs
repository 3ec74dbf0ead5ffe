use super::exec::{self, HostError};
use super::{
    host_plan, new_plan, restart_step, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext,
    Step,
};
use crate::render::FileGroup;
use crate::spec::Endpoint;
use crate::transport::Transport;
use std::time::{Duration, Instant};

pub struct LoadBalancer;

/// How long the VIP may take to answer after keepalived starts.
const VIP_WAIT: Duration = Duration::from_secs(60);

#[async_trait::async_trait]
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
            let files = ctx.files_for(&h.name, FileGroup::LoadBalancer);
            let haproxy: Vec<_> = files
                .iter()
                .copied()
                .filter(|f| f.path.contains("haproxy.cfg"))
                .collect();
            let keepalived: Vec<_> = files
                .iter()
                .copied()
                .filter(|f| f.path.contains("keepalived"))
                .collect();
            p.hosts.push(host_plan(
                ctx,
                h,
                &[FileGroup::LoadBalancer],
                vec![
                    restart_step(
                        "haproxy",
                        "haproxy -c -q -f /etc/haproxy/haproxy.cfg && systemctl enable haproxy && systemctl reload-or-restart haproxy",
                        &haproxy,
                        Some("haproxy"),
                    ),
                    restart_step(
                        "keepalived",
                        "systemctl enable keepalived && systemctl restart keepalived",
                        &keepalived,
                        Some("keepalived"),
                    ),
                ],
            ));
        }
        match &ctx.cluster.topology.endpoint {
            Endpoint::Vip { .. } => p.operator.push(Step::new(format!(
                "wait until exactly one load balancer holds the VIP and {} accepts connections",
                ctx.cluster.topology.endpoint.address()
            ))),
            Endpoint::External { .. } => p.operator.push(Step::new(format!(
                "use the external load balancer {}",
                ctx.cluster.topology.endpoint.address()
            ))),
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        ctx.hosts(plan, &exec::NoSpecial).await?;
        let Endpoint::Vip { vip, port, .. } = &ctx.cluster.topology.endpoint else {
            return Ok(());
        };
        let lbs = ctx.cluster.topology.lb_hosts();
        let gate = |message: String| PhaseError::Gate {
            phase: self.name().into(),
            message,
        };
        let start = Instant::now();
        loop {
            let mut holders = Vec::new();
            let mut answered = false;
            for h in &lbs {
                let s = exec::session(ctx.rt, h)
                    .await
                    .map_err(|e| gate(e.to_string()))?;
                let has = exec::run(
                    s.as_ref(),
                    &h.name,
                    &format!("ip -o addr show | grep -qw 'inet {vip}' && echo yes || true"),
                    ctx.secrets,
                    false,
                )
                .await
                .map_err(|e: HostError| gate(e.to_string()))?;
                if has.trim() == "yes" {
                    holders.push(h.name.clone());
                }
                if !answered {
                    answered = s
                        .exec(&format!("timeout 2 bash -c '</dev/tcp/{vip}/{port}'"))
                        .await
                        .map(|o| o.success())
                        .unwrap_or(false);
                }
            }
            if holders.len() == 1 && answered {
                tracing::info!(vip = %vip, holder = %holders[0], "VIP answers");
                return Ok(());
            }
            if start.elapsed() > VIP_WAIT {
                return Err(gate(format!(
                    "after {}s the VIP {vip} is held by {} and {} connections to port {port}",
                    VIP_WAIT.as_secs(),
                    if holders.is_empty() {
                        "no load balancer".to_string()
                    } else {
                        holders.join(", ")
                    },
                    if answered { "accepts" } else { "refuses" }
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
