//! Machine providers: create, list and delete the machines a cluster runs on.
//!
//! The provider is independent of the cluster-spec types: callers compute names, roles
//! and addresses and hand them over as [`MachineSpec`]s. `docker` is the local provider
//! (systemd "machines" as containers on an internal network, see `docs/transport.md`).

pub mod cli;
pub mod docker;
pub mod loopdisk;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

pub use docker::{DockerConfig, DockerProvider};

/// Label keys put on every container, network and volume the docker provider creates.
pub const LABEL_CLUSTER: &str = "dev.kubeforge.cluster";
pub const LABEL_ROLE: &str = "dev.kubeforge.role";

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
    /// Provider-specific id (docker: the container id).
    pub id: String,
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
}
