use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::provider::{MachineRole, MachineSpec, Provider as _};
use crate::spec::{Host, Provider, Role};
use crate::state::Machine;

pub struct Provision;

/// The docker provider's machine spec of a host.
pub fn machine_spec(h: &Host) -> MachineSpec {
    let role = if h.has(Role::ControlPlane) {
        MachineRole::ControlPlane
    } else if h.has(Role::LoadBalancer) {
        MachineRole::LoadBalancer
    } else {
        MachineRole::Worker
    };
    MachineSpec {
        name: h.name.clone(),
        role,
        ip: h.address,
    }
}

#[async_trait::async_trait]
impl Phase for Provision {
    fn name(&self) -> &'static str {
        "provision"
    }
    fn description(&self) -> &'static str {
        "create the machines through the provider and record them in the state"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let c = ctx.cluster;
        match &c.cluster.spec.provider {
            Provider::Docker(d) => {
                let net = d.network.clone().unwrap_or_else(|| c.name().to_string());
                let subnet = c
                    .topology
                    .node_subnet
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                p.operator.push(
                    Step::new(format!(
                        "ensure docker network `{net}` ({subnet}, internal)"
                    ))
                    .unless("it exists with this subnet"),
                );
                for h in &c.topology.hosts {
                    p.operator.push(
                        Step::new(format!(
                            "ensure machine `{}` at {} ({})",
                            h.name,
                            h.address,
                            h.roles_text()
                        ))
                        .unless("a machine of that name runs"),
                    );
                }
            }
            Provider::Static(s) => {
                for h in &c.topology.hosts {
                    p.operator.push(Step::new(format!(
                        "use host `{}` at {} ({}) from {}",
                        h.name,
                        h.address,
                        h.roles_text(),
                        s.inventory
                    )));
                }
            }
        }
        let cps = c.topology.with_role(Role::ControlPlane).count();
        p.operator.push(Step::new(format!(
            "record {} machines ({cps} control-plane) in the state",
            c.topology.hosts.len()
        )));
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, _plan: &PhasePlan) -> Result<(), PhaseError> {
        let c = ctx.cluster;
        let mut ids = std::collections::BTreeMap::new();
        if let Some(docker) = ctx.docker {
            let specs: Vec<MachineSpec> = c.topology.hosts.iter().map(machine_spec).collect();
            let machines = docker
                .ensure(&specs)
                .await
                .map_err(|source| PhaseError::Provider {
                    phase: self.name().into(),
                    source,
                })?;
            for m in machines {
                ids.insert(m.name.clone(), m.id.clone());
            }
        }
        let hosts = c.topology.hosts.clone();
        ctx.state
            .update(|doc| {
                for h in &hosts {
                    doc.machines.insert(
                        h.name.clone(),
                        Machine {
                            name: h.name.clone(),
                            provider_id: ids.get(&h.name).cloned(),
                            addresses: std::iter::once(h.address.to_string())
                                .chain(
                                    (h.internal_address != h.address)
                                        .then(|| h.internal_address.to_string()),
                                )
                                .collect(),
                            roles: h.roles.iter().map(|r| r.as_str().to_string()).collect(),
                            labels: h.labels.clone(),
                        },
                    );
                }
            })
            .await
            .map_err(|source| PhaseError::State {
                phase: self.name().into(),
                source,
            })
    }
}
