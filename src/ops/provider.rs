//! Opening the machine provider a cluster file names (the docker engine is contacted
//! here; clouds only when called). The clouds are built in `phase::provision::open_cloud`.

use crate::error::Error;
use crate::phase::provision::{open_cloud, public_key};
use crate::provider::Provider as ProviderTrait;
use crate::spec::{LoadedCluster, Provider};
use crate::transport::SshAuth;

/// Open the cluster's provider (the docker engine is contacted; clouds are not until
/// called). None for the static provider.
pub async fn open(
    c: &LoadedCluster,
    auth: &SshAuth,
) -> Result<Option<Box<dyn ProviderTrait>>, Error> {
    match &c.cluster.spec.provider {
        Provider::Static(_) => Ok(None),
        Provider::Docker(d) => {
            let p = crate::ops::apply::docker_provider(c, d, auth).await?;
            Ok(Some(Box::new(p)))
        }
        other => open_cloud(c, public_key(auth, other.name())?),
    }
}
