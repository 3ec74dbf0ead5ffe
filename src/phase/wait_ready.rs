use super::exec::{self, HostError};
use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::kube::{kubectl, ready_nodes};
use std::time::{Duration, Instant};

pub struct WaitReady;

const READY_WAIT: Duration = Duration::from_secs(300);
/// How long kube-controller-manager may take to fill a new Service's Endpoints.
const ENDPOINTS_WAIT: Duration = Duration::from_secs(60);

/// Whether the probe Service's Endpoints get an address within `limit`.
async fn endpoints_filled(
    t: &dyn crate::transport::Transport,
    host: &str,
    ctx: &ApplyContext<'_>,
    limit: Duration,
) -> Result<bool, HostError> {
    let start = Instant::now();
    loop {
        let eps = crate::kube::probe_endpoints(t, host, ctx.secrets).await?;
        if !eps.is_empty() {
            return Ok(true);
        }
        if start.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Gate: kube-controller-manager fills a new Service's Endpoints. After etcd members are
/// added, its watches can stay dead (seen on this test bed): Services then never get
/// Endpoints although every node is Ready. Caught here, and repaired by restarting it.
async fn endpoints_gate(ctx: &ApplyContext<'_>, phase: &str) -> Result<(), PhaseError> {
    let Some((first, s)) = ctx.first_control_plane(phase).await? else {
        return Ok(());
    };
    let err = |e: HostError| PhaseError::host(phase, e);
    let image = crate::render::views::Profile::of(ctx.cluster).sandbox_image;
    let manifest = crate::kube::endpoints_probe_manifest(&image);
    exec::run(
        s.as_ref(),
        &first.name,
        &format!(
            "{} apply -f - <<'KUBEFORGE_EOF'\n{manifest}\nKUBEFORGE_EOF",
            kubectl()
        ),
        ctx.secrets,
        false,
    )
    .await
    .map_err(err)?;
    let mut ok = endpoints_filled(s.as_ref(), &first.name, ctx, ENDPOINTS_WAIT)
        .await
        .map_err(err)?;
    if !ok {
        let cps: Vec<String> = ctx
            .cluster
            .topology
            .control_planes()
            .iter()
            .map(|h| h.name.clone())
            .collect();
        ctx.note(format!(
            "a new Service got no Endpoints within {}s: restarting kube-controller-manager on {}",
            ENDPOINTS_WAIT.as_secs(),
            cps.join(", ")
        ));
        for h in ctx.cluster.topology.control_planes() {
            let hs = exec::session(ctx.rt, h).await.map_err(err)?;
            // kubelet starts the static pod's container again.
            exec::run(
                hs.as_ref(),
                &h.name,
                "pkill -f '^kube-controller-manager ' || true",
                ctx.secrets,
                false,
            )
            .await
            .map_err(err)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        ok = endpoints_filled(s.as_ref(), &first.name, ctx, Duration::from_secs(120))
            .await
            .map_err(err)?;
    }
    exec::run(
        s.as_ref(),
        &first.name,
        &format!(
            "{k} -n kube-system delete service {p} --ignore-not-found --wait=false && {k} -n kube-system delete pod {p} --ignore-not-found --wait=false",
            k = kubectl(),
            p = crate::kube::PROBE
        ),
        ctx.secrets,
        false,
    )
    .await
    .map_err(err)?;
    if ok {
        Ok(())
    } else {
        Err(PhaseError::Gate {
            phase: phase.to_string(),
            message: format!(
                "every node is Ready, but a new Service gets no Endpoints even after kube-controller-manager was restarted: Services will not route (see `kubectl -n kube-system logs` of kube-controller-manager on {})",
                first.name
            ),
        })
    }
}
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
        p.operator.push(Step::new(format!(
            "gate: a probe Service (kube-system/{}) gets the Endpoints of its Pod within {}s; \
otherwise kube-controller-manager is restarted on each control-plane node, one at a time, and checked again; the probe is deleted",
            crate::kube::PROBE,
            ENDPOINTS_WAIT.as_secs()
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
                return endpoints_gate(ctx, &phase).await;
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
