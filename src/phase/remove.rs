//! `remove-nodes`: take the machines that left the cluster file out of the cluster, one
//! at a time (workers, then control planes, then load balancers): drain the node
//! (PodDisruptionBudgets respected, bounded by `--drain-timeout`), for a control plane
//! remove its etcd member through a member that stays (checked again right before:
//! refused if the members left would have no healthy majority) and its kubeadm
//! `ClusterStatus` entry, reset the host over SSH (as `kubeforge reset` does), delete
//! the Node, delete the machine at the provider (static hosts stay, reset), and forget
//! it in the state. It runs after `load-balancer`, so HAProxy no longer sends requests
//! to a control plane that leaves, and before any join (a control plane that replaces
//! one joins a cluster without the old member).
//!
//! Every step finds its own result if it is already there (a Node already gone, a
//! member already removed, a machine already deleted), so a killed run resumes; the
//! state forgets the machine last.

use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Special, Step};
use crate::facts::Leaving;
use crate::kube::etcd;
use crate::spec::Role;

pub struct RemoveNodes;

/// The phase's name in playbooks.
pub const NAME: &str = "remove-nodes";

/// How long a leaving host may take to answer SSH before it is taken as gone.
const RESET_CONNECT: std::time::Duration = std::time::Duration::from_secs(20);

fn gate(message: String) -> PhaseError {
    PhaseError::Gate {
        phase: NAME.into(),
        message,
    }
}

/// The etcd removals the plan makes, in order, as (member id, machine name).
pub fn member_removals(facts: &crate::facts::ClusterFacts) -> Vec<(u64, String)> {
    let Some(e) = &facts.etcd else {
        return Vec::new();
    };
    // Members that are not healthy go first: removing them never costs a quorum.
    let mut out: Vec<(bool, u64, String)> = Vec::new();
    for l in facts.leaving.iter().filter(|l| l.has(Role::ControlPlane)) {
        for m in e.members.iter().filter(|m| l.owns_member(m)) {
            out.push((e.healthy.contains(&m.id), m.id, l.name.clone()));
        }
    }
    out.sort_by_key(|(healthy, _, _)| *healthy);
    out.into_iter().map(|(_, id, name)| (id, name)).collect()
}

/// Whether the removals the facts call for keep etcd's quorum (the refusal otherwise).
pub fn check_quorum(facts: &crate::facts::ClusterFacts) -> Result<(), String> {
    let removals = member_removals(facts);
    if removals.is_empty() {
        return Ok(());
    }
    let Some(e) = &facts.etcd else {
        return Ok(());
    };
    etcd::removals_keep_quorum(&e.members, &e.healthy, &removals)
}

fn steps_for(l: &Leaving, facts: &crate::facts::ClusterFacts, made: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let name = &l.name;
    if l.is_kubernetes_node() {
        match facts.node(name) {
            Some(n) if n.ready => steps.push(Step::special(
                Special::Drain { name: name.clone() },
                format!(
                    "kubectl drain {name} --ignore-daemonsets --delete-emptydir-data (PodDisruptionBudgets respected, at most --drain-timeout)"
                ),
            )),
            Some(_) => steps.push(Step::new(format!(
                "no drain: {name} is not Ready (its Pods go with its Node)"
            ))),
            None => {}
        }
    }
    if l.has(Role::ControlPlane) {
        let what = match &facts.etcd {
            Some(e) => match e.members.iter().find(|m| l.owns_member(m)) {
                Some(m) => format!(
                    "remove etcd member {} ({name}) through {}: {} members now, {} healthy; each removal is checked again right before it (refused if the members left would have no healthy majority)",
                    m.hex_id(),
                    e.asked,
                    e.members.len(),
                    e.healthy.len()
                ),
                None => format!("{name} has no etcd member (nothing to remove)"),
            },
            None => format!("remove the etcd member of {name}, if any (etcd is asked right before)"),
        };
        steps.push(Step::special(
            Special::LeaveEtcd { name: name.clone() },
            format!("{what}; and its kubeadm ClusterStatus entry"),
        ));
    }
    steps.push(Step::special(
        Special::ResetHost { name: name.clone() },
        format!(
            "reset {name} ({}) over SSH as `kubeforge reset` does: {}kubeforge's files; a host that does not answer is left as it is (with a warning)",
            l.address,
            if l.is_kubernetes_node() {
                "kubeadm reset, kubelet and etcd data, pod network, KUBE-* iptables rules, "
            } else {
                "HAProxy and keepalived stopped and their configuration removed, "
            }
        ),
    ));
    if l.is_kubernetes_node() && facts.node(name).is_some() {
        steps.push(Step::special(
            Special::DeleteNode { name: name.clone() },
            format!("delete the Node {name}"),
        ));
    }
    if made && l.provider_id.is_some() {
        steps.push(Step::special(
            Special::DeleteMachine { name: name.clone() },
            format!(
                "delete the machine {name} ({}) and its disks at the provider",
                l.provider_id.as_deref().unwrap_or_default()
            ),
        ));
    }
    steps.push(Step::special(
        Special::ForgetMachine { name: name.clone() },
        format!("forget {name} in the state (its machine record and pinned host keys)"),
    ));
    steps
}

#[async_trait::async_trait]
impl Phase for RemoveNodes {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "take the machines no longer in the cluster file out of the cluster: drain, etcd member, reset, Node, machine"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let Some(f) = ctx.facts else {
            return p;
        };
        if let Err(refusal) = check_quorum(f) {
            p.operator.push(Step::new(format!("REFUSED: {refusal}")));
        }
        let made = !matches!(
            ctx.cluster.cluster.spec.provider,
            crate::spec::Provider::Static(_)
        );
        for l in &f.leaving {
            p.operator.extend(steps_for(l, f, made));
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        let steps: Vec<&Special> = plan
            .operator
            .iter()
            .filter_map(|s| s.special.as_ref())
            .collect();
        if steps.is_empty() {
            return Ok(());
        }
        let facts = ctx.rt.facts().unwrap_or_default();
        if let Err(refusal) = check_quorum(&facts) {
            return Err(gate(format!("{refusal}; nothing was removed")));
        }
        let leaving = |name: &str| facts.leaving.iter().find(|l| l.name == name);
        // Through the node that holds the init configuration (a control plane that stays).
        let api = ctx.first_control_plane(self.name()).await.ok().flatten();
        let need_api = |what: &str| {
            api.as_ref().ok_or_else(|| {
                format!("no control-plane node of the cluster file answers: cannot {what}")
            })
        };
        let mut done = 0usize;
        let mut reached = std::collections::HashMap::new();
        for step in steps {
            match step {
                Special::Drain { name } => {
                    let Some(l) = leaving(name) else { continue };
                    if !reached.contains_key(name) {
                        reached.insert(name.clone(), reach(ctx, l).await);
                    }
                    if let Some(Err(why)) = reached.get(name) {
                        // A node whose machine is gone cannot let its Pods go: they go
                        // with its Node (the drain would wait for them until its limit).
                        ctx.note(format!(
                            "{name} {why}: not drained (its Pods go with its Node)"
                        ));
                        continue;
                    }
                    let (_, s) = need_api("drain").map_err(gate)?;
                    super::upgrade::drain(ctx, s.as_ref(), name)
                        .await
                        .map_err(|e| {
                            gate(format!(
                                "{name}: {e}; it stays cordoned and in the cluster, a new run drains it again"
                            ))
                        })?;
                    ctx.note(format!("drained {name}"));
                }
                Special::LeaveEtcd { name } => {
                    let (host, s) = need_api("remove an etcd member").map_err(gate)?;
                    let Some(l) = leaving(name) else { continue };
                    leave_etcd(ctx, &host.name, s.as_ref(), l).await?;
                }
                Special::ResetHost { name } => {
                    let Some(l) = leaving(name) else { continue };
                    if !reached.contains_key(name) {
                        reached.insert(name.clone(), reach(ctx, l).await);
                    }
                    if let Some(r) = reached.get(name) {
                        reset_host(ctx, l, r).await;
                    }
                }
                Special::DeleteNode { name } => {
                    let (host, s) = need_api("delete a Node").map_err(gate)?;
                    crate::kube::delete_node(s.as_ref(), &host.name, name, ctx.secrets)
                        .await
                        .map_err(|e| PhaseError::host(self.name(), e))?;
                    ctx.note(format!("deleted the Node {name}"));
                }
                Special::DeleteMachine { name } => {
                    if let Some(p) = ctx.provider {
                        p.delete(name)
                            .await
                            .map_err(|source| PhaseError::Provider {
                                phase: self.name().into(),
                                source,
                            })?;
                        ctx.note(format!("deleted the machine {name}"));
                    }
                }
                Special::ForgetMachine { name } => {
                    let Some(l) = leaving(name) else { continue };
                    let mut keys = l.addresses.clone();
                    keys.push(l.name.clone());
                    for k in &keys {
                        ctx.rt.host_keys.forget(k);
                    }
                    ctx.cluster.topology.pod_cidr_pins.unpin(&l.name);
                    ctx.state
                        .update(|doc| {
                            doc.machines.remove(&l.name);
                            doc.pod_cidrs.remove(&l.name);
                            for k in &keys {
                                doc.host_keys.remove(k);
                            }
                        })
                        .await
                        .map_err(|source| PhaseError::State {
                            phase: self.name().into(),
                            source,
                        })?;
                    ctx.note(format!("{name} left the cluster"));
                }
                Special::InstallArtifacts | Special::RemoveEtcdMember { .. } => continue,
            }
            done += 1;
        }
        if let Ok(mut d) = ctx.done.lock() {
            d.steps_run += done;
        }
        Ok(())
    }
}

/// Remove `l`'s etcd member through the member on `host` (one that stays), after the
/// quorum check against the members and health as they are now; then its kubeadm
/// ClusterStatus entry (kubeadm before 1.22).
async fn leave_etcd(
    ctx: &ApplyContext<'_>,
    host: &str,
    s: &dyn crate::transport::Transport,
    l: &Leaving,
) -> Result<(), PhaseError> {
    let phase = NAME;
    let members = etcd::members(s, host, ctx.secrets)
        .await
        .map_err(|e| PhaseError::host(phase, e))?;
    let healthy = etcd::healthy(s, &members).await;
    let mine: Vec<(u64, String)> = members
        .iter()
        .filter(|m| l.owns_member(m))
        .map(|m| (m.id, l.name.clone()))
        .collect();
    etcd::removals_keep_quorum(&members, &healthy, &mine)
        .map_err(|e| gate(format!("{e}; {} was not removed", l.name)))?;
    for (id, _) in &mine {
        etcd::remove_member(s, host, *id, ctx.secrets)
            .await
            .map_err(|e| PhaseError::host(phase, e))?;
        ctx.note(format!(
            "removed etcd member {id:x} ({}): {} members left",
            l.name,
            members.len() - 1
        ));
    }
    super::prune_cluster_status(ctx, s, host, phase).await?;
    Ok(())
}

/// The connection to a leaving host (its pinned key checked as always), or why there
/// is none: its machine is gone at the provider, or it does not answer.
async fn reach(
    ctx: &ApplyContext<'_>,
    l: &Leaving,
) -> Result<std::sync::Arc<crate::transport::SshSession>, String> {
    if let Some(p) = ctx.provider {
        if let Ok(machines) = p.list().await {
            let running = machines
                .iter()
                .any(|m| m.name == l.name && m.state == crate::provider::MachineState::Running);
            if !running {
                return Err("no running machine at the provider".into());
            }
        }
    }
    match tokio::time::timeout(RESET_CONNECT, ctx.rt.pool.session(&l.address)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("does not answer over SSH ({e})")),
        Err(_) => Err(format!(
            "did not answer over SSH within {} s",
            RESET_CONNECT.as_secs()
        )),
    }
}

/// Reset a leaving host over SSH. A host that does not answer is left alone with a
/// warning: its machine is deleted next (made by a provider), or it must be reset by
/// hand before it is used again (static).
async fn reset_host(
    ctx: &ApplyContext<'_>,
    l: &Leaving,
    reached: &Result<std::sync::Arc<crate::transport::SshSession>, String>,
) {
    let s = match reached {
        Ok(s) => s,
        Err(why) if why.starts_with("no running machine") => {
            ctx.note(format!("{}: {why}, nothing to reset", l.name));
            return;
        }
        Err(why) => {
            ctx.note(format!(
                "warning: {} ({}) {why}: not reset; reset it by hand (kubeadm reset -f) before it is used again",
                l.name, l.address
            ));
            return;
        }
    };
    let cmd = if l.is_kubernetes_node() {
        super::reset::node_command()
    } else {
        super::reset::lb_command()
    };
    match super::exec::run(s.as_ref(), &l.name, &cmd, ctx.secrets, ctx.rt.verbose).await {
        Ok(_) => ctx.note(format!("reset {}", l.name)),
        Err(e) => ctx.note(format!(
            "warning: resetting {} failed ({e}); it is out of the cluster, reset it by hand before it is used again",
            l.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{ClusterFacts, EtcdFacts};

    fn member(id: u64, name: &str, ip: &str) -> etcd::Member {
        etcd::Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{ip}:2380")],
            client_urls: vec![],
        }
    }

    fn leaving(name: &str, ip: &str, role: Role) -> Leaving {
        Leaving {
            name: name.into(),
            address: ip.into(),
            addresses: vec![ip.into()],
            roles: vec![role],
            provider_id: Some("c0ffee".into()),
        }
    }

    #[test]
    fn unhealthy_members_go_first_and_a_lost_majority_is_refused() {
        let mut f = ClusterFacts {
            etcd: Some(EtcdFacts {
                asked: "cp-1".into(),
                members: vec![
                    member(1, "cp-1", "10.0.0.10"),
                    member(2, "cp-2", "10.0.0.11"),
                    member(3, "cp-3", "10.0.0.12"),
                ],
                healthy: vec![1, 2],
                stale: vec![],
            }),
            leaving: vec![
                leaving("w-2", "10.0.0.21", Role::Worker),
                leaving("cp-2", "10.0.0.11", Role::ControlPlane),
                leaving("cp-3", "10.0.0.12", Role::ControlPlane),
            ],
            ..Default::default()
        };
        // cp-3 (down) first, then cp-2: {cp-1} is left, healthy.
        assert_eq!(
            member_removals(&f),
            vec![(3, "cp-3".to_string()), (2, "cp-2".to_string())]
        );
        assert!(check_quorum(&f).is_ok());
        // cp-1 down instead: removing cp-2 leaves {cp-1 down, cp-3}.
        f.etcd.as_mut().unwrap().healthy = vec![2, 3];
        let e = check_quorum(&f).unwrap_err();
        assert!(e.contains("removing cp-"), "{e}");
    }

    #[test]
    fn the_plan_names_every_step_and_a_static_host_is_not_deleted() {
        let f = ClusterFacts {
            leaving: vec![leaving("w-2", "10.0.0.21", Role::Worker)],
            nodes: Some(vec![crate::kube::NodeInfo {
                name: "w-2".into(),
                ready: true,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let l = &f.leaving[0];
        let made: Vec<String> = steps_for(l, &f, true)
            .into_iter()
            .map(|s| s.action)
            .collect();
        assert!(made[0].starts_with("kubectl drain w-2 "), "{made:?}");
        assert!(made.iter().any(|s| s.starts_with("delete the Node w-2")));
        assert!(made
            .iter()
            .any(|s| s.starts_with("delete the machine w-2 (c0ffee)")));
        assert!(made.last().unwrap().starts_with("forget w-2"));
        let static_host: Vec<String> = steps_for(l, &f, false)
            .into_iter()
            .map(|s| s.action)
            .collect();
        assert!(!static_host
            .iter()
            .any(|s| s.starts_with("delete the machine")));
    }
}
