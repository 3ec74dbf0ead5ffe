//! Installing kubeadm, kubelet and kubectl (and, from a mirror, the control-plane
//! images) on a host, from artifacts fetched and sha256-verified once per run on the
//! operator's machine.

use super::exec::HostError;
use crate::artifacts::{self, Cache, Catalogue, LocalArtifact, Source};
use crate::spec::{Host, LoadedCluster};
use crate::transport::Transport;

/// The catalogue of the cluster's version, adjusted to its settings: the image
/// repository, and no CoreDNS image when the addon/coredns phase is skipped.
pub fn catalogue(c: &LoadedCluster) -> Result<Catalogue, artifacts::ArtifactsError> {
    let mut cat = Catalogue::for_version(&c.version())?;
    if let Some(repo) = &c.cluster.spec.artifacts.image_repository {
        cat = cat.with_image_repository(repo);
    }
    if c.cluster
        .spec
        .kubeadm
        .skip_phases
        .iter()
        .any(|p| p == "addon/coredns" || p == "addon")
    {
        cat = cat.without_images(&["coredns"])?;
    }
    Ok(cat)
}

/// Fetch (or find in the local cache) and verify everything the hosts need. A checksum
/// mismatch fails here, before anything is installed anywhere.
pub async fn fetch(c: &LoadedCluster) -> Result<Vec<LocalArtifact>, artifacts::ArtifactsError> {
    let source = Source::from_spec(c.cluster.spec.artifacts.mirror.as_deref(), &c.base_dir)?;
    artifacts::fetch_all(&source, &catalogue(c)?, &Cache::default_location()).await
}

/// The same, with crictl (kubeadm's `upgrade apply` checks and pulls images with it).
pub async fn fetch_with_crictl(
    c: &LoadedCluster,
) -> Result<Vec<LocalArtifact>, artifacts::ArtifactsError> {
    let source = Source::from_spec(c.cluster.spec.artifacts.mirror.as_deref(), &c.base_dir)?;
    artifacts::fetch_all(
        &source,
        &catalogue(c)?.with_crictl(),
        &Cache::default_location(),
    )
    .await
}

/// Push the verified artifacts to `host` (unchanged files are skipped by sha256) and
/// import the images into containerd.
pub async fn install(
    t: &dyn Transport,
    host: &Host,
    fetched: &[LocalArtifact],
) -> Result<(), HostError> {
    artifacts::install_on(t, fetched)
        .await
        .map(|report| {
            tracing::info!(
                host = %host.name,
                sent = report.sent.len(),
                imported = report.imported.len(),
                "artifacts installed"
            );
        })
        .map_err(|e| HostError::Other {
            host: host.name.clone(),
            message: e.to_string(),
        })
}
