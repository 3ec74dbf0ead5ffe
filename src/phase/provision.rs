use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::spec::{Provider, Role};
use crate::state::Machine;

pub struct Provision;

pub use crate::provider::factory::{
    cloud_context, machine_spec, machine_specs, open_cloud, planned_cloud_resources, public_key,
};

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
            cloud @ (Provider::Aws(_) | Provider::Hetzner(_) | Provider::Sakura(_)) => {
                for r in planned_cloud_resources(c) {
                    let addr = c
                        .topology
                        .host(&r.name)
                        .map(|h| format!(" at {} ({})", h.address, h.roles_text()))
                        .unwrap_or_default();
                    p.operator.push(
                        Step::new(format!(
                            "ensure {} `{}`{addr} on {}",
                            r.kind,
                            r.name,
                            cloud.name()
                        ))
                        .unless("it exists with the cluster tag"),
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
                        match &h.origin {
                            Some(o) => format!("{o} in {}", s.source()),
                            None => s.source(),
                        }
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
        let mut public = std::collections::BTreeMap::new();
        if let Some(provider) = ctx.provider {
            let specs = machine_specs(c);
            let machines =
                provider
                    .ensure(&specs)
                    .await
                    .map_err(|source| PhaseError::Provider {
                        phase: self.name().into(),
                        source,
                    })?;
            for m in machines {
                ids.insert(m.name.clone(), m.id.clone());
                if let Some(ip) = m.public_ip {
                    public.insert(m.name.clone(), ip.to_string());
                }
            }
        }
        let hosts = c.topology.hosts.clone();
        // A machine the provider made anew (its id changed) has a new host key: its old
        // pin is dropped, and the key it has now is pinned on first contact. An existing
        // machine whose key changes is still refused.
        let before = ctx.state.get().await;
        let remade: Vec<&crate::spec::Host> = hosts
            .iter()
            .filter(|h| {
                let old = before
                    .machines
                    .get(&h.name)
                    .and_then(|m| m.provider_id.as_ref());
                matches!((old, ids.get(&h.name)), (Some(old), Some(new)) if old != new)
            })
            .collect();
        for h in &remade {
            ctx.note(format!(
                "{} was re-created by the provider: its new SSH host key will be pinned",
                h.name
            ));
            ctx.rt.host_keys.forget(&h.address.to_string());
            ctx.rt.host_keys.forget(&h.name);
        }
        let forget: Vec<String> = remade
            .iter()
            .flat_map(|h| [h.address.to_string(), h.name.clone()])
            .collect();
        ctx.state
            .update(|doc| {
                for k in &forget {
                    doc.host_keys.remove(k);
                }
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
                                .chain(public.get(&h.name).cloned())
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
