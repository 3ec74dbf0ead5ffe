//! The cluster file (`cluster.yaml`): intent only, as the user wrote it.
//!
//! Field names are camelCase in YAML. Unknown fields are errors everywhere
//! (`deny_unknown_fields`). Strings that need checking (CIDRs, addresses, versions) are
//! kept as strings here and checked in `validate`, so the error can say what was expected.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const API_VERSION: &str = "kubeforge.dev/v1alpha1";
pub const KIND_CLUSTER: &str = "Cluster";
pub const KIND_INVENTORY: &str = "Inventory";

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    #[schemars(extend("const" = API_VERSION))]
    pub api_version: String,
    #[schemars(extend("const" = KIND_CLUSTER))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    pub kubernetes_version: String,
    pub provider: Provider,
    #[serde(default)]
    pub state: StateSpec,
    #[serde(default)]
    pub node_pools: NodePools,
    #[serde(default)]
    pub networking: Networking,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default)]
    pub addons: Addons,
    #[serde(default)]
    pub ssh: SshSpec,
    #[serde(default)]
    pub artifacts: Artifacts,
    #[serde(default)]
    pub kubeadm: KubeadmSpec,
    #[serde(default)]
    pub backup: BackupSpec,
}

/// etcd snapshots: the timer on the control-plane nodes and how many are kept.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupSpec {
    /// Minutes between the snapshots the control-plane nodes' timer takes (the etcd
    /// leader of the moment takes it, so one per interval); 0 turns the timer off.
    #[serde(default = "BackupSpec::default_interval")]
    pub interval_minutes: u32,
    /// Snapshots kept, in the state store (manual and timer ones; those taken before an
    /// upgrade are kept apart) and on each control-plane node.
    #[serde(default = "BackupSpec::default_keep")]
    #[schemars(range(min = 1))]
    pub keep: u32,
    /// The control planes put each timer snapshot into the state bucket themselves
    /// (s3:// state only): a lost cluster loses at most one interval, whether or not
    /// anyone ran `kubeforge backup` or `apply` since. Unset: the snapshots wait on the
    /// nodes until `backup`/`apply` collects them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ship: Option<ShipSpec>,
}

/// How the control planes reach the state bucket (docs/backup.md, "Shipped by the
/// control planes").
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShipSpec {
    /// The variable (on the machine running kubeforge) holding the access key id of a
    /// narrowly scoped key: s3:PutObject, s3:GetObject, s3:ListBucket and s3:DeleteObject
    /// (retention) on `<prefix>/snapshots/*` only. Written 0600 to the control planes.
    pub access_key_id_env: String,
    /// The variable holding that key's secret.
    pub secret_access_key_env: String,
    /// The variable holding a session token, for temporary keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_env: Option<String>,
    /// The S3 endpoint as the control planes reach it (default `spec.state.endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A kubeforge build for the nodes' platform (Linux, their architecture), relative
    /// to the cluster file. Default: this kubeforge, when it runs on Linux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<std::path::PathBuf>,
}

impl BackupSpec {
    fn default_interval() -> u32 {
        15
    }
    fn default_keep() -> u32 {
        8
    }
}

impl Default for BackupSpec {
    fn default() -> Self {
        BackupSpec {
            interval_minutes: Self::default_interval(),
            keep: Self::default_keep(),
            ship: None,
        }
    }
}

/// Extra kubeadm knobs for `init` and `join`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeadmSpec {
    /// `--skip-phases` for init and join, e.g. `[preflight, addon/coredns]` where
    /// crictl or the CoreDNS image cannot be had.
    #[serde(default)]
    pub skip_phases: Vec<String>,
    /// `--ignore-preflight-errors`.
    #[serde(default)]
    pub ignore_preflight_errors: Vec<String>,
}

/// Where machines come from, written `provider: {docker: {...}}` (exactly one key).
/// Clouds are further variants. Its schema is `ProviderSpec`'s with exactly one key.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "ProviderSpec", into = "ProviderSpec")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub enum Provider {
    /// Local machines: systemd containers with sshd on an internal docker network.
    Docker(DockerProvider),
    /// Existing hosts (bare metal or VMs made elsewhere) listed in an inventory file.
    Static(StaticProvider),
    /// AWS EC2 instances (see docs/providers.md).
    Aws(crate::provider::aws::AwsSpec),
    /// Hetzner Cloud servers.
    Hetzner(crate::provider::hetzner::HetznerSpec),
    /// Sakura Cloud servers.
    Sakura(crate::provider::sakura::SakuraSpec),
}

/// The YAML form of `Provider`: one optional field per provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerProvider>,
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_: Option<StaticProvider>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws: Option<crate::provider::aws::AwsSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hetzner: Option<crate::provider::hetzner::HetznerSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sakura: Option<crate::provider::sakura::SakuraSpec>,
}

impl TryFrom<ProviderSpec> for Provider {
    type Error = String;
    fn try_from(p: ProviderSpec) -> Result<Self, Self::Error> {
        let mut found: Vec<Provider> = Vec::new();
        found.extend(p.docker.map(Provider::Docker));
        found.extend(p.static_.map(Provider::Static));
        found.extend(p.aws.map(Provider::Aws));
        found.extend(p.hetzner.map(Provider::Hetzner));
        found.extend(p.sakura.map(Provider::Sakura));
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(
                "name one provider: `docker: {}`, `static: {inventory: FILE}`, `aws: {...}`, `hetzner: {...}` or `sakura: {...}`"
                    .into(),
            ),
            _ => Err(format!(
                "name only one provider, not {}",
                found.iter().map(Provider::name).collect::<Vec<_>>().join(" and ")
            )),
        }
    }
}

impl From<Provider> for ProviderSpec {
    fn from(p: Provider) -> Self {
        let mut spec = ProviderSpec::default();
        match p {
            Provider::Docker(d) => spec.docker = Some(d),
            Provider::Static(s) => spec.static_ = Some(s),
            Provider::Aws(a) => spec.aws = Some(a),
            Provider::Hetzner(h) => spec.hetzner = Some(h),
            Provider::Sakura(s) => spec.sakura = Some(s),
        }
        spec
    }
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Docker(_) => "docker",
            Provider::Static(_) => "static",
            Provider::Aws(_) => "aws",
            Provider::Hetzner(_) => "hetzner",
            Provider::Sakura(_) => "sakura",
        }
    }

    /// Whether kubeforge creates the machines (docker and the clouds) rather than
    /// using hosts listed in an inventory.
    pub fn makes_machines(&self) -> bool {
        !matches!(self, Provider::Static(_))
    }

    /// Whether the machines are cloud VMs.
    pub fn is_cloud(&self) -> bool {
        matches!(
            self,
            Provider::Aws(_) | Provider::Hetzner(_) | Provider::Sakura(_)
        )
    }

    /// For providers that make their machines: the subnet of the machines' fixed
    /// addresses as written (or its default) and the field that sets it.
    pub fn machine_subnet(&self) -> Option<(&str, &'static str)> {
        match self {
            Provider::Docker(d) => Some((
                d.subnet
                    .as_deref()
                    .unwrap_or(super::validate::DOCKER_DEFAULT_SUBNET),
                "spec.provider.docker.subnet",
            )),
            Provider::Static(_) => None,
            Provider::Aws(a) => Some((
                a.subnet
                    .as_deref()
                    .unwrap_or(crate::provider::aws::AwsSpec::DEFAULT_SUBNET),
                "spec.provider.aws.subnet",
            )),
            Provider::Hetzner(h) => Some((
                h.subnet
                    .as_deref()
                    .unwrap_or(crate::provider::hetzner::HetznerSpec::DEFAULT_SUBNET),
                "spec.provider.hetzner.subnet",
            )),
            Provider::Sakura(s) => Some((
                s.subnet
                    .as_deref()
                    .unwrap_or(crate::provider::sakura::SakuraSpec::DEFAULT_SUBNET),
                "spec.provider.sakura.subnet",
            )),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DockerProvider {
    /// Subnet of the cluster's internal docker network (default 172.29.10.0/24).
    pub subnet: Option<String>,
    /// Node image (default: the locally built `kubeforge/node` image).
    pub image: Option<String>,
    /// Name of the docker network (default: the cluster name).
    pub network: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticProvider {
    /// Inventory file, relative to the cluster file: kubeforge YAML, or an Ansible
    /// inventory (INI or YAML). Either this or `terraform`.
    pub inventory: Option<String>,
    /// The hosts from a Terraform state (the machines Terraform made): either this or
    /// `inventory`.
    pub terraform: Option<Box<TerraformSource>>,
    /// Ansible group names mapped to roles, for inventories whose groups are named
    /// differently from the usual ones.
    #[serde(default)]
    pub groups: GroupNames,
    /// The hosts are system containers sharing one kernel (LXD, systemd-nspawn, the
    /// docker provider's machines): kubelet and etcd are set up as on the docker
    /// provider's machines (cgroupfs, no swap check, the etcd patch for 1.20-1.21).
    #[serde(default)]
    pub container_hosts: bool,
}

impl StaticProvider {
    /// Where the hosts come from, for messages and plans.
    pub fn source(&self) -> String {
        match (&self.inventory, &self.terraform) {
            (Some(i), _) => i.clone(),
            (None, Some(t)) => format!("Terraform state {}", t.state),
            (None, None) => "(no inventory)".into(),
        }
    }
}

/// A Terraform state (format version 4) to take the hosts from: its instances of the
/// known resource types, roles chosen by tags, labels, names or resource addresses.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TerraformSource {
    /// The state: a file (relative to the cluster file) or `s3://bucket/key` as
    /// Terraform's S3 backend keeps it (MinIO and other S3-compatible stores with
    /// `endpoint` and `pathStyle`).
    pub state: String,
    /// S3 endpoint (MinIO, Sakura Cloud object storage, ...).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style S3 requests (MinIO and most S3-compatible stores).
    #[serde(default)]
    pub path_style: bool,
    /// Allow a plain http endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Environment variable holding the S3 access key id (default: the usual AWS
    /// variables).
    pub access_key_id_env: Option<String>,
    /// Environment variable holding the S3 secret access key.
    pub secret_access_key_env: Option<String>,
    /// AWS profile (as in `spec.state.profile`).
    pub profile: Option<String>,
    /// PEM file of the CA that signs the S3 endpoint's certificate.
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Resource types whose instances are hosts (default: sakuracloud_server,
    /// aws_instance, hcloud_server, openstack_compute_instance_v2).
    #[serde(default)]
    pub resource_types: Vec<String>,
    /// Which instances are control-plane nodes (required).
    pub control_plane: Option<InstanceSelector>,
    /// Which instances are workers (required).
    pub workers: Option<InstanceSelector>,
    /// Which instances are load balancers (HAProxy + keepalived).
    pub load_balancers: Option<InstanceSelector>,
    /// The address kubeforge connects to over SSH: `auto` (the public address when the
    /// instance has one, else the private), `public` or `private`. Nodes talk to each
    /// other on the private address when there is one.
    #[serde(default)]
    pub ssh_address: SshAddress,
}

/// Conditions on a Terraform instance, all of which must hold (at least one given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstanceSelector {
    /// A tag in the instance's tag list (sakuracloud_server, openstack tags), or a key of
    /// its tag map (aws_instance tags, hcloud labels, openstack metadata).
    pub tag: Option<String>,
    /// `key=value` in the instance's tag map (aws tags, hcloud labels, openstack
    /// metadata).
    pub label: Option<String>,
    /// Shell-style pattern (`*`, `?`) on the instance's name (aws: the `Name` tag).
    pub name: Option<String>,
    /// Pattern on the resource address without index (`module.k8s.aws_instance.cp`).
    pub resource: Option<String>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum SshAddress {
    #[default]
    Auto,
    Public,
    Private,
}

/// Which Ansible inventory groups hold which role. Defaults cover Kubespray, KubeOne-style
/// and common hand-written inventories.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupNames {
    #[serde(default = "GroupNames::default_control_plane")]
    pub control_plane: Vec<String>,
    #[serde(default = "GroupNames::default_workers")]
    pub workers: Vec<String>,
    #[serde(default = "GroupNames::default_load_balancers")]
    pub load_balancers: Vec<String>,
}

impl GroupNames {
    fn default_control_plane() -> Vec<String> {
        [
            "kube_control_plane",
            "kube-master",
            "masters",
            "control_plane",
            "controlplane",
        ]
        .map(String::from)
        .to_vec()
    }
    fn default_workers() -> Vec<String> {
        ["kube_node", "kube-node", "workers", "nodes", "worker"]
            .map(String::from)
            .to_vec()
    }
    fn default_load_balancers() -> Vec<String> {
        [
            "lb",
            "loadbalancers",
            "load_balancers",
            "haproxy",
            "kube_lb",
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Default for GroupNames {
    fn default() -> Self {
        GroupNames {
            control_plane: Self::default_control_plane(),
            workers: Self::default_workers(),
            load_balancers: Self::default_load_balancers(),
        }
    }
}

/// Where the remote state lives. `url` defaults to a local directory next to the
/// cluster file (`file://.kubeforge/<cluster>`); see `docs/state.md`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateSpec {
    pub url: Option<String>,
    /// S3 endpoint for MinIO and other S3-compatible stores.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing (needed by MinIO and most emulators).
    #[serde(default)]
    pub path_style: bool,
    /// Allow plain http endpoints (local emulators only).
    #[serde(default)]
    pub allow_http: bool,
    /// Name of the environment variable holding the S3 access key id (default: the
    /// usual AWS variables and files). The key itself never goes in the cluster file.
    pub access_key_id_env: Option<String>,
    /// Name of the environment variable holding the S3 secret access key.
    pub secret_access_key_env: Option<String>,
    /// AWS profile in ~/.aws/credentials or ~/.aws/config (default: $AWS_PROFILE, then
    /// `default`), when the keys are not named with the variables above.
    pub profile: Option<String>,
    /// PEM file of the CA that signs the S3 endpoint's certificate (MinIO with its own
    /// CA), relative to the cluster file.
    pub ca_bundle: Option<std::path::PathBuf>,
    #[serde(default)]
    pub encryption: EncryptionSpec,
}

/// Where the age key for the state's secrets comes from. Unset:
/// $KUBEFORGE_STATE_KEY_FILE, $KUBEFORGE_STATE_KEY, $KUBEFORGE_STATE_PASSPHRASE, in
/// that order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EncryptionSpec {
    /// File holding an age X25519 identity (relative to the cluster file; `~/` is the
    /// home directory).
    pub key_file: Option<std::path::PathBuf>,
    /// Environment variable holding an age identity.
    pub key_env: Option<String>,
    /// Environment variable holding a passphrase.
    pub passphrase_env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodePools {
    #[serde(default = "Pool::control_plane_default")]
    pub control_plane: Pool,
    #[serde(default)]
    pub workers: Pool,
    #[serde(default)]
    pub load_balancers: Pool,
}

impl Default for NodePools {
    fn default() -> Self {
        NodePools {
            control_plane: Pool::control_plane_default(),
            workers: Pool::default(),
            load_balancers: Pool::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pool {
    /// Number of machines. For the static provider it may be left out: the inventory
    /// decides; when given, it must match the inventory.
    pub count: Option<u32>,
    /// Node labels, set by kubelet when the node registers (`--node-labels` in the
    /// kubeadm init/join config; inventory hosts add their own on top). Keys in the
    /// kubernetes.io and k8s.io namespaces are refused except the few kubelet may set
    /// (kubelet would not start); the load-balancer pool may have none (no kubelet).
    /// Changing them later does not relabel nodes that already joined.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Extra block devices (bytes) the docker provider attaches, e.g. for Rook-Ceph.
    #[serde(default)]
    pub extra_disks: Vec<String>,
}

impl Pool {
    fn control_plane_default() -> Pool {
        Pool {
            count: Some(3),
            ..Pool::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Networking {
    #[serde(default = "Networking::default_pod_subnet")]
    pub pod_subnet: String,
    #[serde(default = "Networking::default_service_subnet")]
    pub service_subnet: String,
    /// The subnet the nodes' addresses (and the VIP) live in. Derived for the docker
    /// provider; required for a VIP on the static provider.
    pub node_subnet: Option<String>,
    #[serde(default = "Networking::default_dns_domain")]
    pub dns_domain: String,
    #[serde(default)]
    pub cni: Cni,
    /// Port the kube-apiserver binds on each control-plane node.
    #[serde(default = "Networking::default_api_server_port")]
    pub api_server_port: u16,
}

impl Networking {
    fn default_pod_subnet() -> String {
        "10.244.0.0/16".into()
    }
    fn default_service_subnet() -> String {
        "10.96.0.0/12".into()
    }
    fn default_dns_domain() -> String {
        "cluster.local".into()
    }
    fn default_api_server_port() -> u16 {
        6443
    }
}

impl Default for Networking {
    fn default() -> Self {
        Networking {
            pod_subnet: Self::default_pod_subnet(),
            service_subnet: Self::default_service_subnet(),
            node_subnet: None,
            dns_domain: Self::default_dns_domain(),
            cni: Cni::default(),
            api_server_port: Self::default_api_server_port(),
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Cni {
    /// kubeforge's own pod network: one pod /24 per node on a bridge (the CNI bridge
    /// plugin) and a VXLAN overlay between the node addresses (UDP 8472), set up by a
    /// script and a systemd unit on each node (works offline, no images needed; see
    /// docs/networking.md).
    #[default]
    Bridge,
    /// Flannel (vxlan backend) from its pinned upstream manifest, applied through the
    /// API with `podSubnet` as its network (its images must be pullable).
    Flannel,
    /// Calico from its pinned upstream manifest (Kubernetes 1.34-1.36 only), with
    /// `podSubnet` as its IPv4 pool.
    Calico,
    /// No CNI: the operator installs one.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(rename = "type", default)]
    pub kind: LoadBalancerType,
    /// Where HAProxy + keepalived run: dedicated load-balancer nodes (the default when
    /// the loadBalancers pool is not empty) or every control-plane node.
    pub placement: Option<Placement>,
    /// Virtual IP held by keepalived. Derived for the docker provider.
    pub vip: Option<String>,
    /// Frontend port. Default 6443 on dedicated nodes, 8443 on control-plane nodes
    /// (the apiserver already binds 6443 there).
    pub port: Option<u16>,
    /// Interface keepalived binds the VIP to.
    #[serde(default = "LoadBalancer::default_interface")]
    pub interface: String,
    #[serde(default = "LoadBalancer::default_router_id")]
    pub virtual_router_id: u8,
    #[serde(default)]
    pub health_check: HealthCheck,
    /// `host:port` of a load balancer kubeforge does not manage (type `external`).
    pub endpoint: Option<String>,
    /// Extra names and addresses for the apiserver certificate.
    #[serde(default)]
    pub cert_sans: Vec<String>,
    /// AWS and Hetzner: move the VIP through the cloud's API when another load balancer
    /// takes it over (a keepalived notify script on the load balancers). Their networks
    /// route an address only to the interface the API gave it to.
    pub failover: Option<Failover>,
}

/// Credentials of the VIP failover script on the load balancers (docs/providers.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Failover {
    /// AWS: the variable (on the machine running kubeforge) holding the access key id of
    /// a narrowly scoped key (ec2:DescribeNetworkInterfaces, ec2:AssignPrivateIpAddresses,
    /// ec2:UnassignPrivateIpAddresses), written 0600 to the load balancers. Unset: the
    /// load balancers' instance role (IMDSv2).
    pub access_key_id_env: Option<String>,
    /// AWS: the variable holding that key's secret.
    pub secret_access_key_env: Option<String>,
    /// Hetzner: the variable holding the API token the load balancers use (default the
    /// provider's `tokenEnv`).
    pub token_env: Option<String>,
}

impl LoadBalancer {
    fn default_interface() -> String {
        "eth0".into()
    }
    fn default_router_id() -> u8 {
        51
    }
}

impl Default for LoadBalancer {
    fn default() -> Self {
        LoadBalancer {
            kind: LoadBalancerType::default(),
            placement: None,
            vip: None,
            port: None,
            interface: Self::default_interface(),
            virtual_router_id: Self::default_router_id(),
            health_check: HealthCheck::default(),
            endpoint: None,
            cert_sans: Vec::new(),
            failover: None,
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancerType {
    /// HAProxy in front of the apiservers, a keepalived VRRP VIP in front of HAProxy.
    #[default]
    HaproxyKeepalived,
    /// A load balancer kubeforge does not manage; `endpoint` names it.
    External,
    /// The cloud's own load balancer, made and deleted with the machines (AWS: an
    /// internal Network Load Balancer; Hetzner: a Load Balancer on the private network)
    /// at the fixed private address `vip` (default the subnet's last usable address),
    /// TCP `port` (default 6443) to every control plane's apiserver, health-checked.
    Cloud,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    Dedicated,
    ControlPlane,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum HealthCheck {
    /// `GET /readyz` over TLS (certificate not verified: the check is for liveness).
    #[default]
    HttpsReadyz,
    /// Plain TCP connect.
    Tcp,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Addons {
    pub metallb: Option<MetalLb>,
    pub ingress: Option<Ingress>,
    pub rook_ceph: Option<RookCeph>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetalLb {
    pub version: Option<String>,
    #[serde(default)]
    pub mode: MetalLbMode,
    #[serde(default)]
    pub pools: Vec<AddressPool>,
    pub bgp: Option<Bgp>,
    /// L2 mode: limit announcements to these interfaces.
    #[serde(default)]
    pub interfaces: Vec<String>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MetalLbMode {
    #[default]
    L2,
    Bgp,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddressPool {
    pub name: String,
    /// CIDRs (`203.0.113.0/27`) or ranges (`203.0.113.10-203.0.113.20`).
    pub addresses: Vec<String>,
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    #[serde(default)]
    pub avoid_buggy_ips: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bgp {
    #[serde(rename = "myASN")]
    pub my_asn: u32,
    #[serde(default)]
    pub peers: Vec<BgpPeer>,
    /// BGP communities to attach, e.g. `64512:100`.
    #[serde(default)]
    pub communities: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpPeer {
    pub address: String,
    #[serde(rename = "asn")]
    pub asn: u32,
    pub port: Option<u16>,
    /// Name of a Secret holding the session password (never the password itself).
    pub password_secret: Option<String>,
    /// Only nodes with these host names peer with this router (default: all).
    #[serde(default)]
    pub nodes: Vec<String>,
    pub hold_time: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ingress {
    #[serde(default)]
    pub controller: IngressController,
    pub version: Option<String>,
    /// MetalLB pool the ingress Service takes its address from.
    pub pool: Option<String>,
    /// Fixed address for the ingress Service (must be inside a MetalLB pool).
    pub load_balancer_ip: Option<String>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum IngressController {
    /// Contour with Envoy: Ingress, HTTPProxy and Gateway API.
    #[default]
    Contour,
    /// Legacy opt-in: ingress-nginx was retired upstream in March 2026.
    IngressNginx,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RookCeph {
    pub version: Option<String>,
    /// Hosts and their raw devices. Empty means every worker with `deviceFilter`.
    #[serde(default)]
    pub nodes: Vec<CephNode>,
    /// Regular expression for raw devices on every storage node, e.g. `^sd[b-d]`.
    pub device_filter: Option<String>,
    #[serde(default = "RookCeph::default_mon_count")]
    pub mon_count: u32,
    #[serde(default)]
    pub store_type: CephStoreType,
    #[serde(default = "RookCeph::default_data_dir")]
    pub data_dir_host_path: String,
}

impl RookCeph {
    fn default_mon_count() -> u32 {
        3
    }
    fn default_data_dir() -> String {
        "/var/lib/rook".into()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CephNode {
    pub name: String,
    #[serde(default)]
    pub devices: Vec<String>,
    pub device_filter: Option<String>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CephStoreType {
    #[default]
    Bluestore,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SshSpec {
    #[serde(default = "SshSpec::default_user")]
    pub user: String,
    #[serde(default = "SshSpec::default_port")]
    pub port: u16,
    /// Private key file. For the docker provider kubeforge makes a cluster key when
    /// neither this nor `agent` is set.
    pub key_file: Option<String>,
    /// Authenticate with the keys of a running ssh-agent (SSH_AUTH_SOCK).
    #[serde(default)]
    pub agent: bool,
    /// Which of the agent's keys to use (the others are never offered, so sshd's
    /// MaxAuthTries is not spent on them): its fingerprint (`SHA256:...`, as `ssh-add -l`
    /// prints it), its comment, or its public key file (`~/.ssh/id_prod.pub`).
    pub agent_key: Option<String>,
    pub bastion: Option<Bastion>,
    /// An OpenSSH client configuration to read for the static provider's hosts (e.g.
    /// `~/.ssh/config`): the `User`, `Port`, `IdentityFile` and `ProxyJump` of the
    /// `Host` blocks matching a host's name or address, where the inventory gives none.
    pub config_file: Option<String>,
    #[serde(default = "SshSpec::default_connect_timeout")]
    pub connect_timeout_seconds: u32,
    /// Limit of one ordinary remote command (default 120 s): a hung command fails with
    /// the host, the command and this limit instead of blocking `apply` forever.
    #[serde(default = "SshSpec::default_command_timeout")]
    pub command_timeout_seconds: u32,
    /// Limit of the long ones (kubeadm init/join/upgrade, image imports, package
    /// installs, etcd snapshots) and of file transfers (default 600 s).
    #[serde(default = "SshSpec::default_long_command_timeout")]
    pub long_command_timeout_seconds: u32,
    /// Keep each host's connection open this long after its last use (default 60 s),
    /// in a background kubeforge process only this user can reach, so that a run
    /// within that time skips the SSH handshake (OpenSSH's ControlPersist). 0: every
    /// run connects and disconnects itself.
    #[serde(default = "SshSpec::default_persist")]
    pub persist_seconds: u32,
}

impl SshSpec {
    fn default_user() -> String {
        "root".into()
    }
    fn default_port() -> u16 {
        22
    }
    fn default_connect_timeout() -> u32 {
        10
    }
    fn default_command_timeout() -> u32 {
        crate::transport::DEFAULT_COMMAND_TIMEOUT.as_secs() as u32
    }
    fn default_long_command_timeout() -> u32 {
        crate::transport::DEFAULT_LONG_COMMAND_TIMEOUT.as_secs() as u32
    }
    fn default_persist() -> u32 {
        60
    }

    /// The time limits of remote commands: (ordinary, long and transfers).
    pub fn command_timeouts(&self) -> (std::time::Duration, std::time::Duration) {
        (
            std::time::Duration::from_secs(self.command_timeout_seconds.into()),
            std::time::Duration::from_secs(self.long_command_timeout_seconds.into()),
        )
    }
}

impl Default for SshSpec {
    fn default() -> Self {
        SshSpec {
            user: Self::default_user(),
            port: Self::default_port(),
            key_file: None,
            agent: false,
            agent_key: None,
            bastion: None,
            config_file: None,
            connect_timeout_seconds: Self::default_connect_timeout(),
            command_timeout_seconds: Self::default_command_timeout(),
            long_command_timeout_seconds: Self::default_long_command_timeout(),
            persist_seconds: Self::default_persist(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bastion {
    pub host: String,
    #[serde(default = "SshSpec::default_port")]
    pub port: u16,
    pub user: Option<String>,
    pub key_file: Option<String>,
    /// Jump hosts on the way to this one, in order (OpenSSH `ProxyJump a,b`): kubeforge
    /// connects to the first directly, to each next one through the one before, and to
    /// this bastion through the last. Each hop has host, port, user and keyFile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<Bastion>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Artifacts {
    /// http(s) URL or local directory replacing the upstream download sites.
    pub mirror: Option<String>,
    /// Registry kubeadm pulls control-plane images from (default `k8s.gcr.io` before
    /// 1.25, `registry.k8s.io` after).
    pub image_repository: Option<String>,
    /// Allow a plain http:// `mirror` (binaries downloaded without TLS; they are still
    /// checked against their sha256, but a mirror on a network you do not control
    /// should be https).
    #[serde(default)]
    pub allow_http: bool,
}
