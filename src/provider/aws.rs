//! AWS EC2: machines are instances in a VPC subnet kubeforge creates (or the region's
//! default VPC), behind one security group, logging in with an imported key pair.
//!
//! Talks the EC2 Query API (`Action=...&Version=2016-11-15`, XML answers) over reqwest,
//! signed with SigV4 (`aws-sigv4`); see `docs/providers.md` for why not `aws-sdk-ec2`.
//! Everything it creates carries the tag `kubeforge:cluster=<cluster>` and a `Name`;
//! it finds things by those tags before creating anything and deletes only what carries
//! them. `RunInstances` gets a client token derived from the cluster, the machine and the
//! subnet/security group ids, so a retried call never makes a second instance.

use super::cloud::{self, Attempt, CloudContext, Retry, Secret, TAG_CLUSTER, TAG_ROLE};
use super::{Machine, MachineRole, MachineSpec, MachineState, Provider, ProviderError, Resource};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

mod nlb;

const P: &str = "aws";
const API_VERSION: &str = "2016-11-15";

/// `spec.provider.aws` in the cluster file.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsSpec {
    /// AMI id of the machines' image (any image with cloud-init and sshd).
    pub image: String,
    /// Region (default $AWS_REGION, $AWS_DEFAULT_REGION, us-east-1).
    pub region: Option<String>,
    /// EC2 endpoint, for emulators (moto) and private endpoints (default
    /// $AWS_ENDPOINT_URL_EC2, $AWS_ENDPOINT_URL, then `https://ec2.<region>.amazonaws.com`).
    pub endpoint: Option<String>,
    /// Credentials profile in ~/.aws/credentials (default $AWS_PROFILE, `default`);
    /// used when AWS_ACCESS_KEY_ID is not set.
    pub profile: Option<String>,
    /// Availability zone of the subnet (default `<region>a`).
    pub availability_zone: Option<String>,
    #[serde(default = "AwsSpec::default_instance_type")]
    pub instance_type: String,
    /// Instance type of control-plane machines (default `instanceType`).
    pub control_plane_instance_type: Option<String>,
    /// Instance type of load-balancer machines (default `instanceType`).
    pub load_balancer_instance_type: Option<String>,
    /// CIDR of the VPC kubeforge creates (default 10.42.0.0/16).
    pub vpc_cidr: Option<String>,
    /// The machines' subnet, inside the VPC (default 10.42.0.0/24). With
    /// `useDefaultVpc` it must be the CIDR of the zone's default subnet.
    pub subnet: Option<String>,
    /// Use the region's default VPC and the zone's default subnet instead of creating a
    /// VPC, subnet and internet gateway.
    #[serde(default)]
    pub use_default_vpc: bool,
    /// Sources allowed to reach SSH, the apiserver and the load-balancer port
    /// (default 0.0.0.0/0).
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// Root volume size in GiB (default 20).
    pub root_volume_gb: Option<u32>,
    /// IAM instance profile of the load-balancer instances: the role keepalived's
    /// failover script uses (`loadBalancer.failover` without keys) to move the VIP.
    /// Attached to new instances and to running ones that have none.
    pub load_balancer_instance_profile: Option<String>,
    /// Elastic Load Balancing endpoint, for `loadBalancer.type: cloud` (default
    /// $AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2, $AWS_ENDPOINT_URL, then
    /// `https://elasticloadbalancing.<region>.amazonaws.com`).
    pub elb_endpoint: Option<String>,
    /// Allow a plain http:// `endpoint` (the credentials travel in clear: local
    /// emulators only).
    #[serde(default)]
    pub allow_http: bool,
}

impl AwsSpec {
    pub const DEFAULT_SUBNET: &'static str = "10.42.0.0/24";
    pub const DEFAULT_VPC_CIDR: &'static str = "10.42.0.0/16";
    fn default_instance_type() -> String {
        "t3.medium".into()
    }
}

/// AWS credentials; `Debug` shows the key id's first characters only.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.access_key_id.chars().take(4).collect();
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &format!("{shown}…"))
            .field("secret_access_key", &self.secret_access_key)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl AwsCredentials {
    /// The environment, else the profile (`profile`, $AWS_PROFILE, `default`) in the
    /// shared credentials or config file: [`crate::aws_credentials::load`].
    pub fn load(profile: Option<&str>) -> Result<AwsCredentials, ProviderError> {
        let err = |message: String| ProviderError::Credentials {
            provider: P,
            message,
        };
        match crate::aws_credentials::load(profile).map_err(err)? {
            Some(k) => Ok(AwsCredentials {
                access_key_id: k.access_key_id,
                secret_access_key: Secret::new(k.secret_access_key),
                session_token: k.session_token.map(Secret::new),
            }),
            None => Err(err(format!(
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile `default` in {} (or name one: spec.provider.aws.profile, $AWS_PROFILE)",
                crate::aws_credentials::credentials_file()
                    .map(|f| f.display().to_string())
                    .unwrap_or_else(|| "~/.aws/credentials".into())
            ))),
        }
    }
}

/// A signed EC2 Query API client.
#[derive(Debug, Clone)]
pub struct Ec2Client {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    creds: Result<AwsCredentials, String>,
    retry: Retry,
    /// The signing name and API version: `ec2`/2016-11-15, or `elasticloadbalancing`/
    /// 2015-12-01 for the Network Load Balancer (same Query protocol).
    service: &'static str,
    version: &'static str,
}

/// The `<Errors><Error><Code>…</Code><Message>…</Message>` of an EC2 error answer.
fn parse_error(body: &str) -> (String, String) {
    let mut reader = quick_xml::Reader::from_str(body);
    let (mut code, mut message) = (String::new(), String::new());
    let mut current: Option<Vec<u8>> = None;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e)) => current = Some(e.name().as_ref().to_vec()),
            Ok(quick_xml::events::Event::Text(t)) => {
                let text = t.decode().map(|c| c.into_owned()).unwrap_or_default();
                match current.as_deref() {
                    Some(b"Code") if code.is_empty() => code = text,
                    Some(b"Message") if message.is_empty() => message = text,
                    _ => {}
                }
            }
            Ok(quick_xml::events::Event::End(_)) => current = None,
            Ok(quick_xml::events::Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    (code, message)
}

/// Throttled: the request was refused before anything was done.
fn throttled(status: u16, code: &str) -> bool {
    status == 429
        || matches!(
            code,
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled"
        )
}

fn retryable(status: u16, code: &str) -> bool {
    throttled(status, code)
        || matches!(status, 500 | 502 | 503 | 504)
        || matches!(code, "ServiceUnavailable" | "Unavailable" | "InternalError")
}

/// Whether repeating `action` after an answer that may hide a done change (a 5xx, a
/// connection cut after sending) could make a second resource: creations without an
/// idempotency token. `RunInstances` carries a client token.
fn creates_without_token(action: &str) -> bool {
    (action.starts_with("Create") || action.starts_with("Import")) && action != "CreateTags"
}

impl Ec2Client {
    pub fn new(
        endpoint: String,
        region: String,
        creds: Result<AwsCredentials, ProviderError>,
    ) -> Result<Ec2Client, ProviderError> {
        Ok(Ec2Client {
            http: cloud::http_client(P)?,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region,
            creds: creds.map_err(|e| e.to_string()),
            retry: Retry::default(),
            service: "ec2",
            version: API_VERSION,
        })
    }

    /// The same client speaking to another Query API (signing name, version, endpoint).
    pub fn for_service(
        &self,
        service: &'static str,
        version: &'static str,
        endpoint: String,
    ) -> Ec2Client {
        Ec2Client {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            service,
            version,
            ..self.clone()
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn sign(
        &self,
        creds: &AwsCredentials,
        body: &str,
        host: &str,
    ) -> Result<Vec<(String, String)>, ProviderError> {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let identity = aws_credential_types::Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose().to_string(),
            creds.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "kubeforge",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| ProviderError::Credentials {
                provider: P,
                message: format!("cannot sign the request: {e}"),
            })?
            .into();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let headers = [("host", host), ("content-type", content_type)];
        let url = format!("{}/", self.endpoint);
        let req = SignableRequest::new(
            "POST",
            &url,
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| ProviderError::Credentials {
            provider: P,
            message: format!("cannot sign the request: {e}"),
        })?;
        let (instructions, _) = sign(req, &params)
            .map_err(|e| ProviderError::Credentials {
                provider: P,
                message: format!("cannot sign the request: {e}"),
            })?
            .into_parts();
        let (signed, _) = instructions.into_parts();
        let mut out: Vec<(String, String)> = signed
            .into_iter()
            .map(|h| (h.name().to_string(), h.value().to_string()))
            .collect();
        out.push(("content-type".into(), content_type.into()));
        Ok(out)
    }

    /// Call `action` with `params`; `resource` names what it is about, for errors.
    /// Throttling and unavailable answers are retried with backoff.
    pub async fn call(
        &self,
        action: &str,
        resource: &str,
        params: &[(String, String)],
    ) -> Result<String, ProviderError> {
        let creds = self
            .creds
            .as_ref()
            .map_err(|m| ProviderError::Credentials {
                provider: P,
                message: m.trim_start_matches("aws credentials: ").to_string(),
            })?;
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", action);
            form.append_pair("Version", self.version);
            for (k, v) in params {
                form.append_pair(k, v);
            }
            form.finish()
        };
        let url = format!("{}/", self.endpoint);
        let host = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_string(),
                })
            })
            .ok_or_else(|| ProviderError::Config {
                provider: P,
                message: format!("`{}` is not an endpoint URL", self.endpoint),
            })?;
        tracing::debug!(action, resource, service = self.service, "aws call");
        self.retry
            .run(|| {
                let body = body.clone();
                let url = url.clone();
                let host = host.clone();
                async move {
                    let headers = match self.sign(creds, &body, &host) {
                        Ok(h) => h,
                        Err(e) => return Attempt::Done(Err(e)),
                    };
                    let mut req = self.http.post(&url).body(body);
                    for (k, v) in headers {
                        req = req.header(k, v);
                    }
                    let resp = match req.send().await {
                        Ok(r) => r,
                        Err(source) => {
                            // Not sent at all: always safe to repeat.
                            let unsent = source.is_connect();
                            let e = ProviderError::Unreachable {
                                provider: P,
                                operation: action.to_string(),
                                resource: resource.to_string(),
                                endpoint: self.endpoint.clone(),
                                source,
                            };
                            if unsent || !creates_without_token(action) {
                                return Attempt::Again(e, None);
                            }
                            return Attempt::Done(Err(e));
                        }
                    };
                    let status = resp.status().as_u16();
                    let text = match resp.text().await {
                        Ok(t) => t,
                        Err(source) => {
                            return Attempt::Again(
                                ProviderError::Unreachable {
                                    provider: P,
                                    operation: action.to_string(),
                                    resource: resource.to_string(),
                                    endpoint: self.endpoint.clone(),
                                    source,
                                },
                                None,
                            )
                        }
                    };
                    if (200..300).contains(&status) {
                        return Attempt::Done(Ok(text));
                    }
                    let (code, message) = parse_error(&text);
                    let e = ProviderError::Api {
                        provider: P,
                        operation: action.to_string(),
                        resource: resource.to_string(),
                        status,
                        code: if code.is_empty() {
                            format!("HTTP{status}")
                        } else {
                            code.clone()
                        },
                        message: if message.is_empty() {
                            text.chars().take(200).collect()
                        } else {
                            message
                        },
                    };
                    // A create that may have happened is not repeated: the next run finds
                    // it by its tag (and `destroy` removes every tagged copy).
                    if throttled(status, &code)
                        || (retryable(status, &code) && !creates_without_token(action))
                    {
                        Attempt::Again(e, None)
                    } else {
                        Attempt::Done(Err(e))
                    }
                }
            })
            .await
    }

    /// Call and decode the XML answer into `T`.
    pub async fn call_xml<T: for<'de> Deserialize<'de>>(
        &self,
        action: &str,
        resource: &str,
        params: &[(String, String)],
    ) -> Result<T, ProviderError> {
        let text = self.call(action, resource, params).await?;
        quick_xml::de::from_str(&text).map_err(|e| ProviderError::BadResponse {
            provider: P,
            operation: action.to_string(),
            resource: resource.to_string(),
            detail: e.to_string(),
        })
    }
}

// ---- answers (only the fields kubeforge reads) ----

#[derive(Debug, Deserialize, Clone)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct Items<T> {
    #[serde(default)]
    item: Vec<T>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items { item: Vec::new() }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Tag {
    key: String,
    #[serde(default)]
    value: String,
}

fn tag<'a>(tags: &'a Items<Tag>, key: &str) -> Option<&'a str> {
    tags.item
        .iter()
        .find(|t| t.key == key)
        .map(|t| t.value.as_str())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeInstances {
    #[serde(default)]
    reservation_set: Items<Reservation>,
    next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    #[serde(default)]
    instances_set: Items<Instance>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Instance {
    instance_id: String,
    instance_state: InstanceState,
    private_ip_address: Option<String>,
    ip_address: Option<String>,
    #[serde(default)]
    tag_set: Items<Tag>,
    #[serde(default)]
    network_interface_set: Items<NetworkInterface>,
    #[serde(default)]
    iam_instance_profile: Option<IamProfile>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct IamProfile {}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct NetworkInterface {
    network_interface_id: String,
    #[serde(default)]
    private_ip_addresses_set: Items<PrivateIp>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct PrivateIp {
    private_ip_address: String,
}

#[derive(Debug, Deserialize, Clone)]
struct InstanceState {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunInstances {
    #[serde(default)]
    instances_set: Items<Instance>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeVpcs {
    #[serde(default)]
    vpc_set: Items<Vpc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vpc {
    vpc_id: String,
}

#[derive(Debug, Deserialize)]
struct CreateVpc {
    vpc: Vpc,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeSubnets {
    #[serde(default)]
    subnet_set: Items<Subnet>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subnet {
    subnet_id: String,
    #[serde(default)]
    cidr_block: String,
}

#[derive(Debug, Deserialize)]
struct CreateSubnet {
    subnet: Subnet,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeGateways {
    #[serde(default)]
    internet_gateway_set: Items<Gateway>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Gateway {
    internet_gateway_id: String,
    #[serde(default)]
    attachment_set: Items<Attachment>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    #[serde(default)]
    vpc_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateGateway {
    internet_gateway: Gateway,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeRouteTables {
    #[serde(default)]
    route_table_set: Items<RouteTable>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteTable {
    route_table_id: String,
    #[serde(default)]
    route_set: Items<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Route {
    #[serde(default)]
    destination_cidr_block: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeGroups {
    #[serde(default)]
    security_group_info: Items<Group>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Group {
    group_id: String,
    #[serde(default)]
    group_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateGroup {
    group_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeKeys {
    #[serde(default)]
    key_set: Items<Key>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Key {
    key_name: String,
    key_pair_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeVolumes {
    #[serde(default)]
    volume_set: Items<Volume>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    volume_id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    attachment_set: Items<VolumeAttachment>,
    #[serde(default)]
    tag_set: Items<Tag>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeAttachment {
    #[serde(default)]
    device: String,
}

// ---- request parameters ----

type Params = Vec<(String, String)>;

fn p(k: impl Into<String>, v: impl Into<String>) -> (String, String) {
    (k.into(), v.into())
}

/// `Filter.N.Name` / `Filter.N.Value.M`.
fn filters(list: &[(&str, &[&str])]) -> Params {
    let mut out = Vec::new();
    for (i, (name, values)) in list.iter().enumerate() {
        let n = i + 1;
        out.push(p(format!("Filter.{n}.Name"), *name));
        for (j, v) in values.iter().enumerate() {
            out.push(p(format!("Filter.{n}.Value.{}", j + 1), *v));
        }
    }
    out
}

/// `TagSpecification.N.ResourceType` with the cluster tag, `Name` and extra tags.
fn tag_spec(
    n: usize,
    resource_type: &str,
    cluster: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> Params {
    let mut out = vec![p(
        format!("TagSpecification.{n}.ResourceType"),
        resource_type,
    )];
    let tags = [(TAG_CLUSTER, cluster), ("Name", name)]
        .into_iter()
        .chain(extra.iter().copied());
    for (i, (k, v)) in tags.enumerate() {
        out.push(p(format!("TagSpecification.{n}.Tag.{}.Key", i + 1), k));
        out.push(p(format!("TagSpecification.{n}.Tag.{}.Value", i + 1), v));
    }
    out
}

/// Where the machines go: ids of what `ensure_network` found or made.
#[derive(Debug, Clone)]
struct Network {
    vpc_id: String,
    subnet_id: String,
    group_id: String,
    key_name: String,
}

pub struct AwsProvider {
    spec: AwsSpec,
    ctx: CloudContext,
    client: Ec2Client,
    /// The Elastic Load Balancing (v2) API: the Network Load Balancer of `loadBalancer.type: cloud`.
    elb: Ec2Client,
    zone: String,
}

/// The region: the spec's, else $AWS_REGION, $AWS_DEFAULT_REGION, us-east-1.
pub fn region_of(spec: &AwsSpec) -> String {
    spec.region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            std::env::var("AWS_DEFAULT_REGION")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| "us-east-1".into())
}

/// The endpoint: the spec's, else $AWS_ENDPOINT_URL_EC2, $AWS_ENDPOINT_URL, AWS's own.
pub fn endpoint_of(spec: &AwsSpec, region: &str) -> String {
    endpoint_from(
        spec.endpoint.as_deref(),
        &["AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"],
        || format!("https://ec2.{region}.amazonaws.com"),
    )
}

/// An endpoint: the cluster file's, else the first of `vars` that is set and not
/// empty, else `default`.
fn endpoint_from(written: Option<&str>, vars: &[&str], default: impl FnOnce() -> String) -> String {
    written
        .map(str::to_string)
        .or_else(|| {
            vars.iter()
                .find_map(|v| std::env::var(v).ok().filter(|v| !v.is_empty()))
        })
        .unwrap_or_else(default)
}

fn state_of(name: &str) -> MachineState {
    match name {
        "pending" => MachineState::Created,
        "running" => MachineState::Running,
        "stopped" => MachineState::Stopped,
        other => MachineState::Other(other.to_string()),
    }
}

/// Device names for extra EBS volumes: /dev/sdf, /dev/sdg, ...
fn device_name(i: usize) -> String {
    let letter = (b'f' + (i as u8).min(20)) as char;
    format!("/dev/sd{letter}")
}

impl AwsProvider {
    /// Set up the client; credentials are read now but only needed (and their absence
    /// only reported) when the API is called, so an offline plan works without them.
    pub fn new(spec: &AwsSpec, ctx: CloudContext) -> Result<AwsProvider, ProviderError> {
        Self::with_credentials(spec, ctx, AwsCredentials::load(spec.profile.as_deref()))
    }

    /// With credentials given by the caller (tests, or a caller that has its own).
    pub fn with_credentials(
        spec: &AwsSpec,
        ctx: CloudContext,
        creds: Result<AwsCredentials, ProviderError>,
    ) -> Result<AwsProvider, ProviderError> {
        let region = region_of(spec);
        let endpoint = endpoint_of(spec, &region);
        cloud::check_endpoint(P, &endpoint, spec.allow_http)?;
        let zone = spec
            .availability_zone
            .clone()
            .unwrap_or_else(|| format!("{region}a"));
        let elb_endpoint = nlb::endpoint_of(spec, &region);
        if ctx.api_lb.is_some() {
            cloud::check_endpoint(P, &elb_endpoint, spec.allow_http)?;
        }
        let client = Ec2Client::new(endpoint, region, creds)?;
        Ok(AwsProvider {
            spec: spec.clone(),
            elb: client.for_service("elasticloadbalancing", nlb::ELB_VERSION, elb_endpoint),
            client,
            ctx,
            zone,
        })
    }

    pub fn client(&self) -> &Ec2Client {
        &self.client
    }

    /// Change the retry policy (tests shorten it).
    pub fn set_retry(&mut self, retry: Retry) {
        self.elb.retry = retry;
        self.client.retry = retry;
    }

    fn cluster(&self) -> &str {
        &self.ctx.cluster
    }

    fn vpc_name(&self) -> String {
        self.cluster().to_string()
    }
    fn subnet_name(&self) -> String {
        format!("{}-nodes", self.cluster())
    }
    fn group_name(&self) -> String {
        format!("{}-nodes", self.cluster())
    }
    fn key_name(&self) -> String {
        format!("kubeforge-{}", self.cluster())
    }

    fn cluster_filter(&self) -> (String, [String; 1]) {
        (format!("tag:{TAG_CLUSTER}"), [self.cluster().to_string()])
    }

    /// Filters for `tag:kubeforge:cluster=<cluster>` plus `extra`.
    fn tagged(&self, extra: &[(&str, &[&str])]) -> Params {
        let (k, v) = self.cluster_filter();
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        let mut all: Vec<(&str, &[&str])> = vec![(k.as_str(), &v[..])];
        all.extend_from_slice(extra);
        filters(&all)
    }

    // ---- network ----

    async fn find_vpc(&self) -> Result<Option<Vpc>, ProviderError> {
        let params = if self.spec.use_default_vpc {
            filters(&[("isDefault", &["true"])])
        } else {
            self.tagged(&[])
        };
        let r: DescribeVpcs = self
            .client
            .call_xml("DescribeVpcs", &self.vpc_name(), &params)
            .await?;
        Ok(r.vpc_set.item.into_iter().next())
    }

    async fn find_subnet(&self, vpc_id: &str) -> Result<Option<Subnet>, ProviderError> {
        let params = if self.spec.use_default_vpc {
            filters(&[
                ("vpc-id", &[vpc_id]),
                ("default-for-az", &["true"]),
                ("availability-zone", &[self.zone.as_str()]),
            ])
        } else {
            self.tagged(&[("vpc-id", &[vpc_id])])
        };
        let r: DescribeSubnets = self
            .client
            .call_xml("DescribeSubnets", &self.subnet_name(), &params)
            .await?;
        Ok(r.subnet_set.item.into_iter().next())
    }

    async fn find_gateway(&self) -> Result<Option<Gateway>, ProviderError> {
        let r: DescribeGateways = self
            .client
            .call_xml(
                "DescribeInternetGateways",
                &self.vpc_name(),
                &self.tagged(&[]),
            )
            .await?;
        Ok(r.internet_gateway_set.item.into_iter().next())
    }

    async fn find_group(&self, vpc_id: Option<&str>) -> Result<Option<Group>, ProviderError> {
        let params = match vpc_id {
            Some(v) => self.tagged(&[("vpc-id", &[v])]),
            None => self.tagged(&[]),
        };
        let r: DescribeGroups = self
            .client
            .call_xml("DescribeSecurityGroups", &self.group_name(), &params)
            .await?;
        Ok(r.security_group_info.item.into_iter().next())
    }

    async fn find_key(&self) -> Result<Option<Key>, ProviderError> {
        let params = vec![p("KeyName.1", self.key_name())];
        match self
            .client
            .call_xml::<DescribeKeys>("DescribeKeyPairs", &self.key_name(), &params)
            .await
        {
            Ok(r) => Ok(r.key_set.item.into_iter().next()),
            Err(e) if e.api_code() == Some("InvalidKeyPair.NotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The VPC, subnet, internet gateway, security group (with its rules) and key pair,
    /// each found by its tag or created.
    async fn ensure_network(&self) -> Result<Network, ProviderError> {
        let subnet_cidr = self.ctx.subnet.to_string();
        let vpc = match self.find_vpc().await? {
            Some(v) => v,
            None if self.spec.use_default_vpc => {
                return Err(ProviderError::Config {
                    provider: P,
                    message: format!(
                        "useDefaultVpc: region {} has no default VPC",
                        self.client.region
                    ),
                })
            }
            None => {
                let mut params = vec![p(
                    "CidrBlock",
                    self.spec
                        .vpc_cidr
                        .clone()
                        .unwrap_or_else(|| AwsSpec::DEFAULT_VPC_CIDR.into()),
                )];
                params.extend(tag_spec(1, "vpc", self.cluster(), &self.vpc_name(), &[]));
                let r: CreateVpc = self
                    .client
                    .call_xml("CreateVpc", &self.vpc_name(), &params)
                    .await?;
                r.vpc
            }
        };
        let subnet = match self.find_subnet(&vpc.vpc_id).await? {
            Some(s) => s,
            None if self.spec.use_default_vpc => {
                return Err(ProviderError::Config {
                    provider: P,
                    message: format!(
                        "useDefaultVpc: the default VPC {} has no default subnet in {}",
                        vpc.vpc_id, self.zone
                    ),
                })
            }
            None => {
                let mut params = vec![
                    p("VpcId", vpc.vpc_id.clone()),
                    p("CidrBlock", subnet_cidr.clone()),
                    p("AvailabilityZone", self.zone.clone()),
                ];
                params.extend(tag_spec(
                    1,
                    "subnet",
                    self.cluster(),
                    &self.subnet_name(),
                    &[],
                ));
                let r: CreateSubnet = self
                    .client
                    .call_xml("CreateSubnet", &self.subnet_name(), &params)
                    .await?;
                self.client
                    .call(
                        "ModifySubnetAttribute",
                        &self.subnet_name(),
                        &[
                            p("SubnetId", r.subnet.subnet_id.clone()),
                            p("MapPublicIpOnLaunch.Value", "true"),
                        ],
                    )
                    .await?;
                r.subnet
            }
        };
        if subnet.cidr_block != subnet_cidr {
            return Err(ProviderError::Config {
                provider: P,
                message: format!(
                    "subnet {} is {}, but the cluster's subnet is {subnet_cidr} (set spec.provider.aws.subnet to it)",
                    subnet.subnet_id, subnet.cidr_block
                ),
            });
        }
        if !self.spec.use_default_vpc {
            self.ensure_gateway(&vpc.vpc_id).await?;
        }
        let group_id = self.ensure_group(&vpc.vpc_id).await?;
        let key_name = self.ensure_key().await?;
        Ok(Network {
            vpc_id: vpc.vpc_id,
            subnet_id: subnet.subnet_id,
            group_id,
            key_name,
        })
    }

    /// An internet gateway attached to the VPC and the default route through it, so the
    /// machines' public addresses answer SSH.
    async fn ensure_gateway(&self, vpc_id: &str) -> Result<(), ProviderError> {
        let gw = match self.find_gateway().await? {
            Some(g) => g,
            None => {
                let params = tag_spec(1, "internet-gateway", self.cluster(), &self.vpc_name(), &[]);
                let r: CreateGateway = self
                    .client
                    .call_xml("CreateInternetGateway", &self.vpc_name(), &params)
                    .await?;
                r.internet_gateway
            }
        };
        if !gw.attachment_set.item.iter().any(|a| a.vpc_id == vpc_id) {
            self.client
                .call(
                    "AttachInternetGateway",
                    &self.vpc_name(),
                    &[
                        p("InternetGatewayId", gw.internet_gateway_id.clone()),
                        p("VpcId", vpc_id),
                    ],
                )
                .await?;
        }
        let tables: DescribeRouteTables = self
            .client
            .call_xml(
                "DescribeRouteTables",
                &self.vpc_name(),
                &filters(&[("vpc-id", &[vpc_id]), ("association.main", &["true"])]),
            )
            .await?;
        for t in tables.route_table_set.item {
            if t.route_set
                .item
                .iter()
                .any(|r| r.destination_cidr_block == "0.0.0.0/0")
            {
                continue;
            }
            self.client
                .call(
                    "CreateRoute",
                    &self.vpc_name(),
                    &[
                        p("RouteTableId", t.route_table_id),
                        p("DestinationCidrBlock", "0.0.0.0/0"),
                        p("GatewayId", gw.internet_gateway_id.clone()),
                    ],
                )
                .await?;
        }
        Ok(())
    }

    /// The security group: SSH, the apiserver and load-balancer ports from the allowed
    /// sources; VRRP (IP protocol 112), kubelet (10250), etcd (2379-2380) and the pod
    /// network's VXLAN (UDP 8472) from the group itself. Rules that exist are left alone.
    async fn ensure_group(&self, vpc_id: &str) -> Result<String, ProviderError> {
        let name = self.group_name();
        let group_id = match self.find_group(Some(vpc_id)).await? {
            Some(g) => g.group_id,
            None => {
                let mut params = vec![
                    p("GroupName", name.clone()),
                    p(
                        "GroupDescription",
                        format!("kubeforge cluster {}", self.cluster()),
                    ),
                    p("VpcId", vpc_id),
                ];
                params.extend(tag_spec(1, "security-group", self.cluster(), &name, &[]));
                let r: CreateGroup = self
                    .client
                    .call_xml("CreateSecurityGroup", &name, &params)
                    .await?;
                r.group_id
            }
        };
        for rule in self.rules(&group_id) {
            let mut params = vec![p("GroupId", group_id.clone())];
            params.extend(rule);
            match self
                .client
                .call("AuthorizeSecurityGroupIngress", &name, &params)
                .await
            {
                Ok(_) => {}
                Err(e) if e.api_code() == Some("InvalidPermission.Duplicate") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(group_id)
    }

    /// One `IpPermissions.1` parameter set per rule.
    fn rules(&self, group_id: &str) -> Vec<Params> {
        let allowed: Vec<String> = if self.spec.allowed_cidrs.is_empty() {
            vec!["0.0.0.0/0".into()]
        } else {
            self.spec.allowed_cidrs.clone()
        };
        let mut ports = vec![self.ctx.ssh_port];
        ports.extend(self.ctx.api_ports.iter().copied());
        ports.sort_unstable();
        ports.dedup();
        let mut out = Vec::new();
        for port in ports {
            let mut r = vec![
                p("IpPermissions.1.IpProtocol", "tcp"),
                p("IpPermissions.1.FromPort", port.to_string()),
                p("IpPermissions.1.ToPort", port.to_string()),
            ];
            for (i, c) in allowed.iter().enumerate() {
                r.push(p(
                    format!("IpPermissions.1.IpRanges.{}.CidrIp", i + 1),
                    c.clone(),
                ));
            }
            out.push(r);
        }
        // The endpoint's load balancer connects (and health-checks) from its own
        // addresses in the subnet: client addresses are not preserved for ip targets.
        if let Some(lb) = &self.ctx.api_lb {
            out.push(vec![
                p("IpPermissions.1.IpProtocol", "tcp"),
                p("IpPermissions.1.FromPort", lb.target_port.to_string()),
                p("IpPermissions.1.ToPort", lb.target_port.to_string()),
                p(
                    "IpPermissions.1.IpRanges.1.CidrIp",
                    self.ctx.subnet.to_string(),
                ),
            ]);
        }
        // VRRP is IP protocol 112 without ports (-1 = all, as EC2 writes it).
        let vxlan = i32::from(crate::render::views::VXLAN_PORT);
        for (proto, from, to) in [
            ("112", -1, -1),
            ("tcp", 10250, 10250),
            ("tcp", 2379, 2380),
            ("udp", vxlan, vxlan),
        ] {
            let r = vec![
                p("IpPermissions.1.IpProtocol", proto),
                p("IpPermissions.1.FromPort", i32::to_string(&from)),
                p("IpPermissions.1.ToPort", i32::to_string(&to)),
                p("IpPermissions.1.Groups.1.GroupId", group_id),
            ];
            out.push(r);
        }
        out
    }

    async fn ensure_key(&self) -> Result<String, ProviderError> {
        let name = self.key_name();
        if self.find_key().await?.is_none() {
            use base64::Engine as _;
            let material =
                base64::engine::general_purpose::STANDARD.encode(self.ctx.ssh_public_key.trim());
            let mut params = vec![p("KeyName", name.clone()), p("PublicKeyMaterial", material)];
            params.extend(tag_spec(1, "key-pair", self.cluster(), &name, &[]));
            match self.client.call("ImportKeyPair", &name, &params).await {
                Ok(_) => {}
                Err(e) if e.api_code() == Some("InvalidKeyPair.Duplicate") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(name)
    }

    // ---- instances ----

    /// Instances carrying the cluster tag that are not terminated (or terminating).
    async fn instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = self.tagged(&[(
                "instance-state-name",
                &["pending", "running", "stopping", "stopped"],
            )]);
            if let Some(t) = &token {
                params.push(p("NextToken", t.clone()));
            }
            let r: DescribeInstances = self
                .client
                .call_xml("DescribeInstances", self.cluster(), &params)
                .await?;
            for res in r.reservation_set.item {
                out.extend(res.instances_set.item);
            }
            match r.next_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(out)
    }

    fn machine_of(&self, i: &Instance) -> Machine {
        Machine {
            name: tag(&i.tag_set, "Name").unwrap_or_default().to_string(),
            role: tag(&i.tag_set, TAG_ROLE)
                .and_then(MachineRole::parse)
                .unwrap_or(MachineRole::Worker),
            ip: i.private_ip_address.as_deref().and_then(|s| s.parse().ok()),
            state: state_of(&i.instance_state.name),
            id: i.instance_id.clone(),
            public_ip: i.ip_address.as_deref().and_then(|s| s.parse().ok()),
        }
    }

    /// Deterministic idempotency token: the same machine in the same subnet and
    /// security group always sends the same one (at most 64 ASCII characters).
    /// `salt` > 0 only after the token turned out to name a terminated instance of an
    /// earlier life of the machine.
    pub fn client_token(
        cluster: &str,
        machine: &str,
        subnet_id: &str,
        group_id: &str,
        salt: u32,
    ) -> String {
        use sha2::{Digest, Sha256};
        let mut text = format!("{cluster}/{machine}/{subnet_id}/{group_id}");
        if salt > 0 {
            text.push_str(&format!("/{salt}"));
        }
        format!("kubeforge-{}", &hex::encode(Sha256::digest(text))[..40])
    }

    fn instance_type(&self, role: MachineRole) -> String {
        match role {
            MachineRole::ControlPlane => self.spec.control_plane_instance_type.clone(),
            MachineRole::LoadBalancer => self.spec.load_balancer_instance_type.clone(),
            MachineRole::Worker => None,
        }
        .unwrap_or_else(|| self.spec.instance_type.clone())
    }

    /// RunInstances for one machine. EC2 answers a repeated client token with the
    /// instance it made for it; if that one is terminated (the machine was deleted and
    /// is now made again in the same subnet and group), the next salt is tried.
    async fn run_instance(
        &self,
        spec: &MachineSpec,
        net: &Network,
    ) -> Result<Instance, ProviderError> {
        let mut salt = 0;
        loop {
            let i = self.run_instance_with(spec, net, salt).await?;
            if salt < 5
                && matches!(
                    i.instance_state.name.as_str(),
                    "terminated" | "shutting-down"
                )
            {
                salt += 1;
                continue;
            }
            return Ok(i);
        }
    }

    async fn run_instance_with(
        &self,
        spec: &MachineSpec,
        net: &Network,
        salt: u32,
    ) -> Result<Instance, ProviderError> {
        use base64::Engine as _;
        let mut params = vec![
            p("ImageId", self.spec.image.clone()),
            p("InstanceType", self.instance_type(spec.role)),
            p("MinCount", "1"),
            p("MaxCount", "1"),
            p("KeyName", net.key_name.clone()),
            p("SubnetId", net.subnet_id.clone()),
            p("PrivateIpAddress", spec.ip.to_string()),
            p("SecurityGroupId.1", net.group_id.clone()),
            p(
                "ClientToken",
                Self::client_token(
                    self.cluster(),
                    &spec.name,
                    &net.subnet_id,
                    &net.group_id,
                    salt,
                ),
            ),
            p(
                "UserData",
                base64::engine::general_purpose::STANDARD.encode(cloud::user_data(&spec.name)),
            ),
            p("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
            p(
                "BlockDeviceMapping.1.Ebs.VolumeSize",
                self.spec.root_volume_gb.unwrap_or(20).to_string(),
            ),
            p("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
            p("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ];
        for (i, bytes) in spec.extra_disks.iter().enumerate() {
            let n = i + 2;
            params.push(p(
                format!("BlockDeviceMapping.{n}.DeviceName"),
                device_name(i),
            ));
            params.push(p(
                format!("BlockDeviceMapping.{n}.Ebs.VolumeSize"),
                cloud::gib_ceil(*bytes).to_string(),
            ));
            params.push(p(format!("BlockDeviceMapping.{n}.Ebs.VolumeType"), "gp3"));
            params.push(p(
                format!("BlockDeviceMapping.{n}.Ebs.DeleteOnTermination"),
                "true",
            ));
        }
        if let Some(profile) = self.instance_profile(spec.role) {
            params.push(p("IamInstanceProfile.Name", profile));
        }
        let role = spec.role.as_str();
        params.extend(tag_spec(
            1,
            "instance",
            self.cluster(),
            &spec.name,
            &[(TAG_ROLE, role)],
        ));
        params.extend(tag_spec(
            2,
            "volume",
            self.cluster(),
            &spec.name,
            &[(TAG_ROLE, role)],
        ));
        let r: RunInstances = self
            .client
            .call_xml("RunInstances", &spec.name, &params)
            .await?;
        // A crash right here (instance made, nothing recorded) is what the tests inject.
        cloud::fault("aws-after-run-instances");
        r.instances_set
            .item
            .into_iter()
            .next()
            .ok_or_else(|| ProviderError::BadResponse {
                provider: P,
                operation: "RunInstances".into(),
                resource: spec.name.clone(),
                detail: "no instance in the answer".into(),
            })
    }

    /// The instance profile a machine of `role` gets (load balancers only).
    fn instance_profile(&self, role: MachineRole) -> Option<String> {
        (role == MachineRole::LoadBalancer)
            .then(|| self.spec.load_balancer_instance_profile.clone())
            .flatten()
    }

    async fn find_instance(&self, name: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self
            .instances()
            .await?
            .into_iter()
            .find(|i| tag(&i.tag_set, "Name") == Some(name)))
    }

    async fn volumes(&self) -> Result<Vec<Volume>, ProviderError> {
        let r: DescribeVolumes = self
            .client
            .call_xml("DescribeVolumes", self.cluster(), &self.tagged(&[]))
            .await?;
        Ok(r.volume_set.item)
    }

    /// Ignore NotFound-type answers: what is gone is deleted.
    async fn delete_call(
        &self,
        action: &str,
        resource: &str,
        params: &[(String, String)],
    ) -> Result<(), ProviderError> {
        match self.client.call(action, resource, params).await {
            Ok(_) => Ok(()),
            Err(e)
                if e.api_code()
                    .is_some_and(|c| c.ends_with(".NotFound") || c.ends_with("NotFound")) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The VIP as a secondary private address of its first holder's interface, so the
    /// VPC routes it there (a VPC routes only addresses assigned to an interface).
    /// Left where it is when any load balancer has it: with `loadBalancer.failover` the
    /// keepalived master moves it (docs/providers.md), and taking it back would send
    /// the endpoint's traffic to a backup.
    async fn ensure_vip(&self) -> Result<(), ProviderError> {
        let (Some(vip), Some(holder)) = (self.ctx.vip, &self.ctx.vip_holder) else {
            return Ok(());
        };
        let vip_s = vip.to_string();
        let held = self.instances().await?.iter().any(|i| {
            tag(&i.tag_set, TAG_ROLE) == Some("load-balancer")
                && i.network_interface_set.item.iter().any(|e| {
                    e.private_ip_addresses_set
                        .item
                        .iter()
                        .any(|a| a.private_ip_address == vip_s)
                })
        });
        if held {
            return Ok(());
        }
        let Some(i) = self.find_instance(holder).await? else {
            return Ok(());
        };
        let Some(eni) = i.network_interface_set.item.first() else {
            return Ok(());
        };
        let vip = vip.to_string();
        if eni
            .private_ip_addresses_set
            .item
            .iter()
            .any(|a| a.private_ip_address == vip)
        {
            return Ok(());
        }
        self.client
            .call(
                "AssignPrivateIpAddresses",
                holder,
                &[
                    p("NetworkInterfaceId", eni.network_interface_id.clone()),
                    p("PrivateIpAddress.1", vip),
                    p("AllowReassignment", "true"),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn wait_terminated(&self, ids: &[String]) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        cloud::poll(
            P,
            "instance termination",
            Duration::from_secs(2),
            Duration::from_secs(600),
            || async {
                let mut params = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    params.push(p(format!("InstanceId.{}", i + 1), id.clone()));
                }
                let r: DescribeInstances = match self
                    .client
                    .call_xml("DescribeInstances", self.cluster(), &params)
                    .await
                {
                    Ok(r) => r,
                    Err(e) if e.api_code() == Some("InvalidInstanceID.NotFound") => {
                        return Ok(Some(()))
                    }
                    Err(e) => return Err(e),
                };
                let done = r
                    .reservation_set
                    .item
                    .iter()
                    .flat_map(|r| &r.instances_set.item)
                    .all(|i| i.instance_state.name == "terminated");
                Ok(done.then_some(()))
            },
        )
        .await
    }
}

#[async_trait::async_trait]
impl Provider for AwsProvider {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn ensure(&self, specs: &[MachineSpec]) -> Result<Vec<Machine>, ProviderError> {
        super::check_addresses(specs, self.ctx.subnet)?;
        let net = self.ensure_network().await?;
        // Always look up before creating: a crash after RunInstances left the instance
        // with its tags, and this finds it.
        let existing = self.instances().await?;
        let mut ids = Vec::new();
        for s in specs {
            match existing
                .iter()
                .find(|i| tag(&i.tag_set, "Name") == Some(s.name.as_str()))
            {
                Some(i) => {
                    let m = self.machine_of(i);
                    if m.role != s.role {
                        return Err(ProviderError::Drift {
                            name: s.name.clone(),
                            detail: format!("role is {}, spec says {}", m.role, s.role),
                        });
                    }
                    if let Some(ip) = m.ip.filter(|ip| *ip != s.ip) {
                        return Err(ProviderError::Drift {
                            name: s.name.clone(),
                            detail: format!("address is {ip}, spec says {}", s.ip),
                        });
                    }
                    if let (Some(profile), None) =
                        (self.instance_profile(s.role), &i.iam_instance_profile)
                    {
                        self.client
                            .call(
                                "AssociateIamInstanceProfile",
                                &s.name,
                                &[
                                    p("InstanceId", i.instance_id.clone()),
                                    p("IamInstanceProfile.Name", profile),
                                ],
                            )
                            .await?;
                    }
                    if matches!(i.instance_state.name.as_str(), "stopped" | "stopping") {
                        self.client
                            .call(
                                "StartInstances",
                                &s.name,
                                &[p("InstanceId.1", i.instance_id.clone())],
                            )
                            .await?;
                    }
                    ids.push(i.instance_id.clone());
                }
                None => {
                    let i = self.run_instance(s, &net).await?;
                    ids.push(i.instance_id);
                }
            }
        }
        // Wait until every machine runs (it has its addresses then).
        let machines = cloud::poll(
            P,
            "instances to run",
            Duration::from_secs(2),
            Duration::from_secs(600),
            || async {
                let now = self.instances().await?;
                let mut out = Vec::new();
                for id in &ids {
                    match now.iter().find(|i| &i.instance_id == id) {
                        Some(i) if i.instance_state.name == "running" => {
                            out.push(self.machine_of(i))
                        }
                        _ => return Ok(None),
                    }
                }
                Ok(Some(out))
            },
        )
        .await?;
        self.ensure_vip().await?;
        let control_planes: Vec<std::net::IpAddr> = specs
            .iter()
            .filter(|s| s.role == MachineRole::ControlPlane)
            .map(|s| s.ip)
            .collect();
        self.ensure_api_lb(&net, &control_planes).await?;
        Ok(machines)
    }

    async fn list(&self) -> Result<Vec<Machine>, ProviderError> {
        let mut out: Vec<Machine> = self
            .instances()
            .await?
            .iter()
            .map(|i| self.machine_of(i))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<(), ProviderError> {
        let Some(i) = self.find_instance(name).await? else {
            return Ok(());
        };
        self.delete_call(
            "TerminateInstances",
            name,
            &[p("InstanceId.1", i.instance_id.clone())],
        )
        .await?;
        self.wait_terminated(&[i.instance_id]).await
    }

    async fn stop(&self, name: &str) -> Result<(), ProviderError> {
        let i = self
            .find_instance(name)
            .await?
            .ok_or_else(|| ProviderError::NotFound { name: name.into() })?;
        self.client
            .call("StopInstances", name, &[p("InstanceId.1", i.instance_id)])
            .await
            .map(|_| ())
    }

    async fn start(&self, name: &str) -> Result<(), ProviderError> {
        let i = self
            .find_instance(name)
            .await?
            .ok_or_else(|| ProviderError::NotFound { name: name.into() })?;
        self.client
            .call("StartInstances", name, &[p("InstanceId.1", i.instance_id)])
            .await
            .map(|_| ())
    }

    fn planned(&self, specs: &[MachineSpec]) -> Vec<Resource> {
        let mut out = Vec::new();
        if !self.spec.use_default_vpc {
            out.push(Resource::new("vpc", self.vpc_name(), None));
            out.push(Resource::new("subnet", self.subnet_name(), None));
            out.push(Resource::new("internet-gateway", self.vpc_name(), None));
        }
        out.push(Resource::new("security-group", self.group_name(), None));
        out.push(Resource::new("key-pair", self.key_name(), None));
        out.extend(self.planned_api_lb());
        for s in specs {
            out.push(Resource::new("instance", s.name.clone(), None));
            for (i, _) in s.extra_disks.iter().enumerate() {
                out.push(Resource::new(
                    "volume",
                    format!("{}:{}", s.name, device_name(i)),
                    None,
                ));
            }
        }
        out
    }

    async fn resources(&self) -> Result<Vec<Resource>, ProviderError> {
        // The endpoint's load balancer first: its interfaces are in the subnet.
        let mut out = self.api_lb_resources().await?;
        let mut instances = self.instances().await?;
        instances.sort_by(|a, b| tag(&a.tag_set, "Name").cmp(&tag(&b.tag_set, "Name")));
        for i in &instances {
            out.push(Resource::new(
                "instance",
                tag(&i.tag_set, "Name").unwrap_or_default(),
                Some(i.instance_id.clone()),
            ));
        }
        for v in self.volumes().await? {
            if v.status == "deleting" || v.status == "deleted" {
                continue;
            }
            let name = tag(&v.tag_set, "Name").unwrap_or_default();
            let dev = v
                .attachment_set
                .item
                .first()
                .map(|a| a.device.clone())
                .unwrap_or_default();
            out.push(Resource::new(
                "volume",
                format!("{name}:{dev}"),
                Some(v.volume_id),
            ));
        }
        // Every tagged copy is listed: a create repeated after a lost answer could in
        // principle have made two, and `destroy` removes both.
        let groups: DescribeGroups = self
            .client
            .call_xml(
                "DescribeSecurityGroups",
                &self.group_name(),
                &self.tagged(&[]),
            )
            .await?;
        for g in groups.security_group_info.item {
            out.push(Resource::new(
                "security-group",
                g.group_name,
                Some(g.group_id),
            ));
        }
        let subnets: DescribeSubnets = self
            .client
            .call_xml("DescribeSubnets", &self.subnet_name(), &self.tagged(&[]))
            .await?;
        for sn in subnets.subnet_set.item {
            out.push(Resource::new(
                "subnet",
                self.subnet_name(),
                Some(sn.subnet_id),
            ));
        }
        let gateways: DescribeGateways = self
            .client
            .call_xml(
                "DescribeInternetGateways",
                &self.vpc_name(),
                &self.tagged(&[]),
            )
            .await?;
        for g in gateways.internet_gateway_set.item {
            out.push(Resource::new(
                "internet-gateway",
                self.vpc_name(),
                Some(g.internet_gateway_id),
            ));
        }
        let vpcs: DescribeVpcs = self
            .client
            .call_xml("DescribeVpcs", &self.vpc_name(), &self.tagged(&[]))
            .await?;
        for v in vpcs.vpc_set.item {
            out.push(Resource::new("vpc", self.vpc_name(), Some(v.vpc_id)));
        }
        // Key pairs are found by the cluster tag, never by name alone.
        let keys: DescribeKeys = self
            .client
            .call_xml("DescribeKeyPairs", &self.key_name(), &self.tagged(&[]))
            .await?;
        for k in keys.key_set.item {
            out.push(Resource::new("key-pair", k.key_name, k.key_pair_id));
        }
        Ok(out)
    }

    async fn destroy_all(&self) -> Result<Vec<Resource>, ProviderError> {
        let found = self.resources().await?;
        self.delete_api_lb(&found).await?;
        let instance_ids: Vec<String> = found
            .iter()
            .filter(|r| r.kind == "instance")
            .filter_map(|r| r.id.clone())
            .collect();
        if !instance_ids.is_empty() {
            let mut params = Vec::new();
            for (i, id) in instance_ids.iter().enumerate() {
                params.push(p(format!("InstanceId.{}", i + 1), id.clone()));
            }
            self.delete_call("TerminateInstances", self.cluster(), &params)
                .await?;
            self.wait_terminated(&instance_ids).await?;
        }
        // Volumes left over (DeleteOnTermination takes the attached ones along).
        for v in self.volumes().await? {
            if v.status == "available" {
                self.delete_call(
                    "DeleteVolume",
                    &v.volume_id,
                    &[p("VolumeId", v.volume_id.clone())],
                )
                .await?;
            }
        }
        // Gateways are detached from whatever VPC they are attached to first.
        let gateways: DescribeGateways = self
            .client
            .call_xml(
                "DescribeInternetGateways",
                &self.vpc_name(),
                &self.tagged(&[]),
            )
            .await?;
        for g in &gateways.internet_gateway_set.item {
            for a in &g.attachment_set.item {
                self.delete_call(
                    "DetachInternetGateway",
                    &self.vpc_name(),
                    &[
                        p("InternetGatewayId", g.internet_gateway_id.clone()),
                        p("VpcId", a.vpc_id.clone()),
                    ],
                )
                .await
                .or_else(|e| {
                    if e.api_code() == Some("Gateway.NotAttached") {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            }
        }
        // In dependency order: groups and subnets, gateways, key pairs, then the VPCs.
        for kind in [
            "security-group",
            "subnet",
            "internet-gateway",
            "key-pair",
            "vpc",
        ] {
            for r in found.iter().filter(|r| r.kind == kind) {
                let Some(id) = r.id.clone() else { continue };
                let (action, params) = match kind {
                    "security-group" => ("DeleteSecurityGroup", vec![p("GroupId", id)]),
                    "subnet" => ("DeleteSubnet", vec![p("SubnetId", id)]),
                    "internet-gateway" => {
                        ("DeleteInternetGateway", vec![p("InternetGatewayId", id)])
                    }
                    "key-pair" => ("DeleteKeyPair", vec![p("KeyName", r.name.clone())]),
                    _ => ("DeleteVpc", vec![p("VpcId", id)]),
                };
                // A load balancer's or instance's interfaces leave the subnet and
                // group some time after their owner is gone.
                cloud::poll(
                    P,
                    "network interfaces to leave",
                    Duration::from_secs(5),
                    Duration::from_secs(300),
                    || async {
                        match self.delete_call(action, &r.name, &params).await {
                            Ok(()) => Ok(Some(())),
                            Err(e) if e.api_code() == Some("DependencyViolation") => Ok(None),
                            Err(e) => Err(e),
                        }
                    },
                )
                .await?;
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
    fn error_bodies_give_code_and_message() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>abc</RequestID></Response>"#;
        assert_eq!(
            parse_error(body),
            (
                "RequestLimitExceeded".into(),
                "Request limit exceeded.".into()
            )
        );
        assert!(retryable(503, "RequestLimitExceeded"));
        assert!(throttled(503, "RequestLimitExceeded"));
        assert!(!throttled(500, "InternalError"));
        assert!(creates_without_token("CreateVpc") && creates_without_token("ImportKeyPair"));
        assert!(!creates_without_token("RunInstances") && !creates_without_token("DescribeVpcs"));
        assert!(retryable(400, "Throttling"));
        assert!(!retryable(400, "InvalidAMIID.NotFound"));
    }

    #[test]
    fn client_tokens_are_deterministic_and_short() {
        let a = AwsProvider::client_token("c", "c-cp-1", "subnet-1", "sg-1", 0);
        assert_eq!(
            a,
            AwsProvider::client_token("c", "c-cp-1", "subnet-1", "sg-1", 0)
        );
        assert_ne!(
            a,
            AwsProvider::client_token("c", "c-cp-2", "subnet-1", "sg-1", 0)
        );
        assert_ne!(
            a,
            AwsProvider::client_token("c", "c-cp-1", "subnet-2", "sg-1", 0)
        );
        assert!(a.len() <= 64 && a.is_ascii());
        assert_ne!(
            a,
            AwsProvider::client_token("c", "c-cp-1", "subnet-1", "sg-1", 1)
        );
    }

    #[test]
    fn describe_instances_parses() {
        let xml = r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
 <requestId>r</requestId>
 <reservationSet><item><reservationId>r-1</reservationId><instancesSet><item>
  <instanceId>i-1</instanceId><instanceState><code>16</code><name>running</name></instanceState>
  <privateIpAddress>10.42.0.10</privateIpAddress><ipAddress>203.0.113.5</ipAddress>
  <tagSet><item><key>Name</key><value>c-cp-1</value></item><item><key>kubeforge:role</key><value>control-plane</value></item></tagSet>
 </item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        let r: DescribeInstances = quick_xml::de::from_str(xml).unwrap();
        let i = &r.reservation_set.item[0].instances_set.item[0];
        assert_eq!(i.instance_id, "i-1");
        assert_eq!(tag(&i.tag_set, "Name"), Some("c-cp-1"));
        let empty: DescribeInstances = quick_xml::de::from_str(
            "<DescribeInstancesResponse><reservationSet/></DescribeInstancesResponse>",
        )
        .unwrap();
        assert!(empty.reservation_set.item.is_empty());
    }

    #[test]
    fn credentials_never_print() {
        let c = AwsCredentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: Secret::new("topsecret"),
            session_token: Some(Secret::new("tok")),
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("topsecret") && !d.contains("tok\"") && !d.contains("AKIAEXAMPLE"),
            "{d}"
        );
    }
}
