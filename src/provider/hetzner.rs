//! Hetzner Cloud (work in progress).

use serde::{Deserialize, Serialize};

/// `spec.provider.hetzner` in the cluster file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HetznerSpec {
    pub subnet: Option<String>,
}

impl HetznerSpec {
    pub const DEFAULT_SUBNET: &'static str = "10.42.0.0/24";
}

/// Placeholder until the API client lands.
pub struct HetznerProvider;

impl HetznerProvider {
    pub fn new(
        _spec: &HetznerSpec,
        _ctx: super::cloud::CloudContext,
    ) -> Result<HetznerProvider, super::ProviderError> {
        Err(super::ProviderError::Config {
            provider: "hetzner",
            message: "not implemented yet".into(),
        })
    }
}

#[async_trait::async_trait]
impl super::Provider for HetznerProvider {
    fn kind(&self) -> &'static str {
        "hetzner"
    }
    async fn ensure(
        &self,
        _specs: &[super::MachineSpec],
    ) -> Result<Vec<super::Machine>, super::ProviderError> {
        Ok(vec![])
    }
    async fn list(&self) -> Result<Vec<super::Machine>, super::ProviderError> {
        Ok(vec![])
    }
    async fn delete(&self, _name: &str) -> Result<(), super::ProviderError> {
        Ok(())
    }
    async fn stop(&self, _name: &str) -> Result<(), super::ProviderError> {
        Ok(())
    }
    async fn start(&self, _name: &str) -> Result<(), super::ProviderError> {
        Ok(())
    }
}
