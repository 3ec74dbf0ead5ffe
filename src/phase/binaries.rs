//! Installing kubeadm, kubelet and kubectl on a host.

use super::exec::HostError;
use super::ApplyContext;
use crate::spec::Host;
use crate::transport::Transport;

/// Install the Kubernetes binaries of the cluster's version on `host`.
pub async fn install(
    ctx: &ApplyContext<'_>,
    _t: &dyn Transport,
    host: &Host,
) -> Result<(), HostError> {
    Err(HostError::Other {
        host: host.name.clone(),
        message: format!(
            "kubeadm v{} is not installed and this build of kubeforge cannot deliver the Kubernetes binaries yet",
            ctx.cluster.version()
        ),
    })
}
