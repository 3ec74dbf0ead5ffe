//! Hetzner Cloud: machines are servers attached to a private network kubeforge creates,
//! with their fixed address requested on attach (`attach_to_network` with `ip`), behind
//! a firewall applied by label, logging in with an uploaded SSH key.
//!
//! REST over reqwest (`https://api.hetzner.cloud/v1`, `Authorization: Bearer`), from the
//! public API documentation; verified only against its documented examples (see
//! `docs/providers.md`). Everything carries the label `kubeforge.dev/cluster=<cluster>`;
//! lists follow `meta.pagination.next_page`; every long operation returns an action
//! that is polled until `success` (an `error` status is the call's error).
//!
//! Hetzner has no idempotency key: server names are unique per project, so a create
//! that crashed before it was recorded is found by the label lookup (or by its name on
//! `uniqueness_error`) and finished (network attach, volumes) on the next run.

use super::cloud::{self, Auth, CloudContext, RestClient};
use super::{Machine, MachineRole, MachineSpec, MachineState, Provider, ProviderError, Resource};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

mod lb;

const P: &str = "hetzner";
pub const LABEL_CLUSTER: &str = "kubeforge.dev/cluster";
pub const LABEL_ROLE: &str = "kubeforge.dev/role";

/// `spec.provider.hetzner` in the cluster file.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HetznerSpec {
    /// Environment variable holding the API token (default HCLOUD_TOKEN).
    pub token_env: Option<String>,
    /// API endpoint (default $HCLOUD_ENDPOINT, then https://api.hetzner.cloud/v1).
    pub endpoint: Option<String>,
    #[serde(default = "HetznerSpec::default_location")]
    pub location: String,
    #[serde(default = "HetznerSpec::default_network_zone")]
    pub network_zone: String,
    #[serde(default = "HetznerSpec::default_server_type")]
    pub server_type: String,
    pub control_plane_server_type: Option<String>,
    pub load_balancer_server_type: Option<String>,
    /// Type of the Hetzner Load Balancer of `loadBalancer.type: cloud` (default lb11).
    pub load_balancer_type: Option<String>,
    #[serde(default = "HetznerSpec::default_image")]
    pub image: String,
    /// IP range of the private network (default 10.42.0.0/16).
    pub ip_range: Option<String>,
    /// The machines' subnet inside it (default 10.42.0.0/24).
    pub subnet: Option<String>,
    /// Sources allowed to reach SSH, the apiserver and the load-balancer port
    /// (default 0.0.0.0/0 and ::/0).
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// Allow a plain http:// `endpoint` (the credentials travel in clear: local
    /// emulators only).
    #[serde(default)]
    pub allow_http: bool,
}

impl HetznerSpec {
    pub const DEFAULT_SUBNET: &'static str = "10.42.0.0/24";
    pub const DEFAULT_IP_RANGE: &'static str = "10.42.0.0/16";
    fn default_location() -> String {
        "fsn1".into()
    }
    fn default_network_zone() -> String {
        "eu-central".into()
    }
    fn default_server_type() -> String {
        "cx22".into()
    }
    fn default_image() -> String {
        "debian-12".into()
    }
}

/// `{"error": {"code": "...", "message": "..."}}`.
fn error_of(body: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(body).ok()?;
    let e = v.get("error")?;
    Some((
        e.get("code")?.as_str()?.to_string(),
        e.get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    ))
}

fn retryable_code(code: &str) -> bool {
    matches!(
        code,
        "rate_limit_exceeded" | "conflict" | "locked" | "unavailable" | "timeout" | "maintenance"
    )
}

#[derive(Debug, Clone, Deserialize)]
struct Action {
    id: u64,
    #[serde(default)]
    command: String,
    status: String,
    #[serde(default)]
    error: Option<ActionError>,
}

#[derive(Debug, Clone, Deserialize)]
struct ActionError {
    code: String,
    message: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Server {
    id: u64,
    name: String,
    status: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    public_net: Option<PublicNet>,
    #[serde(default)]
    private_net: Vec<PrivateNet>,
}

#[derive(Debug, Clone, Deserialize)]
struct PublicNet {
    ipv4: Option<Ipv4>,
}

#[derive(Debug, Clone, Deserialize)]
struct Ipv4 {
    ip: String,
}

#[derive(Debug, Clone, Deserialize)]
struct PrivateNet {
    network: u64,
    ip: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Named {
    id: u64,
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Volume {
    id: u64,
    name: String,
    #[serde(default)]
    server: Option<u64>,
}

pub struct HetznerProvider {
    spec: HetznerSpec,
    ctx: CloudContext,
    api: RestClient,
}

fn decode<T: for<'de> Deserialize<'de>>(
    api: &RestClient,
    op: &str,
    resource: &str,
    v: &Value,
    key: &str,
) -> Result<T, ProviderError> {
    let field = v
        .get(key)
        .ok_or_else(|| api.bad(op, resource, format!("no `{key}` in the answer")))?;
    serde_json::from_value(field.clone()).map_err(|e| api.bad(op, resource, e.to_string()))
}

/// The API endpoint: the spec's, else $HCLOUD_ENDPOINT, else Hetzner's own.
pub fn endpoint_of(spec: &HetznerSpec) -> String {
    spec.endpoint
        .clone()
        .or_else(|| {
            std::env::var("HCLOUD_ENDPOINT")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| "https://api.hetzner.cloud/v1".into())
}

impl HetznerProvider {
    /// The token is read now but only required when the API is called.
    pub fn new(spec: &HetznerSpec, ctx: CloudContext) -> Result<HetznerProvider, ProviderError> {
        let var = spec
            .token_env
            .clone()
            .unwrap_or_else(|| "HCLOUD_TOKEN".into());
        let token = cloud::secret_from_env(P, &var).map(Auth::Bearer);
        let endpoint = endpoint_of(spec);
        cloud::check_endpoint(P, &endpoint, spec.allow_http)?;
        Ok(HetznerProvider {
            spec: spec.clone(),
            api: RestClient::new(P, &endpoint, token, error_of, retryable_code)?,
            ctx,
        })
    }

    /// Change the retry policy and the action poll interval (tests shorten them).
    pub fn set_retry(&mut self, retry: cloud::Retry) {
        self.api.retry = retry;
    }

    fn cluster(&self) -> &str {
        &self.ctx.cluster
    }
    fn network_name(&self) -> String {
        self.cluster().to_string()
    }
    fn firewall_name(&self) -> String {
        format!("{}-nodes", self.cluster())
    }
    fn key_name(&self) -> String {
        format!("kubeforge-{}", self.cluster())
    }
    fn selector(&self) -> String {
        format!("{LABEL_CLUSTER}={}", self.cluster())
    }
    fn labels(&self, role: Option<MachineRole>) -> Value {
        let mut m = serde_json::Map::new();
        m.insert(LABEL_CLUSTER.into(), json!(self.cluster()));
        if let Some(r) = role {
            m.insert(LABEL_ROLE.into(), json!(r.as_str()));
        }
        Value::Object(m)
    }

    /// Every item of a paginated list with the cluster's label (`key` holds them).
    async fn list_all<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        key: &str,
    ) -> Result<Vec<T>, ProviderError> {
        let mut out = Vec::new();
        let mut page = 1u64;
        loop {
            let url = format!(
                "{path}?label_selector={}&page={page}&per_page=50",
                cloud::query_value(&self.selector())
            );
            let v = self.api.get(&url, self.cluster()).await?;
            let items: Vec<T> = decode(&self.api, &format!("GET {path}"), self.cluster(), &v, key)?;
            out.extend(items);
            match v
                .pointer("/meta/pagination/next_page")
                .and_then(Value::as_u64)
            {
                Some(next) if next > page => page = next,
                _ => break,
            }
        }
        Ok(out)
    }

    /// Poll an action until it succeeded; its `error` status is an error.
    async fn wait_action(&self, action: &Action, resource: &str) -> Result<(), ProviderError> {
        let mut a = action.clone();
        let start = std::time::Instant::now();
        let limit = Duration::from_secs(600);
        loop {
            match a.status.as_str() {
                "success" => return Ok(()),
                "error" => {
                    let (code, message) = a
                        .error
                        .map(|e| (e.code, e.message))
                        .unwrap_or_else(|| ("action_failed".into(), String::new()));
                    return Err(ProviderError::OperationFailed {
                        provider: P,
                        operation: format!("action {} ({})", a.id, a.command),
                        resource: resource.to_string(),
                        code,
                        message,
                    });
                }
                _ => {}
            }
            if start.elapsed() > limit {
                return Err(ProviderError::Timeout {
                    provider: P,
                    what: format!("action {} ({}) on {resource}", a.id, a.command),
                    seconds: limit.as_secs(),
                });
            }
            tokio::time::sleep(self.poll_interval()).await;
            let v = self
                .api
                .get(&format!("/actions/{}", a.id), resource)
                .await?;
            a = decode(&self.api, "GET /actions", resource, &v, "action")?;
        }
    }

    fn poll_interval(&self) -> Duration {
        // Tests run against a local server; real actions take seconds.
        if self.api.base().starts_with("http://127.") {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(2)
        }
    }

    /// Wait for every action listed under `key` (`action`, `actions`, `next_actions`).
    async fn wait_actions(&self, v: &Value, resource: &str) -> Result<(), ProviderError> {
        if let Some(a) = v.get("action").filter(|a| !a.is_null()) {
            let a: Action = serde_json::from_value(a.clone())
                .map_err(|e| self.api.bad("action", resource, e.to_string()))?;
            self.wait_action(&a, resource).await?;
        }
        for key in ["actions", "next_actions"] {
            if let Some(list) = v.get(key).and_then(Value::as_array) {
                for a in list {
                    let a: Action = serde_json::from_value(a.clone())
                        .map_err(|e| self.api.bad("action", resource, e.to_string()))?;
                    self.wait_action(&a, resource).await?;
                }
            }
        }
        Ok(())
    }

    async fn ensure_network(&self) -> Result<u64, ProviderError> {
        let name = self.network_name();
        if let Some(n) = self
            .list_all::<Named>("/networks", "networks")
            .await?
            .into_iter()
            .next()
        {
            return Ok(n.id);
        }
        let body = json!({
            "name": name,
            "ip_range": self.spec.ip_range.clone().unwrap_or_else(|| HetznerSpec::DEFAULT_IP_RANGE.into()),
            "subnets": [{
                "type": "cloud",
                "ip_range": self.ctx.subnet.to_string(),
                "network_zone": self.spec.network_zone,
            }],
            "labels": self.labels(None),
        });
        let v = self.api.post("/networks", &name, &body).await?;
        let n: Named = decode(&self.api, "POST /networks", &name, &v, "network")?;
        Ok(n.id)
    }

    fn firewall_rules(&self) -> Value {
        let sources: Vec<String> = if self.spec.allowed_cidrs.is_empty() {
            vec!["0.0.0.0/0".into(), "::/0".into()]
        } else {
            self.spec.allowed_cidrs.clone()
        };
        let mut ports = vec![self.ctx.ssh_port];
        ports.extend(self.ctx.api_ports.iter().copied());
        ports.sort_unstable();
        ports.dedup();
        Value::Array(
            ports
                .into_iter()
                .map(|p| {
                    json!({
                        "direction": "in",
                        "protocol": "tcp",
                        "port": p.to_string(),
                        "source_ips": sources,
                        "description": format!("kubeforge {p}"),
                    })
                })
                .collect(),
        )
    }

    /// The firewall, applied to every server with the cluster label. Hetzner firewalls
    /// filter the public interface only: VRRP, kubelet and etcd between the machines go
    /// over the private network, which they do not filter.
    async fn ensure_firewall(&self) -> Result<u64, ProviderError> {
        let name = self.firewall_name();
        if let Some(f) = self
            .list_all::<Named>("/firewalls", "firewalls")
            .await?
            .into_iter()
            .next()
        {
            return Ok(f.id);
        }
        let body = json!({
            "name": name,
            "labels": self.labels(None),
            "rules": self.firewall_rules(),
            "apply_to": [{"type": "label_selector", "label_selector": {"selector": self.selector()}}],
        });
        let v = self.api.post("/firewalls", &name, &body).await?;
        let f: Named = decode(&self.api, "POST /firewalls", &name, &v, "firewall")?;
        self.wait_actions(&v, &name).await?;
        Ok(f.id)
    }

    async fn ensure_key(&self) -> Result<u64, ProviderError> {
        let name = self.key_name();
        if let Some(k) = self
            .list_all::<Named>("/ssh_keys", "ssh_keys")
            .await?
            .into_iter()
            .next()
        {
            return Ok(k.id);
        }
        let body = json!({
            "name": name,
            "public_key": self.ctx.ssh_public_key.trim(),
            "labels": self.labels(None),
        });
        let v = self.api.post("/ssh_keys", &name, &body).await?;
        let k: Named = decode(&self.api, "POST /ssh_keys", &name, &v, "ssh_key")?;
        Ok(k.id)
    }

    fn server_type(&self, role: MachineRole) -> String {
        match role {
            MachineRole::ControlPlane => self.spec.control_plane_server_type.clone(),
            MachineRole::LoadBalancer => self.spec.load_balancer_server_type.clone(),
            MachineRole::Worker => None,
        }
        .unwrap_or_else(|| self.spec.server_type.clone())
    }

    async fn create_server(&self, s: &MachineSpec, key_id: u64) -> Result<Server, ProviderError> {
        let body = json!({
            "name": s.name,
            "server_type": self.server_type(s.role),
            "image": self.spec.image,
            "location": self.spec.location,
            "ssh_keys": [key_id],
            "labels": self.labels(Some(s.role)),
            "user_data": cloud::user_data(&s.name),
            "start_after_create": true,
            "public_net": {"enable_ipv4": true, "enable_ipv6": true},
        });
        match self.api.post("/servers", &s.name, &body).await {
            Ok(v) => {
                cloud::fault("hetzner-after-create-server");
                let server: Server = decode(&self.api, "POST /servers", &s.name, &v, "server")?;
                self.wait_actions(&v, &s.name).await?;
                Ok(server)
            }
            Err(e) if e.api_code() == Some("uniqueness_error") => {
                // Made by a run that crashed before its lookup could see it, or not ours.
                let v = self
                    .api
                    .get(
                        &format!("/servers?name={}", cloud::query_value(&s.name)),
                        &s.name,
                    )
                    .await?;
                let found: Vec<Server> = decode(&self.api, "GET /servers", &s.name, &v, "servers")?;
                match found.into_iter().next() {
                    Some(server)
                        if server.labels.get(LABEL_CLUSTER).map(String::as_str)
                            == Some(self.cluster()) =>
                    {
                        Ok(server)
                    }
                    _ => Err(ProviderError::Foreign {
                        name: s.name.clone(),
                        cluster: self.cluster().to_string(),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Attach the server to the network at its fixed address (and the VIP as an alias
    /// on the machine that holds it first), unless it is attached.
    async fn ensure_attached(
        &self,
        server: &Server,
        s: &MachineSpec,
        network: u64,
    ) -> Result<(), ProviderError> {
        if let Some(pn) = server.private_net.iter().find(|p| p.network == network) {
            if pn.ip != s.ip.to_string() {
                return Err(ProviderError::Drift {
                    name: s.name.clone(),
                    detail: format!("address is {}, spec says {}", pn.ip, s.ip),
                });
            }
            return Ok(());
        }
        let mut body = json!({"network": network, "ip": s.ip.to_string()});
        if let (Some(vip), Some(holder)) = (self.ctx.vip, &self.ctx.vip_holder) {
            if holder == &s.name {
                body["alias_ips"] = json!([vip.to_string()]);
            }
        }
        let v = self
            .api
            .post(
                &format!("/servers/{}/actions/attach_to_network", server.id),
                &s.name,
                &body,
            )
            .await?;
        self.wait_actions(&v, &s.name).await
    }

    async fn ensure_volumes(
        &self,
        server: &Server,
        s: &MachineSpec,
        volumes: &[Volume],
    ) -> Result<(), ProviderError> {
        for (i, bytes) in s.extra_disks.iter().enumerate() {
            let name = format!("{}-disk-{}", s.name, i + 1);
            if volumes.iter().any(|v| v.name == name) {
                continue;
            }
            // Hetzner volumes are at least 10 GB.
            let size = cloud::gib_ceil(*bytes).max(10);
            let body = json!({
                "name": name,
                "size": size,
                "server": server.id,
                "automount": false,
                "labels": self.labels(Some(s.role)),
            });
            let v = self.api.post("/volumes", &name, &body).await?;
            self.wait_actions(&v, &name).await?;
        }
        Ok(())
    }

    fn machine_of(&self, s: &Server, network: Option<u64>) -> Machine {
        let private = s
            .private_net
            .iter()
            .find(|p| Some(p.network) == network)
            .or_else(|| s.private_net.first());
        Machine {
            name: s.name.clone(),
            role: s
                .labels
                .get(LABEL_ROLE)
                .and_then(|r| MachineRole::parse(r))
                .unwrap_or(MachineRole::Worker),
            ip: private.and_then(|p| p.ip.parse().ok()),
            state: match s.status.as_str() {
                "running" => MachineState::Running,
                "off" => MachineState::Stopped,
                "initializing" | "starting" => MachineState::Created,
                other => MachineState::Other(other.to_string()),
            },
            id: s.id.to_string(),
            public_ip: s
                .public_net
                .as_ref()
                .and_then(|p| p.ipv4.as_ref())
                .and_then(|i| i.ip.parse().ok()),
        }
    }

    async fn servers(&self) -> Result<Vec<Server>, ProviderError> {
        self.list_all("/servers", "servers").await
    }

    async fn find_server(&self, name: &str) -> Result<Option<Server>, ProviderError> {
        Ok(self.servers().await?.into_iter().find(|s| s.name == name))
    }

    async fn server_action(&self, name: &str, action: &str) -> Result<(), ProviderError> {
        let s = self
            .find_server(name)
            .await?
            .ok_or_else(|| ProviderError::NotFound { name: name.into() })?;
        let v = self
            .api
            .post(
                &format!("/servers/{}/actions/{action}", s.id),
                name,
                &json!({}),
            )
            .await?;
        self.wait_actions(&v, name).await
    }
}

#[async_trait::async_trait]
impl Provider for HetznerProvider {
    fn kind(&self) -> &'static str {
        P
    }

    async fn ensure(&self, specs: &[MachineSpec]) -> Result<Vec<Machine>, ProviderError> {
        super::check_addresses(specs, self.ctx.subnet)?;
        let network = self.ensure_network().await?;
        self.ensure_firewall().await?;
        let key = self.ensure_key().await?;
        let existing = self.servers().await?;
        let volumes: Vec<Volume> = self.list_all("/volumes", "volumes").await?;
        let mut ids = Vec::new();
        for s in specs {
            let server = match existing.iter().find(|e| e.name == s.name) {
                Some(e) => {
                    let role = e.labels.get(LABEL_ROLE).map(String::as_str);
                    if role != Some(s.role.as_str()) {
                        return Err(ProviderError::Drift {
                            name: s.name.clone(),
                            detail: format!(
                                "role is {}, spec says {}",
                                role.unwrap_or("unset"),
                                s.role
                            ),
                        });
                    }
                    if e.status == "off" {
                        let v = self
                            .api
                            .post(
                                &format!("/servers/{}/actions/poweron", e.id),
                                &s.name,
                                &json!({}),
                            )
                            .await?;
                        self.wait_actions(&v, &s.name).await?;
                    }
                    e.clone()
                }
                None => self.create_server(s, key).await?,
            };
            self.ensure_attached(&server, s, network).await?;
            self.ensure_volumes(&server, s, &volumes).await?;
            ids.push(server.id);
        }
        let interval = self.poll_interval();
        let machines = cloud::poll(
            P,
            "servers to run",
            interval,
            Duration::from_secs(600),
            || async {
                let now = self.servers().await?;
                let mut out = Vec::new();
                for id in &ids {
                    match now.iter().find(|s| s.id == *id) {
                        Some(s) if s.status == "running" => {
                            out.push(self.machine_of(s, Some(network)))
                        }
                        _ => return Ok(None),
                    }
                }
                Ok(Some(out))
            },
        )
        .await?;
        self.ensure_api_lb(network).await?;
        Ok(machines)
    }

    async fn list(&self) -> Result<Vec<Machine>, ProviderError> {
        let mut out: Vec<Machine> = self
            .servers()
            .await?
            .iter()
            .map(|s| self.machine_of(s, None))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<(), ProviderError> {
        let Some(s) = self.find_server(name).await? else {
            return Ok(());
        };
        let v = self.api.delete(&format!("/servers/{}", s.id), name).await?;
        self.wait_actions(&v, name).await
    }

    async fn stop(&self, name: &str) -> Result<(), ProviderError> {
        self.server_action(name, "shutdown").await
    }

    async fn start(&self, name: &str) -> Result<(), ProviderError> {
        self.server_action(name, "poweron").await
    }

    fn planned(&self, specs: &[MachineSpec]) -> Vec<Resource> {
        let mut out = vec![
            Resource::new("network", self.network_name(), None),
            Resource::new("firewall", self.firewall_name(), None),
            Resource::new("ssh-key", self.key_name(), None),
        ];
        out.extend(self.planned_api_lb());
        for s in specs {
            out.push(Resource::new("server", s.name.clone(), None));
            for (i, _) in s.extra_disks.iter().enumerate() {
                out.push(Resource::new(
                    "volume",
                    format!("{}-disk-{}", s.name, i + 1),
                    None,
                ));
            }
        }
        out
    }

    async fn resources(&self) -> Result<Vec<Resource>, ProviderError> {
        // Load balancers first: the network cannot go while one is attached.
        let mut out: Vec<Resource> = self
            .load_balancers()
            .await?
            .into_iter()
            .map(|l| Resource::new("load-balancer", l.name, Some(l.id.to_string())))
            .collect();
        let mut servers = self.servers().await?;
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        for s in servers {
            out.push(Resource::new("server", s.name, Some(s.id.to_string())));
        }
        for v in self.list_all::<Volume>("/volumes", "volumes").await? {
            out.push(Resource::new("volume", v.name, Some(v.id.to_string())));
        }
        for (kind, path, key) in [
            ("firewall", "/firewalls", "firewalls"),
            ("network", "/networks", "networks"),
            ("ssh-key", "/ssh_keys", "ssh_keys"),
        ] {
            for n in self.list_all::<Named>(path, key).await? {
                out.push(Resource::new(kind, n.name, Some(n.id.to_string())));
            }
        }
        Ok(out)
    }

    async fn destroy_all(&self) -> Result<Vec<Resource>, ProviderError> {
        let found = self.resources().await?;
        for r in found.iter().filter(|r| r.kind == "load-balancer") {
            if let Some(id) = &r.id {
                self.api
                    .delete(&format!("/load_balancers/{id}"), &r.name)
                    .await?;
            }
        }
        for r in found.iter().filter(|r| r.kind == "server") {
            if let Some(id) = &r.id {
                let v = self.api.delete(&format!("/servers/{id}"), &r.name).await?;
                self.wait_actions(&v, &r.name).await?;
            }
        }
        for v in self.list_all::<Volume>("/volumes", "volumes").await? {
            if v.server.is_some() {
                let a = self
                    .api
                    .post(
                        &format!("/volumes/{}/actions/detach", v.id),
                        &v.name,
                        &json!({}),
                    )
                    .await?;
                self.wait_actions(&a, &v.name).await?;
            }
            self.api
                .delete(&format!("/volumes/{}", v.id), &v.name)
                .await?;
        }
        for r in &found {
            let Some(id) = &r.id else { continue };
            match r.kind.as_str() {
                "firewall" => {
                    let body = json!({"remove_from": [{"type": "label_selector", "label_selector": {"selector": self.selector()}}]});
                    match self
                        .api
                        .post(
                            &format!("/firewalls/{id}/actions/remove_from_resources"),
                            &r.name,
                            &body,
                        )
                        .await
                    {
                        Ok(v) => self.wait_actions(&v, &r.name).await?,
                        Err(e)
                            if matches!(
                                e.api_code(),
                                Some("firewall_resource_not_found" | "not_found")
                            ) => {}
                        Err(e) => return Err(e),
                    }
                    self.api
                        .delete(&format!("/firewalls/{id}"), &r.name)
                        .await?;
                }
                "network" => {
                    self.api.delete(&format!("/networks/{id}"), &r.name).await?;
                }
                "ssh-key" => {
                    self.api.delete(&format!("/ssh_keys/{id}"), &r.name).await?;
                }
                _ => {}
            }
        }
        Ok(found)
    }

    async fn endpoint_targets(
        &self,
    ) -> Result<Option<Vec<crate::provider::TargetHealth>>, ProviderError> {
        self.api_lb_targets().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_endpoints_need_the_opt_in() {
        let ctx = || CloudContext {
            cluster: "c".into(),
            subnet: "10.42.0.0/24".parse().unwrap(),
            ssh_public_key: String::new(),
            ssh_port: 22,
            api_ports: vec![6443],
            vip: None,
            vip_holder: None,
            api_lb: None,
        };
        let spec = |v: serde_json::Value| -> HetznerSpec { serde_json::from_value(v).unwrap() };
        let err = HetznerProvider::new(
            &spec(serde_json::json!({"endpoint": "http://127.0.0.1:9/v1"})),
            ctx(),
        )
        .err()
        .expect("plain http accepted");
        assert_eq!(
            err.to_string(),
            "hetzner: the API endpoint http://127.0.0.1:9/v1 is plain http (the credentials would travel in clear): set spec.provider.hetzner.allowHttp: true to allow it (local emulators only)"
        );
        assert!(HetznerProvider::new(
            &spec(serde_json::json!({"endpoint": "http://127.0.0.1:9/v1", "allowHttp": true})),
            ctx()
        )
        .is_ok());
        assert!(HetznerProvider::new(
            &spec(serde_json::json!({"endpoint": "https://api.example.com/v1"})),
            ctx()
        )
        .is_ok());
    }

    #[test]
    fn error_bodies() {
        let body = r#"{"error": {"code": "uniqueness_error", "message": "SSH key with the same fingerprint already exists", "details": {}}}"#;
        assert_eq!(
            error_of(body),
            Some((
                "uniqueness_error".into(),
                "SSH key with the same fingerprint already exists".into()
            ))
        );
        assert_eq!(error_of("<html>"), None);
        assert!(retryable_code("rate_limit_exceeded"));
        assert!(!retryable_code("invalid_input"));
    }
}
