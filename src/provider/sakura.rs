//! Sakura Cloud (work in progress).

use serde::{Deserialize, Serialize};

/// `spec.provider.sakura` in the cluster file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SakuraSpec {
    pub subnet: Option<String>,
}

impl SakuraSpec {
    pub const DEFAULT_SUBNET: &'static str = "10.42.0.0/24";
}

/// Placeholder until the API client lands.
pub struct SakuraProvider;

impl SakuraProvider {
    pub fn new(
        _spec: &SakuraSpec,
        _ctx: super::cloud::CloudContext,
    ) -> Result<SakuraProvider, super::ProviderError> {
        Err(super::ProviderError::Config {
            provider: "sakura",
            message: "not implemented yet".into(),
        })
    }
}

#[async_trait::async_trait]
impl super::Provider for SakuraProvider {
    fn kind(&self) -> &'static str {
        "sakura"
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
