use super::exec::{self, HostError};
use super::{host_plan, new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::transport::{fan_out, FanOutOptions};

pub struct Connect;

/// What a host must answer before anything is changed on it.
const FACTS: &str =
    "uname -m && . /etc/os-release && echo \"$ID $VERSION_ID\" && command -v systemctl";

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
                    Step::new("gather facts: architecture, OS, systemd"),
                ],
            ));
        }
        p.operator
            .push(Step::new("record newly pinned host keys in the state"));
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        let names: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
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
            let facts = exec::run(s.as_ref(), &name, FACTS, ctx.secrets, ctx.rt.verbose).await?;
            let arch = facts.lines().next().unwrap_or_default().to_string();
            if arch != "x86_64" && arch != "aarch64" {
                return Err(HostError::Other {
                    host: name.clone(),
                    message: format!("unsupported architecture `{arch}`"),
                });
            }
            Ok::<_, HostError>(())
        })
        .await;
        // Pin what was learned even when some hosts failed: the keys are facts.
        let keys = ctx.rt.host_keys.snapshot();
        ctx.state
            .update(|doc| doc.host_keys.extend(keys))
            .await
            .map_err(|source| PhaseError::State {
                phase: self.name().into(),
                source,
            })?;
        let errors: Vec<HostError> = results.into_iter().filter_map(|r| r.result.err()).collect();
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
