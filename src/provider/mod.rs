//! Machine providers: create, list and delete the machines a cluster runs on.
//!
//! The provider is independent of the cluster-spec types: callers compute names, roles
//! and addresses and hand them over as [`MachineSpec`]s. `docker` is the local provider
//! (systemd "machines" as containers on an internal network, see `docs/transport.md`);
//! `aws`, `hetzner` and `sakura` create virtual machines through their cloud's API (see
//! `docs/providers.md`). A cloud is one file: its config type (the `spec.provider.<name>`
//! block of the cluster file) and a type implementing [`Provider`].

pub mod aws;
pub mod cloud;
pub mod docker;
pub mod factory;
pub mod hetzner;
pub mod image;
pub mod loopdisk;
pub mod sakura;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

pub use docker::{DockerConfig, DockerProvider};

/// Label keys put on every container, network and volume the docker provider creates.
pub const LABEL_CLUSTER: &str = "dev.kubeforge.cluster";
pub const LABEL_ROLE: &str = "dev.kubeforge.role";
/// The loop devices a docker machine got as extra disks (`/dev/loop7,/dev/loop8`).
pub const LABEL_DISKS: &str = "dev.kubeforge.disks";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineRole {
    ControlPlane,
    Worker,
    LoadBalancer,
}

impl MachineRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineRole::ControlPlane => "control-plane",
            MachineRole::Worker => "worker",
            MachineRole::LoadBalancer => "load-balancer",
        }
    }

    pub fn parse(s: &str) -> Option<MachineRole> {
        match s {
            "control-plane" => Some(MachineRole::ControlPlane),
            "worker" => Some(MachineRole::Worker),
            "load-balancer" => Some(MachineRole::LoadBalancer),
            _ => None,
        }
    }
}

impl fmt::Display for MachineRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller wants: a machine with this name, role and fixed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    /// Deterministic name, e.g. `<cluster>-cp-1`; also the machine's hostname.
    pub name: String,
    pub role: MachineRole,
    /// Fixed address on the cluster network.
    pub ip: IpAddr,
    /// Extra raw block devices (sizes in bytes), e.g. for Rook-Ceph. Clouds attach them
    /// as volumes deleted with the machine; the docker provider ignores them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_disks: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineState {
    Created,
    Running,
    Paused,
    Stopped,
    /// Anything else the provider reported (restarting, dead, ...).
    Other(String),
}

/// A machine as the provider sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub name: String,
    pub role: MachineRole,
    /// Address on the cluster network (`None` when it is disconnected).
    pub ip: Option<IpAddr>,
    pub state: MachineState,
    /// Provider-specific id (docker: the container id; clouds: the instance/server id).
    pub id: String,
    /// Public address, where the cloud gave the machine one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
}

/// One thing a provider creates for a cluster: a machine, a network, a firewall, a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resource {
    /// `instance`, `vpc`, `subnet`, `security-group`, `key-pair`, `server`, ...
    pub kind: String,
    /// The name kubeforge gives it (tag `Name`, server name, ...).
    pub name: String,
    /// The cloud's id, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Resource {
    pub fn new(kind: &str, name: impl Into<String>, id: Option<String>) -> Resource {
        Resource {
            kind: kind.to_string(),
            name: name.into(),
            id,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.kind, self.name)?;
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeAction {
    Create,
    Exists,
    Delete,
}

/// A resource and what `ensure` (or `destroy`) would do with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceChange {
    pub action: ChangeAction,
    #[serde(flatten)]
    pub resource: Resource,
}

/// Compare what `ensure` would make (`wanted`, ids unknown) with what exists: every
/// wanted resource is `create` or `exists`; existing resources of the cluster that are
/// not wanted are left alone by `ensure` and not listed (`destroy` lists them).
pub fn diff_resources(wanted: &[Resource], existing: &[Resource]) -> Vec<ResourceChange> {
    wanted
        .iter()
        .map(|w| {
            match existing
                .iter()
                .find(|e| e.kind == w.kind && e.name == w.name)
            {
                Some(e) => ResourceChange {
                    action: ChangeAction::Exists,
                    resource: e.clone(),
                },
                None => ResourceChange {
                    action: ChangeAction::Create,
                    resource: w.clone(),
                },
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot reach the Docker engine (is dockerd running? scripts/testbed/30-docker.sh starts it)")]
    DockerUnavailable(#[source] bollard::errors::Error),
    #[error("the node image {image} is missing (build it with `kubeforge image build` or scripts/node-image/build.sh)")]
    ImageMissing { image: String },
    #[error("docker request failed: {action}")]
    Docker {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "machine {name} exists but differs from the spec: {detail} (delete it to recreate it)"
    )]
    Drift { name: String, detail: String },
    #[error("machine {name} is not part of cluster {cluster}")]
    Foreign { name: String, cluster: String },
    #[error("machine {name} does not exist")]
    NotFound { name: String },
    #[error("address {ip} of machine {name} is outside the cluster subnet {subnet}")]
    AddressOutsideSubnet {
        name: String,
        ip: IpAddr,
        subnet: ipnet::IpNet,
    },
    #[error("network {network} exists with subnet {found}, expected {expected}")]
    NetworkMismatch {
        network: String,
        found: String,
        expected: String,
    },
    #[error("cannot build the node image")]
    ImageBuild(#[source] std::io::Error),
    #[error("the node image build failed with {status}")]
    ImageBuildFailed { status: std::process::ExitStatus },
    #[error("the extra disks of machine {name}")]
    Disks {
        name: String,
        #[source]
        source: loopdisk::LoopDiskError,
    },
    /// The cloud answered with an error of its own.
    #[error("{provider} {operation} {resource}: {code}: {message} (HTTP {status})")]
    Api {
        provider: &'static str,
        operation: String,
        resource: String,
        status: u16,
        code: String,
        message: String,
    },
    /// The cloud could not be reached (after retries).
    #[error("{provider} {operation} {resource}: cannot reach the API at {endpoint}")]
    Unreachable {
        provider: &'static str,
        operation: String,
        resource: String,
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// The cloud answered something kubeforge cannot read.
    #[error("{provider} {operation} {resource}: unexpected answer: {detail}")]
    BadResponse {
        provider: &'static str,
        operation: String,
        resource: String,
        detail: String,
    },
    /// A long-running operation (Hetzner action, Sakura job) ended in error.
    #[error("{provider} {operation} {resource} failed: {code}: {message}")]
    OperationFailed {
        provider: &'static str,
        operation: String,
        resource: String,
        code: String,
        message: String,
    },
    #[error("{provider}: the API endpoint {endpoint} is plain http (the credentials would travel in clear): set spec.provider.{provider}.allowHttp: true to allow it (local emulators only)")]
    PlainHttp {
        provider: &'static str,
        endpoint: String,
    },
    #[error("{provider} credentials: {message}")]
    Credentials {
        provider: &'static str,
        message: String,
    },
    #[error("{provider}: {what} did not finish within {seconds} s")]
    Timeout {
        provider: &'static str,
        what: String,
        seconds: u64,
    },
    #[error("{provider} configuration: {message}")]
    Config {
        provider: &'static str,
        message: String,
    },
}

impl ProviderError {
    /// The cloud's own error code, for callers that treat some codes as success.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            ProviderError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Every spec's fixed address lies in `subnet`; checked before anything is created.
pub fn check_addresses(specs: &[MachineSpec], subnet: ipnet::IpNet) -> Result<(), ProviderError> {
    match specs.iter().find(|s| !subnet.contains(&s.ip)) {
        Some(s) => Err(ProviderError::AddressOutsideSubnet {
            name: s.name.clone(),
            ip: s.ip,
            subnet,
        }),
        None => Ok(()),
    }
}

/// Create, inspect and remove machines. Every call is idempotent.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Make every machine in `specs` exist and run. Existing machines that match are
    /// left alone (a re-run changes nothing); stopped ones are started; a machine whose
    /// address or role differs from its spec is an error, never silently recreated.
    /// Returns the machines in the order of `specs`.
    async fn ensure(&self, specs: &[MachineSpec]) -> Result<Vec<Machine>, ProviderError>;
    /// All machines of this cluster, sorted by name.
    async fn list(&self) -> Result<Vec<Machine>, ProviderError>;
    /// Remove a machine and its data; a machine that does not exist is success.
    async fn delete(&self, name: &str) -> Result<(), ProviderError>;
    /// Stop a machine (clean shutdown); its address comes back on start.
    async fn stop(&self, name: &str) -> Result<(), ProviderError>;
    async fn start(&self, name: &str) -> Result<(), ProviderError>;

    /// The provider's name as written in the cluster file (`docker`, `aws`, ...).
    fn kind(&self) -> &'static str;

    /// What `ensure(specs)` makes besides the machines themselves and the machines,
    /// computed offline (no ids): networks, firewalls, keys, then one `instance` (or
    /// `server`) per spec. The default is the machines only.
    fn planned(&self, specs: &[MachineSpec]) -> Vec<Resource> {
        specs
            .iter()
            .map(|s| Resource::new("machine", s.name.clone(), None))
            .collect()
    }

    /// Every resource of this cluster that exists now (found by the cluster tag/label),
    /// in the order `destroy` deletes them. Read-only. The default is the machines.
    async fn resources(&self) -> Result<Vec<Resource>, ProviderError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .map(|m| Resource::new("machine", m.name, Some(m.id)))
            .collect())
    }

    /// Delete everything of this cluster that `resources` lists (machines first), only
    /// what carries the cluster's tag; what is already gone is success. Returns what it
    /// deleted. The default deletes the machines.
    async fn destroy_all(&self) -> Result<Vec<Resource>, ProviderError> {
        let found = self.resources().await?;
        for r in &found {
            self.delete(&r.name).await?;
        }
        Ok(found)
    }

    /// The targets of the cloud load balancer in front of the apiservers and how its
    /// health check sees them (`loadBalancer.type: cloud`); None without one.
    async fn endpoint_targets(&self) -> Result<Option<Vec<TargetHealth>>, ProviderError> {
        Ok(None)
    }
}

/// One target of a cloud load balancer as its health check sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetHealth {
    /// `address:port`.
    pub target: String,
    /// The cloud's word: `healthy`, `unhealthy`, `initial`, ...
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl TargetHealth {
    pub fn healthy(&self) -> bool {
        self.state == "healthy"
    }
}
