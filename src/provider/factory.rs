//! Building the machine provider a cluster file names: the machine specs of its hosts,
//! the docker engine, or a cloud (credentials read here, the API contacted only when
//! called). The one place commands and phases open a provider.

use crate::provider::cloud::CloudContext;
use crate::provider::{
    self, DockerConfig, DockerProvider, MachineRole, MachineSpec, Provider as ProviderTrait,
};
use crate::spec::{Endpoint, Host, LoadedCluster, Provider, Provider as SpecProvider, Role};
use crate::transport::SshAuth;

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
        SshAuth::Agent(_) => Err(crate::error::Error::Usage(format!(
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
    let subnet = c
        .topology
        .node_subnet
        .ok_or_else(|| crate::error::Error::Internal("the provider's subnet is missing".into()))?;
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
        Endpoint::External { .. } | Endpoint::Cloud { .. } => (None, None),
    };
    let api_lb = match &c.topology.endpoint {
        Endpoint::Cloud { address, port } => {
            api_ports.push(*port);
            Some(crate::provider::cloud::ApiLb {
                address: *address,
                port: *port,
                target_port: c.cluster.spec.networking.api_server_port,
                https_check: c.cluster.spec.load_balancer.health_check
                    == crate::spec::HealthCheck::HttpsReadyz,
            })
        }
        _ => None,
    };
    Ok(CloudContext {
        cluster: c.name().to_string(),
        subnet,
        ssh_public_key,
        ssh_port: c.cluster.spec.ssh.port,
        api_ports,
        vip,
        vip_holder,
        api_lb,
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

pub async fn docker_provider(
    c: &LoadedCluster,
    d: &crate::spec::DockerProvider,
    auth: &SshAuth,
) -> Result<DockerProvider, crate::error::Error> {
    // The machines get the public half of the key kubeforge logs in with (the cluster
    // key from the state, or the user's key file), already loaded by `ssh_auth`.
    let public = match auth {
        SshAuth::Key(key) => key.public_key().to_openssh().map_err(|e| {
            crate::error::Error::Usage(format!("cannot encode the SSH public key: {e}"))
        })?,
        SshAuth::Agent(_) => return Err(crate::error::Error::Usage(
            "the docker provider installs the login key into its machines: set spec.ssh.keyFile, \
or leave both keyFile and agent unset for a cluster key kept in the state"
                .into(),
        )),
    };
    let cfg = DockerConfig {
        cluster: c.name().to_string(),
        network: d.network.clone().unwrap_or_else(|| c.name().to_string()),
        subnet: c
            .topology
            .node_subnet
            .ok_or_else(|| crate::error::Error::Internal("docker subnet missing".into()))?,
        image: d
            .image
            .clone()
            .unwrap_or_else(crate::provider::image::node_image_tag),
        ssh_public_key: public,
    };
    Ok(DockerProvider::connect(cfg).await?)
}

/// Open the cluster's provider (the docker engine is contacted; clouds are not until
/// called). None for the static provider.
pub async fn open(
    c: &LoadedCluster,
    auth: &SshAuth,
) -> Result<Option<Box<dyn ProviderTrait>>, crate::error::Error> {
    match &c.cluster.spec.provider {
        SpecProvider::Static(_) => Ok(None),
        SpecProvider::Docker(d) => {
            let p = docker_provider(c, d, auth).await?;
            Ok(Some(Box::new(p)))
        }
        other => open_cloud(c, public_key(auth, other.name())?),
    }
}
