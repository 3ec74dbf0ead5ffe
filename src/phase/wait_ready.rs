use super::exec::{self, HostError};
use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::kube::{kubectl, ready_nodes};
use std::time::{Duration, Instant};

pub struct WaitReady;

const READY_WAIT: Duration = Duration::from_secs(300);
#[async_trait::async_trait]
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

    async fn apply(&self, ctx: &ApplyContext<'_>, _plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name().to_string();
        let Some((first, s)) = ctx.first_control_plane(&phase).await? else {
            return Ok(());
        };
        let err = |e: HostError| PhaseError::host(&phase, e);
        let want: Vec<String> = ctx
            .cluster
            .topology
            .kubernetes_nodes()
            .iter()
            .map(|h| h.name.clone())
            .collect();
        let start = Instant::now();
        loop {
            let out = exec::run(
                s.as_ref(),
                &first.name,
                &format!("{} get nodes -o json", kubectl()),
                ctx.secrets,
                false,
            )
            .await
            .map_err(err)?;
            let (ready, _) = ready_nodes(&out).map_err(|m| PhaseError::Gate {
                phase: phase.clone(),
                message: m,
            })?;
            let missing: Vec<&String> = want.iter().filter(|n| !ready.contains(n)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() > READY_WAIT {
                return Err(PhaseError::Gate {
                    phase,
                    message: format!(
                        "after {}s these nodes are not Ready: {}",
                        READY_WAIT.as_secs(),
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
}
