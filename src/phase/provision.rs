use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::provider::cloud::CloudContext;
use crate::provider::{self, MachineRole, MachineSpec, Provider as ProviderTrait};
use crate::spec::{Endpoint, Host, LoadedCluster, Provider, Role};
use crate::state::Machine;
use crate::transport::SshAuth;

pub struct Provision;

/// The machine spec of a host: its role, fixed address and its pool's extra disks
/// (sizes were checked on load).
pub fn machine_spec(c: &LoadedCluster, h: &Host) -> MachineSpec {
    let pools = &c.cluster.spec.node_pools;
    let (role, pool) = if h.has(Role::ControlPlane) {
        (MachineRole::ControlPlane, &pools.control_plane)
    } else if h.has(Role::LoadBalancer) {
        (MachineRole::LoadBalancer, &pools.load_balancers)
    } else {
        (MachineRole::Worker, &pools.workers)
    };
    MachineSpec {
        name: h.name.clone(),
        role,
        ip: h.address,
        extra_disks: pool
            .extra_disks
            .iter()
            .filter_map(|d| crate::provider::cloud::parse_size(d).ok())
            .collect(),
    }
}

/// The machine specs of every host, in topology order.
pub fn machine_specs(c: &LoadedCluster) -> Vec<MachineSpec> {
    c.topology
        .hosts
        .iter()
        .map(|h| machine_spec(c, h))
        .collect()
}

/// The OpenSSH public key line machines are given.
pub fn public_key(auth: &SshAuth, provider: &str) -> Result<String, crate::error::Error> {
    match auth {
        SshAuth::Key(key) => key
            .public_key()
            .to_openssh()
            .map_err(|e| crate::error::Error::Usage(format!("cannot encode the SSH public key: {e}"))),
        SshAuth::Agent => Err(crate::error::Error::Usage(format!(
            "the {provider} provider installs the login key into its machines: set spec.ssh.keyFile, \
or leave both keyFile and agent unset for a cluster key kept in the state"
        ))),
    }
}

/// What the cloud providers are told about the cluster.
pub fn cloud_context(
    c: &LoadedCluster,
    ssh_public_key: String,
) -> Result<CloudContext, crate::error::Error> {
    let subnet = c.topology.node_subnet.ok_or_else(|| {
        crate::error::Error::Usage("internal: the provider's subnet is missing".into())
    })?;
    let mut api_ports = vec![c.cluster.spec.networking.api_server_port];
    let (vip, vip_holder) = match &c.topology.endpoint {
        Endpoint::Vip {
            vip,
            port,
            lb_hosts,
            ..
        } => {
            api_ports.push(*port);
            (Some(*vip), lb_hosts.first().cloned())
        }
        Endpoint::External { .. } => (None, None),
    };
    Ok(CloudContext {
        cluster: c.name().to_string(),
        subnet,
        ssh_public_key,
        ssh_port: c.cluster.spec.ssh.port,
        api_ports,
        vip,
        vip_holder,
    })
}

/// Open the cluster's cloud provider without contacting it (None: docker or static).
/// Credentials are read here but only required when the API is called.
pub fn open_cloud(
    c: &LoadedCluster,
    ssh_public_key: String,
) -> Result<Option<Box<dyn ProviderTrait>>, crate::error::Error> {
    let p: Box<dyn ProviderTrait> = match &c.cluster.spec.provider {
        Provider::Docker(_) | Provider::Static(_) => return Ok(None),
        Provider::Aws(a) => Box::new(provider::aws::AwsProvider::new(
            a,
            cloud_context(c, ssh_public_key)?,
        )?),
        Provider::Hetzner(h) => Box::new(provider::hetzner::HetznerProvider::new(
            h,
            cloud_context(c, ssh_public_key)?,
        )?),
        Provider::Sakura(s) => Box::new(provider::sakura::SakuraProvider::new(
            s,
            cloud_context(c, ssh_public_key)?,
        )?),
    };
    Ok(Some(p))
}

/// What a cloud provider makes, computed offline (no credentials, no API call).
pub fn planned_cloud_resources(c: &LoadedCluster) -> Vec<crate::provider::Resource> {
    // The key is not needed to list resources; a placeholder keeps this offline.
    match open_cloud(c, String::new()) {
        Ok(Some(p)) => p.planned(&machine_specs(c)),
        _ => Vec::new(),
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
