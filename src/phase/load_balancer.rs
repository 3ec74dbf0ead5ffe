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
/// How long the VIP's holders must stay the same after a load balancer was changed
/// (keepalived's master-down interval is 3 advertisements of 1 s plus skew).
const SETTLE: Duration = Duration::from_secs(5);

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
                        // A running keepalived re-reads its configuration (SIGHUP) and
                        // keeps its VRRP state; a stopped one is started.
                        "keepalived -t -f /etc/keepalived/keepalived.conf && systemctl enable keepalived && systemctl reload-or-restart keepalived",
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
            Endpoint::Cloud { .. } => p.operator.push(Step::new(format!(
                "use the cloud load balancer {} (made by the machines phase)",
                ctx.cluster.topology.endpoint.address()
            ))),
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        if !matches!(ctx.cluster.topology.endpoint, Endpoint::Vip { .. }) {
            ctx.hosts(plan, &exec::NoSpecial).await?;
            return Ok(());
        }
        if ctx.cluster.cluster.spec.load_balancer.failover.is_some() && !ctx.nothing_to_do(plan) {
            self.check_python(ctx, plan).await?;
        }
        // One load balancer at a time, the VIP holder last, and the VIP answering
        // before the next: a configuration change never takes every HAProxy or
        // keepalived down at once, and the holder keeps the VIP while the others change.
        let holders = if ctx.nothing_to_do(plan) {
            // Nothing changes on them (the preview found every part done): no order.
            Vec::new()
        } else {
            self.vip_state(ctx, false).await?.0
        };
        let mut order: Vec<&crate::phase::HostPlan> = plan.hosts.iter().collect();
        order.sort_by_key(|h| holders.contains(&h.host));
        let mut changed = false;
        for hp in order {
            let one = PhasePlan {
                hosts: vec![hp.clone()],
                ..plan.clone()
            };
            let reports = ctx.hosts(&one, &exec::NoSpecial).await?;
            changed |= reports
                .iter()
                .any(|(_, r)| r.steps_run > 0 || r.files_sent > 0);
            if reports.iter().any(|(_, r)| r.steps_run > 0) {
                // Something was restarted or reloaded here: before the next host, the VIP
                // must answer with the same holders for a few VRRP advertisement
                // intervals, so that a host taking over has done so.
                self.wait_vip(ctx, false, SETTLE, false).await?;
            }
        }
        // Unchanged load balancers: their answer from the facts' round trip stands.
        self.wait_vip(ctx, true, Duration::ZERO, !changed).await
    }

    fn ask_ahead(&self, c: &crate::spec::LoadedCluster) -> Vec<(String, String)> {
        let Endpoint::Vip { vip, port, .. } = &c.topology.endpoint else {
            return Vec::new();
        };
        c.topology
            .lb_hosts()
            .into_iter()
            .map(|h| (h.name.clone(), vip_command(&vip.to_string(), *port)))
            .collect()
    }
}

/// On a load balancer: `held` when it holds `vip`, `answers` when `vip:port` accepts a
/// connection from there.
fn vip_command(vip: &str, port: u16) -> String {
    format!(
        "ip -o addr show | grep -qw 'inet {vip}' && echo held; \
timeout 2 bash -c '</dev/tcp/{vip}/{port}' 2>/dev/null && echo answers; true"
    )
}

impl LoadBalancer {
    /// keepalived's failover script (`loadBalancer.failover`) is Python 3 (standard
    /// library only, on every cloud image with cloud-init): a load balancer without it
    /// would hold the VIP locally while the cloud routes it elsewhere. Refused before
    /// anything is changed.
    async fn check_python(
        &self,
        ctx: &ApplyContext<'_>,
        plan: &PhasePlan,
    ) -> Result<(), PhaseError> {
        let mut missing = Vec::new();
        for hp in &plan.hosts {
            let Some(h) = ctx.cluster.topology.host(&hp.host) else {
                continue;
            };
            let s = exec::session(ctx.rt, h)
                .await
                .map_err(|e| PhaseError::Gate {
                    phase: self.name().into(),
                    message: e.to_string(),
                })?;
            let found = s
                .exec("command -v python3 >/dev/null")
                .await
                .map(|o| o.success())
                .unwrap_or(false);
            if !found {
                missing.push(hp.host.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(PhaseError::Gate {
            phase: self.name().into(),
            message: format!(
                "python3 is missing on {}: the VIP failover script (loadBalancer.failover) needs it; install it (apt-get install python3) and run again",
                missing.join(", ")
            ),
        })
    }

    /// Which load balancers hold the VIP, and whether the VIP accepts connections on the
    /// API port (asked from the load balancers).
    /// `ahead`: an answer of the facts' round trip may stand (see [`ApplyContext::ask`]).
    async fn vip_state(
        &self,
        ctx: &ApplyContext<'_>,
        ahead: bool,
    ) -> Result<(Vec<String>, bool), PhaseError> {
        let Endpoint::Vip { vip, port, .. } = &ctx.cluster.topology.endpoint else {
            return Ok((Vec::new(), true));
        };
        let gate = |message: String| PhaseError::Gate {
            phase: self.name().into(),
            message,
        };
        // Every load balancer at once, each in one round trip: does it hold the VIP, and
        // does the VIP accept connections from there.
        let asks = ctx
            .cluster
            .topology
            .lb_hosts()
            .into_iter()
            .map(|h| async move {
                let command = vip_command(&vip.to_string(), *port);
                let out = ctx
                    .ask(h, &command, ahead)
                    .await
                    .map_err(|e: HostError| gate(e.to_string()))?;
                let said = |w: &str| out.lines().any(|l| l.trim() == w);
                Ok::<_, PhaseError>((h.name.clone(), said("held"), said("answers")))
            });
        let mut holders = Vec::new();
        let mut answered = false;
        for r in futures::future::join_all(asks).await {
            let (name, held, answers) = r?;
            if held {
                holders.push(name);
            }
            answered |= answers;
        }
        Ok((holders, answered))
    }

    /// Wait until the VIP answers, held by exactly one load balancer (`exactly`) or by
    /// at least one (between two hosts of a rolling change).
    async fn wait_vip(
        &self,
        ctx: &ApplyContext<'_>,
        exactly: bool,
        stable_for: Duration,
        mut ahead: bool,
    ) -> Result<(), PhaseError> {
        let Endpoint::Vip { vip, port, .. } = &ctx.cluster.topology.endpoint else {
            return Ok(());
        };
        let start = Instant::now();
        let mut since: Option<(Instant, Vec<String>)> = None;
        loop {
            let (holders, answered) = self.vip_state(ctx, ahead).await?;
            // Asked again (the answer from before is spent).
            ahead = false;
            let held = if exactly {
                holders.len() == 1
            } else {
                !holders.is_empty()
            };
            if held && answered {
                match &since {
                    Some((t, h)) if *h == holders => {
                        if t.elapsed() >= stable_for {
                            tracing::info!(vip = %vip, holders = ?holders, "VIP answers");
                            return Ok(());
                        }
                    }
                    _ => since = Some((Instant::now(), holders.clone())),
                }
                if stable_for.is_zero() {
                    return Ok(());
                }
            } else {
                since = None;
            }
            if start.elapsed() > VIP_WAIT {
                return Err(PhaseError::Gate {
                    phase: self.name().into(),
                    message: format!(
                        "after {}s the VIP {vip} is held by {} and {} connections to port {port}",
                        VIP_WAIT.as_secs(),
                        if holders.is_empty() {
                            "no load balancer".to_string()
                        } else {
                            holders.join(", ")
                        },
                        if answered { "accepts" } else { "refuses" }
                    ),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
