//! Cluster addons (MetalLB, Contour or ingress-nginx, Rook-Ceph) installed through the
//! Kubernetes API by server-side apply.
//!
//! - `catalogue`: pinned releases, their upstream files and sha256 digests;
//! - `manifest`: fetch (verified, cached, upstream or `artifacts.mirror`), parse, label,
//!   customise the upstream objects, and render the objects kubeforge owns (address
//!   pools, advertisements, BGP peers, the CephCluster);
//! - `engine`: discovery check, ordered server-side apply with conflict reporting,
//!   waits (CRDs Established, admission webhooks answering), diffs for `plan`,
//!   pruning/removal of what kubeforge applied, readiness;
//! - `tunnel`: the API server reached through the SSH connection to a control-plane node.

pub mod catalogue;
pub mod engine;
pub mod manifest;
pub mod tunnel;
pub mod yaml;

pub use catalogue::AddonId;
pub use engine::{AddonOptions, Engine};
pub use manifest::{Bundle, Object};

use crate::error::ExitKind;
use crate::spec::LoadedCluster;
use crate::transport::SshSession;
use std::sync::Arc;

/// An engine talking to the cluster's API server through `session`'s host (a
/// control-plane node): the tunnel must live as long as the engine is used.
pub async fn connect_through(
    c: &LoadedCluster,
    host: &crate::spec::Host,
    session: Arc<SshSession>,
    kubeconfig: &str,
    opts: AddonOptions,
) -> Result<(Engine, tunnel::Tunnel), AddonsError> {
    let port = c.cluster.spec.networking.api_server_port;
    let t = tunnel::open(session, host.internal_address.to_string(), port)
        .await
        .map_err(|e| AddonsError::Tunnel {
            host: host.name.clone(),
            source: Box::new(e),
        })?;
    let engine = Engine::connect(kubeconfig, Some(format!("https://{}", t.local)), opts).await?;
    Ok((engine, t))
}

/// The cluster's API as a run reaches it: one SSH tunnel to a control-plane node's
/// apiserver, opened on first use and shared by every engine of the run.
#[derive(Default)]
pub struct ApiAccess {
    tunnel: tokio::sync::OnceCell<tunnel::Tunnel>,
}

impl ApiAccess {
    /// An engine talking to the API through the run's tunnel (opened now if needed).
    pub async fn engine(
        &self,
        c: &LoadedCluster,
        host: &crate::spec::Host,
        session: Arc<SshSession>,
        kubeconfig: &str,
        opts: AddonOptions,
    ) -> Result<Engine, AddonsError> {
        let port = c.cluster.spec.networking.api_server_port;
        let t = self
            .tunnel
            .get_or_try_init(|| async {
                tunnel::open(session, host.internal_address.to_string(), port)
                    .await
                    .map_err(|e| AddonsError::Tunnel {
                        host: host.name.clone(),
                        source: Box::new(e),
                    })
            })
            .await?;
        Engine::connect(kubeconfig, Some(format!("https://{}", t.local)), opts).await
    }
}

/// Label put on every object kubeforge applies for an addon; removal and pruning only
/// ever touch objects that carry it.
pub const LABEL_ADDON: &str = "kubeforge.dev/addon";
/// Server-side apply field manager.
pub const FIELD_MANAGER: &str = "kubeforge";

#[derive(Debug, thiserror::Error)]
pub enum AddonsError {
    #[error("{addon} manifests")]
    Fetch {
        addon: AddonId,
        #[source]
        source: crate::artifacts::ArtifactsError,
    },
    #[error(
        "{addon} {version} is not a version kubeforge has pinned checksums for (known: {known}); pick one of those"
    )]
    UnknownVersion {
        addon: AddonId,
        version: String,
        known: String,
    },
    /// The compatibility matrix refuses the release for the cluster's Kubernetes.
    #[error("{0}")]
    Incompatible(String),
    #[error("{file}: document {doc}: {message}")]
    Parse {
        file: String,
        doc: usize,
        message: String,
    },
    #[error("{addon}: {message}")]
    Manifest { addon: AddonId, message: String },
    #[error("the admin kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("cannot reach the Kubernetes API ({action})")]
    Connect {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "the API server does not serve what these addons need; nothing of them was applied:\n{}",
        bullets(.0)
    )]
    Unserved(Vec<String>),
    #[error(
        "server-side apply conflicts (fields owned by another manager); nothing was forced, re-run with --force-conflicts to take them over:\n{}",
        bullets(.0)
    )]
    Conflicts(Vec<String>),
    #[error("{action} {object}")]
    Api {
        action: String,
        object: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("timed out after {seconds}s waiting for {what}: {detail}")]
    Timeout {
        what: String,
        seconds: u64,
        detail: String,
    },
    #[error("cannot open the tunnel to the API server through {host}")]
    Tunnel {
        host: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the state store")]
    State(#[from] crate::state::StateError),
}

fn bullets(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl AddonsError {
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            AddonsError::Fetch { source, .. } => source.exit_kind(),
            AddonsError::UnknownVersion { .. }
            | AddonsError::Incompatible(_)
            | AddonsError::Unserved(_)
            | AddonsError::Kubeconfig(_) => ExitKind::Input,
            AddonsError::Parse { .. } | AddonsError::Manifest { .. } => ExitKind::Input,
            AddonsError::Tunnel { .. } => ExitKind::Ssh,
            AddonsError::Connect { .. }
            | AddonsError::Conflicts(_)
            | AddonsError::Api { .. }
            | AddonsError::Timeout { .. } => ExitKind::Remote,
            AddonsError::State(e) => e.exit_kind(),
        }
    }
}
