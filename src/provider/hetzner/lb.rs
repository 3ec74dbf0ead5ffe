//! The API endpoint on Hetzner Cloud as a Hetzner Load Balancer (`loadBalancer.type:
//! cloud`): attached to the cluster's network at the fixed private address, public
//! interface disabled, one TCP service (`port` → the apiservers' port) health-checked
//! with `GET /readyz` over TLS (or a TCP connect), and one label-selector target (the
//! cluster's control-plane servers, by their private addresses), so control planes that
//! join or leave are followed by Hetzner itself. Found by its label and name; each part
//! (attachment, public interface, service, target) is checked and made on its own, so a
//! run that crashed half-way is finished by the next.

use super::{HetznerProvider, LABEL_CLUSTER, LABEL_ROLE, P};
use crate::provider::cloud::ApiLb;
use crate::provider::{MachineRole, ProviderError, Resource, TargetHealth};
use serde::Deserialize;
use serde_json::{json, Value};

/// Hetzner allows 63 characters in names.
const NAME_MAX: usize = 63;

#[derive(Debug, Clone, Deserialize)]
pub(super) struct LoadBalancer {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    public_net: Option<LbPublicNet>,
    #[serde(default)]
    private_net: Vec<LbPrivateNet>,
    #[serde(default)]
    services: Vec<LbService>,
    #[serde(default)]
    targets: Vec<LbTarget>,
}

#[derive(Debug, Clone, Deserialize)]
struct LbPublicNet {
    #[serde(default)]
    enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct LbPrivateNet {
    network: u64,
    ip: String,
}

#[derive(Debug, Clone, Deserialize)]
struct LbService {
    listen_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
struct LbTarget {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    label_selector: Option<Selector>,
    #[serde(default)]
    server: Option<ServerRef>,
    #[serde(default)]
    health_status: Vec<HealthStatus>,
    /// The servers a label selector resolves to.
    #[serde(default)]
    targets: Vec<LbTarget>,
}

#[derive(Debug, Clone, Deserialize)]
struct Selector {
    selector: String,
}

#[derive(Debug, Clone, Deserialize)]
struct ServerRef {
    id: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct HealthStatus {
    listen_port: u16,
    status: String,
}

impl HetznerProvider {
    fn lb(&self) -> Option<&ApiLb> {
        self.ctx.api_lb.as_ref()
    }

    fn lb_name(&self) -> String {
        ApiLb::name(self.cluster(), NAME_MAX)
    }

    /// The control planes of the cluster, as a Hetzner label selector.
    fn control_plane_selector(&self) -> String {
        format!(
            "{LABEL_CLUSTER}={},{LABEL_ROLE}={}",
            self.cluster(),
            MachineRole::ControlPlane.as_str()
        )
    }

    /// Every load balancer with the cluster's label.
    pub(super) async fn load_balancers(&self) -> Result<Vec<LoadBalancer>, ProviderError> {
        self.list_all("/load_balancers", "load_balancers").await
    }

    async fn find_lb(&self) -> Result<Option<LoadBalancer>, ProviderError> {
        let name = self.lb_name();
        Ok(self
            .load_balancers()
            .await?
            .into_iter()
            .find(|l| l.name == name))
    }

    async fn lb_action(&self, id: u64, action: &str, body: Value) -> Result<(), ProviderError> {
        let name = self.lb_name();
        let v = self
            .api
            .post(
                &format!("/load_balancers/{id}/actions/{action}"),
                &name,
                &body,
            )
            .await?;
        self.wait_actions(&v, &name).await
    }

    /// The load balancer, made or completed: on the network at its address, no public
    /// interface, the service and the control-plane target.
    pub(super) async fn ensure_api_lb(&self, network: u64) -> Result<(), ProviderError> {
        let Some(want) = self.lb().cloned() else {
            return Ok(());
        };
        let name = self.lb_name();
        let lb = match self.find_lb().await? {
            Some(lb) => lb,
            None => {
                let body = json!({
                    "name": name,
                    "load_balancer_type": self.spec.load_balancer_type.clone().unwrap_or_else(|| "lb11".into()),
                    "location": self.spec.location,
                    "labels": self.labels(None),
                    "algorithm": {"type": "round_robin"},
                });
                let v = match self.api.post("/load_balancers", &name, &body).await {
                    Ok(v) => v,
                    // Made by a run that crashed before it saw the answer, or another
                    // project object of that name: found by name (and label) below.
                    Err(e) if e.api_code() == Some("uniqueness_error") => Value::Null,
                    Err(e) => return Err(e),
                };
                if !v.is_null() {
                    self.wait_actions(&v, &name).await?;
                }
                match self.find_lb().await? {
                    Some(lb) => lb,
                    None => {
                        return Err(ProviderError::Config {
                            provider: P,
                            message: format!(
                                "a load balancer named {name} exists without the label {LABEL_CLUSTER}={}: it is not this cluster's",
                                self.cluster()
                            ),
                        })
                    }
                }
            }
        };
        match lb.private_net.iter().find(|n| n.network == network) {
            Some(n) if n.ip != want.address.to_string() => {
                return Err(ProviderError::Drift {
                    name,
                    detail: format!(
                        "load balancer address is {}, spec says {}",
                        n.ip, want.address
                    ),
                })
            }
            Some(_) => {}
            None => {
                self.lb_action(
                    lb.id,
                    "attach_to_network",
                    json!({"network": network, "ip": want.address.to_string()}),
                )
                .await?
            }
        }
        if lb.public_net.as_ref().is_none_or(|p| p.enabled) {
            self.lb_action(lb.id, "disable_public_interface", json!({}))
                .await?;
        }
        if !lb.services.iter().any(|s| s.listen_port == want.port) {
            let health_check = if want.https_check {
                json!({"protocol": "http", "port": want.target_port, "interval": 10, "timeout": 5, "retries": 3,
                       "http": {"path": "/readyz", "tls": true, "status_codes": ["2??"]}})
            } else {
                json!({"protocol": "tcp", "port": want.target_port, "interval": 10, "timeout": 5, "retries": 3})
            };
            self.lb_action(
                lb.id,
                "add_service",
                json!({"protocol": "tcp", "listen_port": want.port, "destination_port": want.target_port,
                       "proxyprotocol": false, "health_check": health_check}),
            )
            .await?;
        }
        let selector = self.control_plane_selector();
        if !lb.targets.iter().any(|t| {
            t.kind == "label_selector"
                && t.label_selector
                    .as_ref()
                    .is_some_and(|s| s.selector == selector)
        }) {
            self.lb_action(
                lb.id,
                "add_target",
                json!({"type": "label_selector", "label_selector": {"selector": selector}, "use_private_ip": true}),
            )
            .await?;
        }
        Ok(())
    }

    /// The control planes behind the load balancer and their health on its port.
    pub(super) async fn api_lb_targets(&self) -> Result<Option<Vec<TargetHealth>>, ProviderError> {
        let Some(want) = self.lb().cloned() else {
            return Ok(None);
        };
        let Some(lb) = self.find_lb().await? else {
            return Ok(Some(Vec::new()));
        };
        let servers = self.servers().await?;
        let mut out = Vec::new();
        for t in lb.targets.iter().flat_map(|t| {
            if t.kind == "label_selector" {
                t.targets.clone()
            } else {
                vec![t.clone()]
            }
        }) {
            let Some(sid) = t.server.as_ref().map(|s| s.id) else {
                continue;
            };
            let address = servers
                .iter()
                .find(|s| s.id == sid)
                .and_then(|s| s.private_net.first())
                .map(|n| n.ip.clone())
                .unwrap_or_else(|| format!("server {sid}"));
            let state = t
                .health_status
                .iter()
                .find(|h| h.listen_port == want.port)
                .map(|h| h.status.clone())
                .unwrap_or_else(|| "unknown".into());
            out.push(TargetHealth {
                target: format!("{address}:{}", want.target_port),
                state,
                reason: None,
            });
        }
        out.sort_by(|a, b| a.target.cmp(&b.target));
        Ok(Some(out))
    }

    pub(super) fn planned_api_lb(&self) -> Vec<Resource> {
        match self.lb() {
            Some(_) => vec![Resource::new("load-balancer", self.lb_name(), None)],
            None => Vec::new(),
        }
    }
}
