use super::exec::{self, HostError};
use super::{host_plan, new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::transport::{fan_out, FanOutOptions};

pub struct Connect;

#[async_trait::async_trait]
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
                    Step::new("gather facts: architecture, OS, systemd, installed containerd/kubelet/kubeadm, kubeadm state"),
                ],
            ));
        }
        p.operator
            .push(Step::new("record newly pinned host keys in the state"));
        p.operator.push(Step::new(
            "from a control-plane node that answers: nodes (registered, Ready, versions) and etcd members with their health",
        ));
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        let names: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
        // The facts the confirmed plan was made from, gathered moments ago by this run's
        // preview over the same connections: used as they are when they cover every host
        // (none missing or unreachable, no kubeforge command of an earlier run still
        // busy), nothing earlier in this run changed a machine, and this phase finished
        // last time. Otherwise (a fresh cluster, machines just made, a long wait at the
        // prompt) the hosts are asked again.
        if let Some(f) = ctx.rt.fresh_facts(super::FACTS_HOLD_FOR) {
            let covered = names.iter().all(|n| {
                f.hosts
                    .get(n)
                    .is_some_and(|h| h.busy.is_empty() && supported(h).is_ok())
            });
            if ctx.quiet && covered && f.absent.is_empty() {
                return record(ctx, self.name(), &f.pod_cidrs()).await;
            }
        }
        let opts = FanOutOptions {
            concurrency: ctx.rt.concurrency,
            progress: ctx.rt.progress,
            label: "connect".into(),
            cancel_on_ctrl_c: true,
        };
        let results = fan_out(&names, &opts, |name| async move {
            let host = ctx
                .cluster
                .topology
                .host(&name)
                .ok_or(HostError::Cancelled)?;
            let s = exec::session(ctx.rt, host).await?;
            let mut facts = host_facts(ctx, s.as_ref(), &name).await?;
            // A detached kubeadm of an earlier run (killed, or its connection lost) still
            // runs here: what it is doing would make the facts and the plan wrong (an
            // etcd member it added looks stale until its etcd starts).
            if !facts.busy.is_empty() {
                tracing::info!(
                    host = %name,
                    units = ?facts.busy,
                    "waiting for kubeforge commands of an earlier run to end"
                );
                ctx.note(format!(
                    "{name}: waited for {} of an earlier run to end",
                    facts.busy.join(", ")
                ));
                exec::run(
                    s.as_ref(),
                    &name,
                    &crate::facts::wait_units_command(&facts.busy),
                    ctx.secrets,
                    ctx.rt.verbose,
                )
                .await?;
                facts = host_facts(ctx, s.as_ref(), &name).await?;
            }
            Ok::<_, HostError>(facts)
        })
        .await;
        // Pin what was learned even when some hosts failed: the keys are facts.
        record(ctx, self.name(), &[]).await?;
        let mut facts = crate::facts::ClusterFacts {
            leaving: crate::facts::leaving(ctx.cluster, &ctx.state.get().await),
            ..Default::default()
        };
        let mut errors: Vec<HostError> = Vec::new();
        for r in results {
            match r.result {
                Ok(f) => {
                    facts.hosts.insert(r.host, f);
                }
                Err(e) => {
                    facts.absent.insert(
                        r.host,
                        crate::facts::Absence::Unreachable(ctx.secrets.redact(&e.to_string())),
                    );
                    errors.push(e);
                }
            }
        }
        // A node keeps the pod /24 it has: pinned for this run's rendering and recorded.
        record(ctx, self.name(), &facts.pod_cidrs()).await?;
        // Nodes and etcd as the cluster sees them, for the phases' plans.
        let facts = crate::facts::complete(&ctx.rt.pool, ctx.cluster, facts, ctx.secrets).await;
        ctx.rt.set_facts(facts);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PhaseError::Hosts {
                phase: self.name().into(),
                errors,
            })
        }
    }
}

/// Record the pinned host keys and the nodes' pod subnets in the state (each node keeps
/// the /24 it has; pinned for this run's rendering too). Unchanged values are no write.
async fn record(
    ctx: &ApplyContext<'_>,
    phase: &str,
    pods: &[(String, ipnet::IpNet)],
) -> Result<(), PhaseError> {
    let keys = ctx.rt.host_keys.snapshot();
    if !pods.is_empty() {
        ctx.cluster.topology.pod_cidr_pins.pin(pods.to_vec());
    }
    ctx.state
        .update(|doc| {
            doc.host_keys.extend(keys);
            for (n, c) in pods {
                doc.pod_cidrs.insert(n.clone(), c.to_string());
            }
        })
        .await
        .map_err(|source| PhaseError::State {
            phase: phase.into(),
            source,
        })
}

/// The facts of one host, refused when kubeforge cannot run there.
async fn host_facts(
    ctx: &ApplyContext<'_>,
    s: &dyn crate::transport::Transport,
    name: &str,
) -> Result<crate::facts::HostFacts, HostError> {
    let out = exec::run(
        s,
        name,
        &crate::facts::host_command(),
        ctx.secrets,
        ctx.rt.verbose,
    )
    .await?;
    let facts = crate::facts::parse_host(&out);
    supported(&facts).map_err(|message| HostError::Other {
        host: name.to_string(),
        message,
    })?;
    Ok(facts)
}

/// Whether kubeforge can run on a host with these facts.
fn supported(facts: &crate::facts::HostFacts) -> Result<(), String> {
    if facts.arch != "x86_64" && facts.arch != "aarch64" {
        return Err(format!("unsupported architecture `{}`", facts.arch));
    }
    if !facts.systemd {
        return Err("systemd (systemctl) is required".into());
    }
    Ok(())
}
