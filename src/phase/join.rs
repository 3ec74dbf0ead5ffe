use super::exec::{self, HostError};
use super::{
    host_plan, new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Special, Step,
};
use crate::render::FileGroup;
use std::time::{Duration, Instant};

pub struct JoinControlPlane;
pub struct JoinWorkers;

use crate::kube::{etcd, Kubeadm, KUBELET_CONF};
/// How long a joined control-plane node may take to show up as a started etcd member.
const MEMBER_WAIT: Duration = Duration::from_secs(180);

fn join_step(ctx: &PlanContext<'_>, control_plane: bool) -> Step {
    let join = Kubeadm::of(ctx.cluster).join(control_plane);
    let step = Step {
        run: Some(crate::kube::kubeadm::detached(
            "kubeforge-kubeadm-join",
            &join,
            crate::kube::kubeadm::JOIN_DONE,
        )),
        ..Step::cmd(format!(
            "{join} (detached: survives a lost connection; log in {}/kubeforge-kubeadm-join.log)",
            crate::kube::kubeadm::LOG_DIR
        ))
    };
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

/// The public half of the bootstrap token (`abcdef` of `abcdef.0123456789abcdef`).
fn token_id(secrets: &crate::render::Secrets) -> &str {
    secrets
        .bootstrap_token
        .split('.')
        .next()
        .unwrap_or_default()
}

/// Make sure the bootstrap token exists (it expires after 24 hours) and, before
/// control-plane joins, that the control-plane certificates are uploaded (kubeadm
/// deletes them two hours after an upload): a resumed run, or a node added to an old
/// cluster, may come much later. No secret is on these command lines.
async fn refresh_join_credentials(
    ctx: &ApplyContext<'_>,
    phase: &str,
    control_plane: bool,
) -> Result<(), PhaseError> {
    let Some((first, s)) = ctx.first_control_plane(phase).await? else {
        return Ok(());
    };
    let err = |e: HostError| PhaseError::host(phase, e);
    let kubeadm = Kubeadm::of(ctx.cluster);
    let mut cmds = vec![kubeadm.ensure_token(token_id(ctx.secrets))];
    if control_plane {
        cmds.push(kubeadm.ensure_uploaded_certs());
    }
    for cmd in cmds {
        exec::run(s.as_ref(), &first.name, &cmd, ctx.secrets, ctx.rt.verbose)
            .await
            .map_err(err)?;
    }
    Ok(())
}

/// Plan the deletion of the Node objects of hosts that are not joined (`joined` says
/// what joined means for the phase) but whose Node the API server still has: their
/// machine was replaced.
fn push_stale_node_deletions(
    ctx: &PlanContext<'_>,
    p: &mut PhasePlan,
    joined: impl Fn(&crate::facts::HostFacts) -> bool,
) {
    let Some(f) = ctx.facts else {
        return;
    };
    for h in &ctx.hosts {
        let is_joined = f.host(&h.name).is_some_and(&joined);
        let reachable = f.host(&h.name).is_some();
        if reachable && !is_joined && f.node(&h.name).is_some() {
            p.operator.push(Step::special(
                Special::DeleteNode {
                    name: h.name.clone(),
                },
                format!(
                    "delete the Node {} left by its previous machine (it joins again)",
                    h.name
                ),
            ));
        }
    }
}

/// Carry out the plan's repairs before the joins: stale etcd members removed (checked
/// again now: still there, still not healthy, quorum holding) and stale Node objects
/// deleted.
async fn repair_before_joins(
    ctx: &ApplyContext<'_>,
    phase: &str,
    plan: &PhasePlan,
) -> Result<(), PhaseError> {
    let repairs: Vec<&Special> = plan
        .operator
        .iter()
        .filter_map(|s| s.special.as_ref())
        .collect();
    if repairs.is_empty() {
        return Ok(());
    }
    let gate = |message: String| PhaseError::Gate {
        phase: phase.to_string(),
        message,
    };
    // Through the node that holds the init configuration (a running control plane).
    let (host, s) = ctx
        .first_control_plane(phase)
        .await?
        .ok_or_else(|| gate("no control-plane node to repair through".into()))?;
    for r in repairs {
        match r {
            Special::RemoveEtcdMember { id, name } => {
                let members = etcd::members(s.as_ref(), &host.name, ctx.secrets)
                    .await
                    .map_err(|e| PhaseError::host(phase, e))?;
                let Some(m) = members.iter().find(|m| m.id == *id) else {
                    continue;
                };
                let healthy_ids = etcd::healthy(s.as_ref(), &members).await;
                let healthy = healthy_ids.len();
                if healthy_ids.contains(&m.id) {
                    // Its etcd started since the facts were read: a healthy member is
                    // never removed (its host's join step checks what is done there).
                    ctx.note(format!(
                        "etcd member {} ({name}) answers as healthy now: kept, not removed",
                        m.hex_id()
                    ));
                    continue;
                }
                if !etcd::quorum_holds(members.len(), healthy) {
                    return Err(gate(format!(
                        "etcd has lost quorum ({healthy} of {} members healthy): members are not removed and nodes not joined; restore from a snapshot instead",
                        members.len()
                    )));
                }
                etcd::remove_member(s.as_ref(), &host.name, *id, ctx.secrets)
                    .await
                    .map_err(|e| PhaseError::host(phase, e))?;
                ctx.note(format!(
                    "removed stale etcd member {} ({})",
                    m.hex_id(),
                    if name.is_empty() {
                        "never started"
                    } else {
                        name
                    }
                ));
            }
            Special::DeleteNode { name } => {
                crate::kube::delete_node(s.as_ref(), &host.name, name, ctx.secrets)
                    .await
                    .map_err(|e| PhaseError::host(phase, e))?;
                ctx.note(format!("deleted the Node {name} of the previous machine"));
            }
            _ => {}
        }
    }
    let removed = super::prune_cluster_status(ctx, s.as_ref(), &host.name, phase).await?;
    if !removed.is_empty() {
        ctx.note(format!(
            "removed kubeadm ClusterStatus entries of control planes no longer in the inventory: {}",
            removed.join(", ")
        ));
    }
    Ok(())
}

/// Names of the started etcd members, asked of `host`'s etcd.
pub async fn etcd_members(
    t: &dyn crate::transport::Transport,
    host: &str,
    ctx: &ApplyContext<'_>,
) -> Result<Vec<String>, HostError> {
    Ok(etcd::members(t, host, ctx.secrets)
        .await?
        .into_iter()
        .filter(|m| m.started())
        .map(|m| m.name)
        .collect())
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
            let k = Kubeadm::of(ctx.cluster);
            p.operator.push(Step::new(format!(
                "on the first control-plane node, make sure the bootstrap token exists (`{}`) and the control-plane certificates are uploaded, kubeadm keeps them 2 hours (`{}`)",
                k.ensure_token(token_id(ctx.secrets)),
                k.ensure_uploaded_certs()
            )));
        }
        // From the facts: members and Node objects left by machines that are gone (or by
        // joins that never finished) go before any join; kubeadm checks every member.
        if let Some(f) = ctx.facts {
            if let Some(e) = &f.etcd {
                for m in &e.stale {
                    p.operator.push(Step::special(
                        Special::RemoveEtcdMember {
                            id: m.id,
                            name: m.name.clone(),
                        },
                        format!(
                            "remove stale etcd member {} ({}, peer {}) through {}, while {} of {} members are healthy (refused if that would break quorum)",
                            m.hex_id(),
                            if m.name.is_empty() { "never started" } else { m.name.as_str() },
                            m.peer_urls.first().map(String::as_str).unwrap_or("-"),
                            e.asked,
                            e.healthy.len(),
                            e.members.len()
                        ),
                    ));
                }
            }
        }
        push_stale_node_deletions(ctx, &mut p, |f| f.control_plane_manifests);
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
            if members == 2 {
                p.operator.push(Step::new(
                    "if etcd had a single member before this join: replace the kube-proxy Pods (their watches went blind while etcd had no leader)",
                ));
            }
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        if plan.hosts.is_empty() {
            return Ok(());
        }
        let phase = self.name().to_string();
        let (first, s) =
            ctx.first_control_plane(&phase)
                .await?
                .ok_or_else(|| PhaseError::Gate {
                    phase: phase.clone(),
                    message: "no control-plane node".into(),
                })?;
        let err = |e: HostError| PhaseError::host(&phase, e);
        if ctx.nothing_to_do(plan) {
            // Every node joined (the preview saw it moments ago): no credentials to
            // refresh, no join; what the gates prove after the last join is proved once,
            // or stands on the preview's facts when they show it: every member started
            // and healthy, none stale, and the API answering through the endpoint.
            ctx.hosts(plan, &exec::NoSpecial).await?;
            let proved = ctx.standing_facts().is_some_and(|f| {
                f.nodes.is_some()
                    && f.etcd.as_ref().is_some_and(|e| {
                        e.members.iter().filter(|m| m.started()).count() > plan.hosts.len()
                            && e.healthy.len() == e.members.len()
                            && e.stale.is_empty()
                    })
            });
            if proved {
                return Ok(());
            }
            wait_members(
                ctx,
                s.as_ref(),
                &first.name,
                &phase,
                1 + plan.hosts.len(),
                "the joins",
            )
            .await?;
            return super::wait_readyz(ctx, s.as_ref(), &phase).await;
        }
        repair_before_joins(ctx, &phase, plan).await?;
        refresh_join_credentials(ctx, &phase, true).await?;
        // A lone etcd member loses its leader when the second member is added, until
        // that member's etcd starts: watches served by the apiserver next to it stay
        // silent afterwards (reproduced here: clients that reconnect, such as kubelets,
        // recover; kube-proxy keeps its blind watch and never programs a new Service).
        let lone_member = etcd_members(s.as_ref(), &first.name, ctx)
            .await
            .map_err(err)?
            .len()
            == 1;
        let mut expected = 1;
        // Strictly one node at a time; a failed join or gate stops the rest.
        for hp in &plan.hosts {
            expected += 1;
            let one = PhasePlan {
                hosts: vec![hp.clone()],
                ..plan.clone()
            };
            ctx.hosts(&one, &exec::NoSpecial).await?;
            let after = format!("joining {}", hp.host);
            wait_members(ctx, s.as_ref(), &first.name, &phase, expected, &after).await?;
            super::wait_readyz(ctx, s.as_ref(), &phase).await?;
            if lone_member && expected == 2 {
                replace_kube_proxies(ctx, s.as_ref(), &first.name)
                    .await
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Gate: etcd (asked of `first`) lists at least `expected` started members within
/// `MEMBER_WAIT`.
async fn wait_members(
    ctx: &ApplyContext<'_>,
    t: &dyn crate::transport::Transport,
    first: &str,
    phase: &str,
    expected: usize,
    after: &str,
) -> Result<(), PhaseError> {
    let start = Instant::now();
    loop {
        let members = etcd_members(t, first, ctx)
            .await
            .map_err(|e| PhaseError::host(phase, e))?;
        if members.len() >= expected {
            return Ok(());
        }
        if start.elapsed() > MEMBER_WAIT {
            return Err(PhaseError::Gate {
                phase: phase.to_string(),
                message: format!(
                    "after {after}, etcd lists {} started members ({}), expected {expected}",
                    members.len(),
                    members.join(", ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Replace every kube-proxy Pod: run after etcd went from one member to two, whose
/// leaderless moment left their watches blind.
async fn replace_kube_proxies(
    ctx: &ApplyContext<'_>,
    t: &dyn crate::transport::Transport,
    first: &str,
) -> Result<(), HostError> {
    let pods = crate::kube::replace_kube_proxies(t, first, None, ctx.secrets, false).await?;
    if !pods.is_empty() {
        ctx.note(format!(
            "etcd went from one member to two (its leader is gone until the new member starts, and the watches of the first kube-apiserver stay blind after that): replaced the kube-proxy Pods that were running ({})",
            pods.join(", ")
        ));
    }
    Ok(())
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
            p.operator.push(Step::new(format!(
                "on the first control-plane node, make sure the bootstrap token exists (`{}`)",
                Kubeadm::of(ctx.cluster).ensure_token(token_id(ctx.secrets))
            )));
        }
        // A worker that joins again (its machine was replaced): its old Node object goes
        // first (kubeadm refuses to join over a Node that still shows Ready).
        push_stale_node_deletions(ctx, &mut p, |f| f.kubelet_conf);
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
        if !ctx.nothing_to_do(plan) {
            repair_before_joins(ctx, self.name(), plan).await?;
            refresh_join_credentials(ctx, self.name(), false).await?;
        }
        ctx.hosts(plan, &exec::NoSpecial).await.map(|_| ())
    }
}
