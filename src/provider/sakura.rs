//! Sakura Cloud: machines are servers with two NICs, eth0 on the shared segment (the
//! public address kubeforge logs in to) and eth1 on a switch kubeforge creates for the
//! cluster; the boot disk is copied from an archive and configured through the disk
//! edit API (host name, SSH key, no password login, a startup script).
//!
//! REST over reqwest (`https://secure.sakura.ad.jp/cloud/zone/<zone>/api/cloud/1.1`,
//! HTTP Basic with the access token and its secret), from the public API
//! documentation; verified only against its documented examples (`docs/providers.md`).
//!
//! - Sakura's switch has no address management: the fixed private address is set in
//!   the OS by a startup script (a `note`, one per machine, attached in the disk edit)
//!   that configures eth1, and is recorded on the server as the tag `kubeforge-ip=`.
//! - Servers, disks, switches and notes carry the tag `kubeforge-cluster=<cluster>`;
//!   lists filter on it (`{"Filter":{"Tags":[...]}}` with `From`/`Count`/`Total`
//!   paging) and names are checked exactly, as the name filter matches substrings.
//! - Packet filters cannot carry tags: kubeforge owns exactly the one named
//!   `kubeforge-<cluster>` whose description names the cluster.
//! - There is no idempotency key: a server made before a crash is found by its tag and
//!   finished (disk, power) on the next run. Disk copies are polled until their
//!   `Availability` is `available`; servers until `Instance.Status` is `up`.

use super::cloud::{self, Auth, CloudContext, RestClient, Secret};
use super::{Machine, MachineRole, MachineSpec, MachineState, Provider, ProviderError, Resource};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

const P: &str = "sakura";
pub const TAG_CLUSTER_PREFIX: &str = "kubeforge-cluster=";
pub const TAG_ROLE_PREFIX: &str = "kubeforge-role=";
pub const TAG_IP_PREFIX: &str = "kubeforge-ip=";

/// `spec.provider.sakura` in the cluster file.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SakuraSpec {
    /// ID of the archive the boot disks are copied from (e.g. a Debian public archive).
    pub archive: String,
    #[serde(default = "SakuraSpec::default_zone")]
    pub zone: String,
    /// API root (default `https://secure.sakura.ad.jp/cloud/zone/<zone>/api/cloud/1.1`).
    pub endpoint: Option<String>,
    /// Environment variables holding the API key (default SAKURACLOUD_ACCESS_TOKEN and
    /// SAKURACLOUD_ACCESS_TOKEN_SECRET).
    pub access_token_env: Option<String>,
    pub access_token_secret_env: Option<String>,
    #[serde(default = "SakuraSpec::default_cpu")]
    pub cpu: u32,
    #[serde(default = "SakuraSpec::default_memory_gb")]
    pub memory_gb: u32,
    #[serde(default = "SakuraSpec::default_disk_size_gb")]
    pub disk_size_gb: u32,
    /// `ssd` (default) or `hdd`.
    #[serde(default)]
    pub disk_plan: DiskPlan,
    /// The machines' subnet on the cluster switch (default 10.42.0.0/24).
    pub subnet: Option<String>,
    /// Sources allowed to reach SSH, the apiserver and the load-balancer port on the
    /// shared segment (default 0.0.0.0/0).
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// Allow a plain http:// `endpoint` (the credentials travel in clear: local
    /// emulators only).
    #[serde(default)]
    pub allow_http: bool,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DiskPlan {
    #[default]
    Ssd,
    Hdd,
}

impl DiskPlan {
    /// The disk plan ids of API 1.1.
    fn id(self) -> u64 {
        match self {
            DiskPlan::Ssd => 4,
            DiskPlan::Hdd => 2,
        }
    }
}

impl SakuraSpec {
    pub const DEFAULT_SUBNET: &'static str = "10.42.0.0/24";
    fn default_zone() -> String {
        "is1a".into()
    }
    fn default_cpu() -> u32 {
        2
    }
    fn default_memory_gb() -> u32 {
        4
    }
    fn default_disk_size_gb() -> u32 {
        40
    }
}

/// `{"is_fatal": true, "status": "404 Not Found", "error_code": "...", "error_msg": "..."}`.
fn error_of(body: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(body).ok()?;
    Some((
        v.get("error_code")?.as_str()?.to_string(),
        v.get("error_msg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    ))
}

fn retryable_code(code: &str) -> bool {
    matches!(code, "busy" | "service_unavailable" | "too_many_requests")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tagged {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Server {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    instance: Option<Instance>,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    disks: Vec<Tagged>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Instance {
    #[serde(default)]
    status: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Interface {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "IPAddress", default)]
    ip_address: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Disk {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    #[serde(default)]
    availability: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PacketFilter {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    #[serde(default)]
    description: String,
}

fn tag_value<'a>(tags: &'a [String], prefix: &str) -> Option<&'a str> {
    tags.iter().find_map(|t| t.strip_prefix(prefix))
}

pub struct SakuraProvider {
    spec: SakuraSpec,
    ctx: CloudContext,
    api: RestClient,
}

impl SakuraProvider {
    /// The API key is read now but only required when the API is called.
    pub fn new(spec: &SakuraSpec, ctx: CloudContext) -> Result<SakuraProvider, ProviderError> {
        let token_var = spec
            .access_token_env
            .clone()
            .unwrap_or_else(|| "SAKURACLOUD_ACCESS_TOKEN".into());
        let secret_var = spec
            .access_token_secret_env
            .clone()
            .unwrap_or_else(|| "SAKURACLOUD_ACCESS_TOKEN_SECRET".into());
        let auth = cloud::secret_from_env(P, &token_var).and_then(|user: Secret| {
            Ok(Auth::Basic {
                user,
                password: cloud::secret_from_env(P, &secret_var)?,
            })
        });
        let endpoint = spec.endpoint.clone().unwrap_or_else(|| {
            format!(
                "https://secure.sakura.ad.jp/cloud/zone/{}/api/cloud/1.1",
                spec.zone
            )
        });
        cloud::check_endpoint(P, &endpoint, spec.allow_http)?;
        Ok(SakuraProvider {
            spec: spec.clone(),
            api: RestClient::new(P, &endpoint, auth, error_of, retryable_code)?,
            ctx,
        })
    }

    pub fn set_retry(&mut self, retry: cloud::Retry) {
        self.api.retry = retry;
    }

    fn cluster(&self) -> &str {
        &self.ctx.cluster
    }
    fn cluster_tag(&self) -> String {
        format!("{TAG_CLUSTER_PREFIX}{}", self.cluster())
    }
    fn switch_name(&self) -> String {
        self.cluster().to_string()
    }
    fn filter_name(&self) -> String {
        format!("kubeforge-{}", self.cluster())
    }
    fn filter_description(&self) -> String {
        format!("kubeforge cluster {}", self.cluster())
    }
    fn note_name(machine: &str) -> String {
        format!("{machine}-network")
    }

    fn poll_interval(&self) -> Duration {
        if self.api.base().starts_with("http://127.") {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(5)
        }
    }

    /// Every item of `path` with the cluster tag (`key` holds them), page by page.
    async fn list_all<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        key: &str,
    ) -> Result<Vec<T>, ProviderError> {
        let mut out = Vec::new();
        let mut from = 0u64;
        let count = 100u64;
        loop {
            let q = json!({"From": from, "Count": count, "Filter": {"Tags": [self.cluster_tag()]}});
            let url = format!("{path}?{}", cloud::query_value(&q.to_string()));
            let v = self.api.get(&url, self.cluster()).await?;
            let items = v.get(key).cloned().ok_or_else(|| {
                self.api.bad(
                    &format!("GET {path}"),
                    self.cluster(),
                    format!("no `{key}`"),
                )
            })?;
            let items: Vec<T> = serde_json::from_value(items).map_err(|e| {
                self.api
                    .bad(&format!("GET {path}"), self.cluster(), e.to_string())
            })?;
            let n = items.len() as u64;
            out.extend(items);
            let total = v.get("Total").and_then(Value::as_u64).unwrap_or(0);
            from += n;
            if n == 0 || from >= total {
                break;
            }
        }
        Ok(out)
    }

    /// Items whose name is exactly `name` (the API's name filter matches substrings).
    async fn named<T: for<'de> Deserialize<'de> + HasName>(
        &self,
        path: &str,
        key: &str,
        name: &str,
    ) -> Result<Option<T>, ProviderError> {
        Ok(self
            .list_all::<T>(path, key)
            .await?
            .into_iter()
            .find(|t| t.name() == name))
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        op: &str,
        resource: &str,
        v: &Value,
        key: &str,
    ) -> Result<T, ProviderError> {
        let field = v.get(key).ok_or_else(|| {
            self.api
                .bad(op, resource, format!("no `{key}` in the answer"))
        })?;
        serde_json::from_value(field.clone()).map_err(|e| self.api.bad(op, resource, e.to_string()))
    }

    async fn ensure_switch(&self) -> Result<String, ProviderError> {
        let name = self.switch_name();
        if let Some(s) = self.named::<Tagged>("/switch", "Switches", &name).await? {
            return Ok(s.id);
        }
        let body = json!({"Switch": {
            "Name": name,
            "Description": format!("kubeforge cluster {} ({})", self.cluster(), self.ctx.subnet),
            "Tags": [self.cluster_tag()],
        }});
        let v = self.api.post("/switch", &name, &body).await?;
        let s: Tagged = self.decode("POST /switch", &name, &v, "Switch")?;
        Ok(s.id)
    }

    /// Packet filter for the shared-segment NIC: SSH, the apiserver and the load
    /// balancer port from the allowed sources, answers to connections the machine
    /// opened (ephemeral ports), ICMP and fragments; everything else is dropped. The
    /// cluster switch is not filtered (VRRP, kubelet, etcd go there).
    async fn ensure_packet_filter(&self) -> Result<String, ProviderError> {
        let name = self.filter_name();
        let existing: Vec<PacketFilter> = {
            let q = json!({"Filter": {"Name": name}});
            let v = self
                .api
                .get(
                    &format!("/packetfilter?{}", cloud::query_value(&q.to_string())),
                    &name,
                )
                .await?;
            self.decode("GET /packetfilter", &name, &v, "PacketFilters")?
        };
        if let Some(f) = existing
            .into_iter()
            .find(|f| f.name == name && f.description == self.filter_description())
        {
            return Ok(f.id);
        }
        let sources: Vec<String> = if self.spec.allowed_cidrs.is_empty() {
            vec!["0.0.0.0/0".into()]
        } else {
            self.spec.allowed_cidrs.clone()
        };
        let mut ports = vec![self.ctx.ssh_port];
        ports.extend(self.ctx.api_ports.iter().copied());
        ports.sort_unstable();
        ports.dedup();
        let mut rules = Vec::new();
        for port in ports {
            for src in &sources {
                rules.push(json!({"Protocol": "tcp", "SourceNetwork": src, "DestinationPort": port.to_string(), "Action": "allow"}));
            }
        }
        rules.push(json!({"Protocol": "tcp", "DestinationPort": "32768-61000", "Action": "allow"}));
        rules.push(json!({"Protocol": "udp", "DestinationPort": "32768-61000", "Action": "allow"}));
        rules.push(json!({"Protocol": "icmp", "Action": "allow"}));
        rules.push(json!({"Protocol": "fragment", "Action": "allow"}));
        rules.push(json!({"Protocol": "ip", "Action": "deny"}));
        let body = json!({"PacketFilter": {"Name": name, "Description": self.filter_description(), "Expression": rules}});
        let v = self.api.post("/packetfilter", &name, &body).await?;
        let f: PacketFilter = self.decode("POST /packetfilter", &name, &v, "PacketFilter")?;
        Ok(f.id)
    }

    /// The startup script that gives eth1 (the cluster switch) its fixed address.
    fn network_script(&self, s: &MachineSpec) -> String {
        let prefix = self.ctx.subnet.prefix_len();
        format!(
            "#!/bin/sh\n# @sacloud-once\n# kubeforge: the fixed address of {name} on the cluster switch\nset -e\ncat > /etc/network/interfaces.d/kubeforge-eth1 <<'EOF'\nauto eth1\niface eth1 inet static\n    address {ip}/{prefix}\nEOF\nip addr replace {ip}/{prefix} dev eth1 && ip link set eth1 up\n",
            name = s.name,
            ip = s.ip
        )
    }

    async fn ensure_note(
        &self,
        s: &MachineSpec,
        notes: &[Tagged],
    ) -> Result<String, ProviderError> {
        let name = Self::note_name(&s.name);
        if let Some(n) = notes.iter().find(|n| n.name == name) {
            return Ok(n.id.clone());
        }
        let body = json!({"Note": {"Name": name, "Class": "shell", "Content": self.network_script(s), "Tags": [self.cluster_tag()]}});
        let v = self.api.post("/note", &name, &body).await?;
        let n: Tagged = self.decode("POST /note", &name, &v, "Note")?;
        Ok(n.id)
    }

    fn tags(&self, s: &MachineSpec) -> Value {
        json!([
            self.cluster_tag(),
            format!("{TAG_ROLE_PREFIX}{}", s.role.as_str()),
            format!("{TAG_IP_PREFIX}{}", s.ip),
        ])
    }

    /// The server plan id for the configured CPU count and memory
    /// (`GET /product/server`): an available plan, the newest generation first.
    async fn server_plan(&self) -> Result<Value, ProviderError> {
        let memory_mb = self.spec.memory_gb * 1024;
        let q = json!({"Filter": {"CPU": self.spec.cpu, "MemoryMB": memory_mb}});
        let what = format!("{} CPU / {} GiB", self.spec.cpu, self.spec.memory_gb);
        let v = self
            .api
            .get(
                &format!("/product/server?{}", cloud::query_value(&q.to_string())),
                &what,
            )
            .await?;
        let plans = v
            .get("ServerPlans")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        plans
            .into_iter()
            .filter(|p| {
                p.get("CPU").and_then(Value::as_u64) == Some(u64::from(self.spec.cpu))
                    && p.get("MemoryMB").and_then(Value::as_u64) == Some(u64::from(memory_mb))
                    && p.get("Availability")
                        .and_then(Value::as_str)
                        .unwrap_or("available")
                        == "available"
                    && p.get("Commitment")
                        .and_then(Value::as_str)
                        .unwrap_or("standard")
                        == "standard"
            })
            .max_by_key(|p| p.get("Generation").and_then(Value::as_u64).unwrap_or(0))
            .and_then(|p| p.get("ID").cloned())
            .ok_or_else(|| ProviderError::Config {
                provider: P,
                message: format!(
                    "zone {} has no available server plan with {what}",
                    self.spec.zone
                ),
            })
    }

    async fn create_server(&self, s: &MachineSpec, switch: &str) -> Result<Server, ProviderError> {
        let plan = self.server_plan().await?;
        let body = json!({"Server": {
            "Name": s.name,
            "HostName": s.name,
            "Description": format!("kubeforge cluster {}", self.cluster()),
            "ServerPlan": {"ID": plan},
            "ConnectedSwitches": [{"Scope": "shared"}, {"ID": switch}],
            "InterfaceDriver": "virtio",
            "Tags": self.tags(s),
        }});
        let v = self.api.post("/server", &s.name, &body).await?;
        cloud::fault("sakura-after-create-server");
        self.decode("POST /server", &s.name, &v, "Server")
    }

    /// Copy the archive to the boot disk, configured by the disk edit API and
    /// connected to the server; waits until it is `available`.
    async fn create_boot_disk(
        &self,
        s: &MachineSpec,
        server: &Server,
        note: &str,
    ) -> Result<(), ProviderError> {
        let body = json!({
            "Disk": {
                "Name": s.name,
                "Plan": {"ID": self.spec.disk_plan.id()},
                "SizeMB": self.spec.disk_size_gb * 1024,
                "Connection": "virtio",
                "SourceArchive": {"ID": self.spec.archive},
                "Server": {"ID": server.id},
                "Tags": [self.cluster_tag()],
            },
            "Config": {
                "HostName": s.name,
                "SSHKeys": [{"PublicKey": self.ctx.ssh_public_key.trim()}],
                "DisablePWAuth": true,
                "Notes": [{"ID": note}],
            },
        });
        let v = self.api.post("/disk", &s.name, &body).await?;
        let d: Disk = self.decode("POST /disk", &s.name, &v, "Disk")?;
        self.wait_disk(&d).await
    }

    async fn wait_disk(&self, d: &Disk) -> Result<(), ProviderError> {
        let path = format!("/disk/{}", d.id);
        let name = d.name.clone();
        cloud::poll(
            P,
            &format!("disk {name} to become available"),
            self.poll_interval(),
            Duration::from_secs(1800),
            || async {
                let v = self.api.get(&path, &name).await?;
                let d: Disk = self.decode("GET /disk", &name, &v, "Disk")?;
                match d.availability.as_str() {
                    "available" => Ok(Some(())),
                    "failed" => Err(ProviderError::OperationFailed {
                        provider: P,
                        operation: "disk copy".into(),
                        resource: name.clone(),
                        code: "failed".into(),
                        message: "the disk's Availability is `failed`".into(),
                    }),
                    _ => Ok(None),
                }
            },
        )
        .await
    }

    async fn ensure_extra_disks(
        &self,
        s: &MachineSpec,
        server: &Server,
        disks: &[Tagged],
    ) -> Result<(), ProviderError> {
        for (i, bytes) in s.extra_disks.iter().enumerate() {
            let name = format!("{}-disk-{}", s.name, i + 1);
            if disks.iter().any(|d| d.name == name) {
                continue;
            }
            let body = json!({"Disk": {
                "Name": name,
                "Plan": {"ID": self.spec.disk_plan.id()},
                "SizeMB": cloud::gib_ceil(*bytes) * 1024,
                "Connection": "virtio",
                "Server": {"ID": server.id},
                "Tags": [self.cluster_tag()],
            }});
            let v = self.api.post("/disk", &name, &body).await?;
            let d: Disk = self.decode("POST /disk", &name, &v, "Disk")?;
            self.wait_disk(&d).await?;
        }
        Ok(())
    }

    async fn server(&self, id: &str, name: &str) -> Result<Server, ProviderError> {
        let v = self.api.get(&format!("/server/{id}"), name).await?;
        self.decode("GET /server", name, &v, "Server")
    }

    async fn power(&self, server: &Server, on: bool) -> Result<(), ProviderError> {
        let want = if on { "up" } else { "down" };
        if server.instance.as_ref().map(|i| i.status.as_str()) == Some(want) {
            return Ok(());
        }
        let path = format!("/server/{}/power", server.id);
        let r = if on {
            self.api
                .put(&path, &server.name, &json!({}))
                .await
                .map(|_| ())
        } else {
            self.api
                .send(
                    reqwest::Method::DELETE,
                    &path,
                    &server.name,
                    Some(&json!({"Force": true})),
                )
                .await
                .map(|_| ())
        };
        match r {
            Ok(()) => {}
            // Already in (or on its way to) that state.
            Err(e) if matches!(e.api_code(), Some("still_creating" | "conflict")) => {}
            Err(e) => return Err(e),
        }
        cloud::poll(
            P,
            &format!("server {} to be {want}", server.name),
            self.poll_interval(),
            Duration::from_secs(600),
            || async {
                let s = self.server(&server.id, &server.name).await?;
                Ok((s.instance.as_ref().map(|i| i.status.as_str()) == Some(want)).then_some(()))
            },
        )
        .await
    }

    fn machine_of(&self, s: &Server) -> Machine {
        Machine {
            name: s.name.clone(),
            role: tag_value(&s.tags, TAG_ROLE_PREFIX)
                .and_then(MachineRole::parse)
                .unwrap_or(MachineRole::Worker),
            ip: tag_value(&s.tags, TAG_IP_PREFIX).and_then(|ip| ip.parse().ok()),
            state: match s.instance.as_ref().map(|i| i.status.as_str()) {
                Some("up") => MachineState::Running,
                Some("down") => MachineState::Stopped,
                Some(other) => MachineState::Other(other.to_string()),
                None => MachineState::Other("unknown".into()),
            },
            id: s.id.clone(),
            public_ip: s
                .interfaces
                .first()
                .and_then(|i| i.ip_address.as_deref())
                .and_then(|ip| ip.parse().ok()),
        }
    }

    async fn servers(&self) -> Result<Vec<Server>, ProviderError> {
        self.list_all("/server", "Servers").await
    }
}

/// Items that have a name.
trait HasName {
    fn name(&self) -> &str;
}
impl HasName for Tagged {
    fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait::async_trait]
impl Provider for SakuraProvider {
    fn kind(&self) -> &'static str {
        P
    }

    async fn ensure(&self, specs: &[MachineSpec]) -> Result<Vec<Machine>, ProviderError> {
        super::check_addresses(specs, self.ctx.subnet)?;
        let switch = self.ensure_switch().await?;
        let filter = self.ensure_packet_filter().await?;
        let existing = self.servers().await?;
        let notes: Vec<Tagged> = self.list_all("/note", "Notes").await?;
        let disks: Vec<Tagged> = self.list_all("/disk", "Disks").await?;
        let mut out = Vec::new();
        // One at a time, as the API documentation asks.
        for s in specs {
            let server = match existing.iter().find(|e| e.name == s.name) {
                Some(e) => {
                    let ip = tag_value(&e.tags, TAG_IP_PREFIX);
                    if ip != Some(s.ip.to_string().as_str()) {
                        return Err(ProviderError::Drift {
                            name: s.name.clone(),
                            detail: format!(
                                "address is {}, spec says {}",
                                ip.unwrap_or("unset"),
                                s.ip
                            ),
                        });
                    }
                    e.clone()
                }
                None => self.create_server(s, &switch).await?,
            };
            if let Some(nic) = server.interfaces.first() {
                // Connecting an interface to the filter it already has is harmless.
                self.api
                    .put(
                        &format!("/interface/{}/to/packetfilter/{filter}", nic.id),
                        &s.name,
                        &json!({}),
                    )
                    .await?;
            }
            if !disks.iter().any(|d| d.name == s.name)
                && !server.disks.iter().any(|d| d.name == s.name)
            {
                let note = self.ensure_note(s, &notes).await?;
                self.create_boot_disk(s, &server, &note).await?;
            }
            self.ensure_extra_disks(s, &server, &disks).await?;
            let server = self.server(&server.id, &s.name).await?;
            self.power(&server, true).await?;
            let server = self.server(&server.id, &s.name).await?;
            out.push(self.machine_of(&server));
        }
        Ok(out)
    }

    async fn list(&self) -> Result<Vec<Machine>, ProviderError> {
        let mut out: Vec<Machine> = self
            .servers()
            .await?
            .iter()
            .map(|s| self.machine_of(s))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<(), ProviderError> {
        let Some(s) = self.servers().await?.into_iter().find(|s| s.name == name) else {
            return Ok(());
        };
        self.power(&s, false).await?;
        let with_disks: Vec<&str> = s.disks.iter().map(|d| d.id.as_str()).collect();
        self.api
            .send(
                reqwest::Method::DELETE,
                &format!("/server/{}", s.id),
                name,
                Some(&json!({"WithDisk": with_disks})),
            )
            .await
            .map(|_| ())
            .or_else(|e| match e {
                ProviderError::Api { status: 404, .. } => Ok(()),
                e => Err(e),
            })
    }

    async fn stop(&self, name: &str) -> Result<(), ProviderError> {
        let s = self
            .servers()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ProviderError::NotFound { name: name.into() })?;
        self.power(&s, false).await
    }

    async fn start(&self, name: &str) -> Result<(), ProviderError> {
        let s = self
            .servers()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ProviderError::NotFound { name: name.into() })?;
        self.power(&s, true).await
    }

    fn planned(&self, specs: &[MachineSpec]) -> Vec<Resource> {
        let mut out = vec![
            Resource::new("switch", self.switch_name(), None),
            Resource::new("packet-filter", self.filter_name(), None),
        ];
        for s in specs {
            out.push(Resource::new("note", Self::note_name(&s.name), None));
            out.push(Resource::new("server", s.name.clone(), None));
            out.push(Resource::new("disk", s.name.clone(), None));
            for (i, _) in s.extra_disks.iter().enumerate() {
                out.push(Resource::new(
                    "disk",
                    format!("{}-disk-{}", s.name, i + 1),
                    None,
                ));
            }
        }
        out
    }

    async fn resources(&self) -> Result<Vec<Resource>, ProviderError> {
        let mut out = Vec::new();
        let mut servers = self.servers().await?;
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        for s in servers {
            out.push(Resource::new("server", s.name, Some(s.id)));
        }
        for (kind, path, key) in [
            ("disk", "/disk", "Disks"),
            ("note", "/note", "Notes"),
            ("switch", "/switch", "Switches"),
        ] {
            let mut items: Vec<Tagged> = self.list_all(path, key).await?;
            items.retain(|t| t.tags.contains(&self.cluster_tag()));
            for t in items {
                out.push(Resource::new(kind, t.name, Some(t.id)));
            }
        }
        let name = self.filter_name();
        let q = json!({"Filter": {"Name": name}});
        let v = self
            .api
            .get(
                &format!("/packetfilter?{}", cloud::query_value(&q.to_string())),
                &name,
            )
            .await?;
        let filters: Vec<PacketFilter> =
            self.decode("GET /packetfilter", &name, &v, "PacketFilters")?;
        for f in filters {
            if f.name == name && f.description == self.filter_description() {
                out.push(Resource::new("packet-filter", f.name, Some(f.id)));
            }
        }
        Ok(out)
    }

    async fn destroy_all(&self) -> Result<Vec<Resource>, ProviderError> {
        let found = self.resources().await?;
        for s in self.servers().await? {
            self.power(&s, false).await?;
            self.api
                .delete(&format!("/server/{}", s.id), &s.name)
                .await?;
        }
        for r in &found {
            let Some(id) = &r.id else { continue };
            let path = match r.kind.as_str() {
                "disk" => format!("/disk/{id}"),
                "note" => format!("/note/{id}"),
                "switch" => format!("/switch/{id}"),
                "packet-filter" => format!("/packetfilter/{id}"),
                _ => continue,
            };
            self.api.delete(&path, &r.name).await?;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let body = r#"{"is_fatal":true,"serial":"abc","status":"404 Not Found","error_code":"not_found","error_msg":"対象が見つかりません。対象は利用できない状態か、不正なパラメータが指定されています。"}"#;
        let (code, msg) = error_of(body).unwrap();
        assert_eq!(code, "not_found");
        assert!(msg.starts_with("対象が見つかりません"));
        assert_eq!(error_of("{}"), None);
    }
}
