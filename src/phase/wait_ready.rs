use super::exec::{self, HostError};
use super::init::kubectl;
use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::transport::Transport;
use std::time::{Duration, Instant};

pub struct WaitReady;

const READY_WAIT: Duration = Duration::from_secs(300);
const READYZ_WAIT: Duration = Duration::from_secs(180);

/// Wait until the apiserver answers `ok` on /readyz through the control-plane endpoint
/// (asked from `t`, a control-plane node).
pub async fn wait_readyz(
    ctx: &ApplyContext<'_>,
    t: &dyn Transport,
    phase: &str,
) -> Result<(), PhaseError> {
    let endpoint = ctx.cluster.topology.endpoint.address();
    let cmd = format!(
        "curl -sk --max-time 5 {}",
        crate::transport::shell::quote(&format!("https://{endpoint}/readyz"))
    );
    let start = Instant::now();
    let mut last: String;
    loop {
        match t.exec(&cmd).await {
            Ok(o) if o.success() && o.stdout.trim() == "ok" => return Ok(()),
            Ok(o) => last = format!("{}{}", o.stdout.trim(), o.stderr.trim()),
            Err(e) => last = e.to_string(),
        }
        if start.elapsed() > READYZ_WAIT {
            return Err(PhaseError::Gate {
                phase: phase.to_string(),
                message: format!(
                    "https://{endpoint}/readyz did not answer ok within {}s (last: {last})",
                    READYZ_WAIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Names of the nodes whose Ready condition is True, and of all nodes.
pub fn ready_nodes(json: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut ready = Vec::new();
    let mut all = Vec::new();
    for n in v["items"].as_array().into_iter().flatten() {
        let name = n["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let is_ready = n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if is_ready {
            ready.push(name.clone());
        }
        all.push(name);
    }
    Ok((ready, all))
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

#[cfg(test)]
mod tests {
    #[test]
    fn ready_nodes_reads_conditions() {
        let json = r#"{"items":[
          {"metadata":{"name":"a"},"status":{"conditions":[{"type":"Ready","status":"True"}]}},
          {"metadata":{"name":"b"},"status":{"conditions":[{"type":"Ready","status":"False"}]}},
          {"metadata":{"name":"c"},"status":{}}]}"#;
        let (ready, all) = super::ready_nodes(json).unwrap();
        assert_eq!(ready, ["a"]);
        assert_eq!(all, ["a", "b", "c"]);
        assert!(super::ready_nodes("nope").is_err());
    }
}
