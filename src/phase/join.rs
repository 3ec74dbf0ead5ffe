use super::exec::{self, HostError};
use super::init::{kubeadm_join_flags, ADMIN_CONF};
use super::{host_plan, new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::render::views::BIN_DIR;
use crate::render::FileGroup;
use crate::transport::Transport;
use std::time::{Duration, Instant};

pub struct JoinControlPlane;
pub struct JoinWorkers;

const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
/// How long a joined control-plane node may take to show up as a started etcd member.
const MEMBER_WAIT: Duration = Duration::from_secs(180);

fn join_step(ctx: &PlanContext<'_>, control_plane: bool) -> Step {
    let flags = kubeadm_join_flags(ctx, control_plane);
    let step = Step::cmd(format!(
        "{BIN_DIR}/kubeadm join --config /etc/kubeforge/kubeadm-join.yaml{flags}"
    ));
    if control_plane {
        // kubelet.conf is written half-way through a control-plane join; the static
        // pods of etcd and the apiserver are the last thing it writes.
        step.unless_check(
            "the node joined and runs etcd and the apiserver",
            format!(
                "test -f {KUBELET_CONF} && test -f /etc/kubernetes/manifests/etcd.yaml && test -f /etc/kubernetes/manifests/kube-apiserver.yaml"
            ),
        )
    } else {
        step.unless_check(
            format!("{KUBELET_CONF} exists (the node joined)"),
            format!("test -f {KUBELET_CONF}"),
        )
    }
}

/// Re-upload the control-plane certificates (kubeadm keeps them 2 hours) and make sure
/// the bootstrap token exists (it expires after 24 hours): a resumed run may come later.
async fn refresh_join_credentials(ctx: &ApplyContext<'_>, phase: &str) -> Result<(), PhaseError> {
    let Some((first, s)) = ctx.first_control_plane(phase).await? else {
        return Ok(());
    };
    let err = |e: HostError| PhaseError::host(phase, e);
    let token = &ctx.secrets.bootstrap_token;
    let ensure_token = format!(
        "{BIN_DIR}/kubeadm token list --kubeconfig {ADMIN_CONF} | awk '{{print $1}}' | grep -qx {token} || {BIN_DIR}/kubeadm token create {token} --ttl 24h0m0s --kubeconfig {ADMIN_CONF}"
    );
    exec::run(
        s.as_ref(),
        &first.name,
        &ensure_token,
        ctx.secrets,
        ctx.rt.verbose,
    )
    .await
    .map_err(err)?;
    Ok(())
}

/// Started etcd members (those with a name), asked of the first control-plane node's
/// etcd with its health-check client certificate.
pub async fn etcd_members(
    t: &dyn Transport,
    host: &str,
    ctx: &ApplyContext<'_>,
) -> Result<Vec<String>, HostError> {
    let cmd = "curl -sS --max-time 5 --cacert /etc/kubernetes/pki/etcd/ca.crt \
--cert /etc/kubernetes/pki/etcd/healthcheck-client.crt --key /etc/kubernetes/pki/etcd/healthcheck-client.key \
-X POST https://127.0.0.1:2379/v3/cluster/member/list";
    let out = exec::run(t, host, cmd, ctx.secrets, false).await?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| HostError::Other {
        host: host.to_string(),
        message: format!("etcd member list is not JSON ({e}): {}", out.trim()),
    })?;
    Ok(v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    m["name"]
                        .as_str()
                        .filter(|n| !n.is_empty())
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default())
}

#[async_trait::async_trait]
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
        if !ctx.hosts.is_empty() {
            p.operator.push(Step::new(
                "on the first control-plane node: make sure the bootstrap token exists",
            ));
        }
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
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        if plan.hosts.is_empty() {
            return Ok(());
        }
        let phase = self.name().to_string();
        refresh_join_credentials(ctx, &phase).await?;
        let (first, s) =
            ctx.first_control_plane(&phase)
                .await?
                .ok_or_else(|| PhaseError::Gate {
                    phase: phase.clone(),
                    message: "no control-plane node".into(),
                })?;
        let err = |e: HostError| PhaseError::host(&phase, e);
        let mut expected = 1;
        // Strictly one node at a time; a failed join or gate stops the rest.
        for hp in &plan.hosts {
            expected += 1;
            let one = PhasePlan {
                hosts: vec![hp.clone()],
                ..plan.clone()
            };
            ctx.hosts(&one, &exec::NoSpecial).await?;
            let start = Instant::now();
            loop {
                let members = etcd_members(s.as_ref(), &first.name, ctx)
                    .await
                    .map_err(err)?;
                if members.len() >= expected {
                    break;
                }
                if start.elapsed() > MEMBER_WAIT {
                    return Err(PhaseError::Gate {
                        phase,
                        message: format!(
                            "after joining {}, etcd lists {} started members ({}), expected {expected}",
                            hp.host,
                            members.len(),
                            members.join(", ")
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            super::wait_ready::wait_readyz(ctx, s.as_ref(), &phase).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Phase for JoinWorkers {
    fn name(&self) -> &'static str {
        "join-workers"
    }
    fn description(&self) -> &'static str {
        "join the worker nodes in parallel"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        if !ctx.hosts.is_empty() {
            p.operator.push(Step::new(
                "on the first control-plane node: make sure the bootstrap token exists",
            ));
        }
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

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        if plan.hosts.is_empty() {
            return Ok(());
        }
        refresh_join_credentials(ctx, self.name()).await?;
        ctx.hosts(plan, &exec::NoSpecial).await.map(|_| ())
    }
}
