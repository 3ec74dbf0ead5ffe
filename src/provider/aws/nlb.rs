//! The API endpoint on AWS as the cloud's own load balancer (`loadBalancer.type:
//! cloud`): an internal Network Load Balancer at the cluster's fixed private address
//! (a subnet mapping with `PrivateIPv4Address`), one TCP listener, and a target group
//! of the control planes' addresses (target type `ip`: client addresses are not
//! preserved, so a control plane's kubelet reaching the endpoint is never sent back to
//! itself and dropped, the NLB hairpin problem of instance targets). Health check
//! `GET /readyz` over TLS (or a TCP connect). Everything is named `<cluster>-api`,
//! tagged with the cluster, found by name and checked for the tag before it is used
//! or deleted. Elastic Load Balancing v2 speaks the same Query protocol as EC2.

use super::{p, AwsProvider, AwsSpec, Network, P};
use crate::provider::cloud::{self, ApiLb, TAG_CLUSTER};
use crate::provider::{ProviderError, Resource, TargetHealth};
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

pub const ELB_VERSION: &str = "2015-12-01";
/// AWS allows 32 characters for load balancer and target group names.
const NAME_MAX: usize = 32;

/// The Elastic Load Balancing endpoint: the spec's `elbEndpoint`, else
/// $AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2, $AWS_ENDPOINT_URL, AWS's own.
pub fn endpoint_of(spec: &AwsSpec, region: &str) -> String {
    super::endpoint_from(
        spec.elb_endpoint.as_deref(),
        &[
            "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2",
            "AWS_ENDPOINT_URL",
        ],
        || format!("https://elasticloadbalancing.{region}.amazonaws.com"),
    )
}

// ---- answers (only the fields kubeforge reads) ----

#[derive(Debug, Deserialize, Clone)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct Members<T> {
    #[serde(default)]
    member: Vec<T>,
}

impl<T> Default for Members<T> {
    fn default() -> Self {
        Members { member: Vec::new() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LbsAnswer {
    #[serde(alias = "CreateLoadBalancerResult")]
    describe_load_balancers_result: LbsResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LbsResult {
    #[serde(default)]
    load_balancers: Members<Lb>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
struct Lb {
    load_balancer_arn: String,
    #[serde(rename = "DNSName", default)]
    dns_name: String,
    #[serde(default)]
    state: Option<LbState>,
    #[serde(default)]
    availability_zones: Members<Zone>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
struct LbState {
    code: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
struct Zone {
    #[serde(default)]
    load_balancer_addresses: Members<LbAddress>,
}

#[derive(Debug, Deserialize, Clone)]
struct LbAddress {
    #[serde(rename = "PrivateIPv4Address", default)]
    private_ipv4_address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TgsAnswer {
    #[serde(alias = "CreateTargetGroupResult")]
    describe_target_groups_result: TgsResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TgsResult {
    #[serde(default)]
    target_groups: Members<Tg>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
struct Tg {
    target_group_arn: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListenersAnswer {
    describe_listeners_result: ListenersResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListenersResult {
    #[serde(default)]
    listeners: Members<Listener>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Listener {
    port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthAnswer {
    describe_target_health_result: HealthResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthResult {
    #[serde(default)]
    target_health_descriptions: Members<HealthDescription>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthDescription {
    target: Target,
    target_health: Health,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Target {
    id: String,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Health {
    state: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagsAnswer {
    describe_tags_result: TagsResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagsResult {
    #[serde(default)]
    tag_descriptions: Members<TagDescription>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagDescription {
    #[serde(default)]
    tags: Members<ElbTag>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ElbTag {
    key: String,
    #[serde(default)]
    value: String,
}

/// `Tags.member.N` parameters: the cluster tag and the name.
fn tags(cluster: &str, name: &str) -> Vec<(String, String)> {
    vec![
        p("Tags.member.1.Key", TAG_CLUSTER),
        p("Tags.member.1.Value", cluster),
        p("Tags.member.2.Key", "Name"),
        p("Tags.member.2.Value", name),
    ]
}

fn not_found(e: &ProviderError) -> bool {
    matches!(
        e.api_code(),
        Some("LoadBalancerNotFound" | "TargetGroupNotFound" | "ListenerNotFound")
    )
}

impl AwsProvider {
    fn lb(&self) -> Option<&ApiLb> {
        self.ctx.api_lb.as_ref()
    }

    fn lb_name(&self) -> String {
        ApiLb::name(self.cluster(), NAME_MAX)
    }

    /// Whether the resource (`arn`) carries this cluster's tag.
    async fn elb_ours(&self, arn: &str, name: &str) -> Result<bool, ProviderError> {
        let t: TagsAnswer = self
            .elb
            .call_xml("DescribeTags", name, &[p("ResourceArns.member.1", arn)])
            .await?;
        Ok(t.describe_tags_result
            .tag_descriptions
            .member
            .iter()
            .flat_map(|d| &d.tags.member)
            .any(|t| t.key == TAG_CLUSTER && t.value == self.cluster()))
    }

    /// A resource named like ours that is not ours: refused, never used or deleted.
    fn foreign(&self, kind: &str, name: &str) -> ProviderError {
        ProviderError::Config {
            provider: P,
            message: format!(
                "a {kind} named {name} exists without the tag {TAG_CLUSTER}={}: it is not this cluster's (rename the cluster or remove it)",
                self.cluster()
            ),
        }
    }

    async fn find_lb(&self) -> Result<Option<Lb>, ProviderError> {
        let name = self.lb_name();
        let r: Result<LbsAnswer, _> = self
            .elb
            .call_xml(
                "DescribeLoadBalancers",
                &name,
                &[p("Names.member.1", &name)],
            )
            .await;
        let lb = match r {
            Ok(a) => a
                .describe_load_balancers_result
                .load_balancers
                .member
                .into_iter()
                .next(),
            Err(e) if not_found(&e) => None,
            Err(e) => return Err(e),
        };
        match lb {
            Some(lb) if !self.elb_ours(&lb.load_balancer_arn, &name).await? => {
                Err(self.foreign("load balancer", &name))
            }
            other => Ok(other),
        }
    }

    async fn find_target_group(&self) -> Result<Option<Tg>, ProviderError> {
        let name = self.lb_name();
        let r: Result<TgsAnswer, _> = self
            .elb
            .call_xml("DescribeTargetGroups", &name, &[p("Names.member.1", &name)])
            .await;
        let tg = match r {
            Ok(a) => a
                .describe_target_groups_result
                .target_groups
                .member
                .into_iter()
                .next(),
            Err(e) if not_found(&e) => None,
            Err(e) => return Err(e),
        };
        match tg {
            Some(tg) if !self.elb_ours(&tg.target_group_arn, &name).await? => {
                Err(self.foreign("target group", &name))
            }
            other => Ok(other),
        }
    }

    /// The load balancer, its target group (exactly the control planes registered) and
    /// its listener, each found or made; waits until the load balancer is `active`.
    pub(super) async fn ensure_api_lb(
        &self,
        net: &Network,
        control_planes: &[IpAddr],
    ) -> Result<(), ProviderError> {
        let Some(lb) = self.lb().cloned() else {
            return Ok(());
        };
        let name = self.lb_name();
        let tg = match self.find_target_group().await? {
            Some(tg) => tg,
            None => {
                let mut params = vec![
                    p("Name", &name),
                    p("Protocol", "TCP"),
                    p("Port", lb.target_port.to_string()),
                    p("VpcId", &net.vpc_id),
                    p("TargetType", "ip"),
                    p("HealthCheckIntervalSeconds", "10"),
                    p("HealthyThresholdCount", "2"),
                    p("UnhealthyThresholdCount", "2"),
                ];
                if lb.https_check {
                    params.push(p("HealthCheckProtocol", "HTTPS"));
                    params.push(p("HealthCheckPath", "/readyz"));
                } else {
                    params.push(p("HealthCheckProtocol", "TCP"));
                }
                params.extend(tags(self.cluster(), &name));
                let a: TgsAnswer = self
                    .elb
                    .call_xml("CreateTargetGroup", &name, &params)
                    .await?;
                a.describe_target_groups_result
                    .target_groups
                    .member
                    .into_iter()
                    .next()
                    .ok_or_else(|| ProviderError::BadResponse {
                        provider: P,
                        operation: "CreateTargetGroup".into(),
                        resource: name.clone(),
                        detail: "no target group in the answer".into(),
                    })?
            }
        };
        // A control plane that leaves is out of rotation within 30 s (default 300 s).
        self.elb
            .call(
                "ModifyTargetGroupAttributes",
                &name,
                &[
                    p("TargetGroupArn", &tg.target_group_arn),
                    p(
                        "Attributes.member.1.Key",
                        "deregistration_delay.timeout_seconds",
                    ),
                    p("Attributes.member.1.Value", "30"),
                ],
            )
            .await?;
        self.sync_targets(&tg, &lb, control_planes).await?;
        let found = match self.find_lb().await? {
            Some(found) => found,
            None => {
                let mut params = vec![
                    p("Name", &name),
                    p("Type", "network"),
                    p("Scheme", "internal"),
                    p("IpAddressType", "ipv4"),
                    p("SubnetMappings.member.1.SubnetId", &net.subnet_id),
                    p(
                        "SubnetMappings.member.1.PrivateIPv4Address",
                        lb.address.to_string(),
                    ),
                ];
                params.extend(tags(self.cluster(), &name));
                let a: LbsAnswer = self
                    .elb
                    .call_xml("CreateLoadBalancer", &name, &params)
                    .await?;
                a.describe_load_balancers_result
                    .load_balancers
                    .member
                    .into_iter()
                    .next()
                    .ok_or_else(|| ProviderError::BadResponse {
                        provider: P,
                        operation: "CreateLoadBalancer".into(),
                        resource: name.clone(),
                        detail: "no load balancer in the answer".into(),
                    })?
            }
        };
        // Its address cannot change: one made with another is drift, not recreated.
        if let Some(other) = found
            .availability_zones
            .member
            .iter()
            .flat_map(|z| &z.load_balancer_addresses.member)
            .filter_map(|a| a.private_ipv4_address.as_deref())
            .find(|a| *a != lb.address.to_string())
        {
            return Err(ProviderError::Drift {
                name,
                detail: format!("load balancer address is {other}, spec says {}", lb.address),
            });
        }
        let listeners: ListenersAnswer = self
            .elb
            .call_xml(
                "DescribeListeners",
                &name,
                &[p("LoadBalancerArn", &found.load_balancer_arn)],
            )
            .await?;
        if !listeners
            .describe_listeners_result
            .listeners
            .member
            .iter()
            .any(|l| l.port == lb.port)
        {
            self.elb
                .call(
                    "CreateListener",
                    &name,
                    &[
                        p("LoadBalancerArn", &found.load_balancer_arn),
                        p("Protocol", "TCP"),
                        p("Port", lb.port.to_string()),
                        p("DefaultActions.member.1.Type", "forward"),
                        p(
                            "DefaultActions.member.1.TargetGroupArn",
                            &tg.target_group_arn,
                        ),
                    ],
                )
                .await?;
        }
        if found.state.as_ref().map(|s| s.code.as_str()) != Some("active") {
            cloud::poll(
                P,
                "the load balancer to become active",
                Duration::from_secs(5),
                Duration::from_secs(900),
                || async {
                    Ok(self
                        .find_lb()
                        .await?
                        .and_then(|l| l.state)
                        .filter(|s| s.code == "active")
                        .map(|_| ()))
                },
            )
            .await?;
        }
        tracing::info!(name, dns = found.dns_name, address = %lb.address, "network load balancer ready");
        Ok(())
    }

    /// Register the control planes that are not, deregister targets that are not
    /// control planes any more.
    async fn sync_targets(
        &self,
        tg: &Tg,
        lb: &ApiLb,
        control_planes: &[IpAddr],
    ) -> Result<(), ProviderError> {
        let name = self.lb_name();
        let health = self.target_health(&tg.target_group_arn).await?;
        let want: Vec<String> = control_planes.iter().map(|a| a.to_string()).collect();
        let missing: Vec<&String> = want
            .iter()
            .filter(|a| !health.iter().any(|h| &h.0 == *a))
            .collect();
        let extra: Vec<&(String, Option<u16>, Health)> = health
            .iter()
            .filter(|h| !want.contains(&h.0) && h.2.state != "draining")
            .collect();
        if !missing.is_empty() {
            let mut params = vec![p("TargetGroupArn", &tg.target_group_arn)];
            for (i, a) in missing.iter().enumerate() {
                params.push(p(format!("Targets.member.{}.Id", i + 1), a.as_str()));
                params.push(p(
                    format!("Targets.member.{}.Port", i + 1),
                    lb.target_port.to_string(),
                ));
            }
            self.elb.call("RegisterTargets", &name, &params).await?;
        }
        if !extra.is_empty() {
            let mut params = vec![p("TargetGroupArn", &tg.target_group_arn)];
            for (i, h) in extra.iter().enumerate() {
                params.push(p(format!("Targets.member.{}.Id", i + 1), h.0.as_str()));
                params.push(p(
                    format!("Targets.member.{}.Port", i + 1),
                    h.1.unwrap_or(lb.target_port).to_string(),
                ));
            }
            self.elb.call("DeregisterTargets", &name, &params).await?;
        }
        Ok(())
    }

    async fn target_health(
        &self,
        tg_arn: &str,
    ) -> Result<Vec<(String, Option<u16>, Health)>, ProviderError> {
        let a: HealthAnswer = self
            .elb
            .call_xml(
                "DescribeTargetHealth",
                &self.lb_name(),
                &[p("TargetGroupArn", tg_arn)],
            )
            .await?;
        Ok(a.describe_target_health_result
            .target_health_descriptions
            .member
            .into_iter()
            .map(|d| (d.target.id, d.target.port, d.target_health))
            .collect())
    }

    /// The load balancer's targets as its health check sees them.
    pub(super) async fn api_lb_targets(&self) -> Result<Option<Vec<TargetHealth>>, ProviderError> {
        if self.lb().is_none() {
            return Ok(None);
        }
        let Some(tg) = self.find_target_group().await? else {
            return Ok(Some(Vec::new()));
        };
        Ok(Some(
            self.target_health(&tg.target_group_arn)
                .await?
                .into_iter()
                .map(|(id, port, h)| TargetHealth {
                    target: match port {
                        Some(port) => format!("{id}:{port}"),
                        None => id,
                    },
                    state: h.state,
                    reason: h.reason,
                })
                .collect(),
        ))
    }

    /// What `ensure` makes for the endpoint, offline.
    pub(super) fn planned_api_lb(&self) -> Vec<Resource> {
        if self.lb().is_none() {
            return Vec::new();
        }
        let name = self.lb_name();
        vec![
            Resource::new("target-group", name.clone(), None),
            Resource::new("load-balancer", name, None),
        ]
    }

    /// The endpoint's load balancer and target group that exist (tagged), in deletion
    /// order: the load balancer (its listeners go with it), then the target group.
    /// Only with `loadBalancer.type: cloud` (the ELB API is not asked otherwise).
    pub(super) async fn api_lb_resources(&self) -> Result<Vec<Resource>, ProviderError> {
        let mut out = Vec::new();
        if self.lb().is_none() {
            return Ok(out);
        }
        let name = self.lb_name();
        if let Some(lb) = self.find_lb().await? {
            out.push(Resource::new(
                "load-balancer",
                name.clone(),
                Some(lb.load_balancer_arn),
            ));
        }
        if let Some(tg) = self.find_target_group().await? {
            out.push(Resource::new(
                "target-group",
                name,
                Some(tg.target_group_arn),
            ));
        }
        Ok(out)
    }

    /// Delete the load balancer (listeners with it) and then the target group, which
    /// AWS refuses while a listener still uses it (retried for a while).
    pub(super) async fn delete_api_lb(&self, found: &[Resource]) -> Result<(), ProviderError> {
        for r in found.iter().filter(|r| r.kind == "load-balancer") {
            let Some(arn) = &r.id else { continue };
            match self
                .elb
                .call("DeleteLoadBalancer", &r.name, &[p("LoadBalancerArn", arn)])
                .await
            {
                Err(e) if !not_found(&e) => return Err(e),
                _ => {}
            }
        }
        for r in found.iter().filter(|r| r.kind == "target-group") {
            let Some(arn) = &r.id else { continue };
            cloud::poll(
                P,
                "the target group to be released by its load balancer",
                Duration::from_secs(2),
                Duration::from_secs(120),
                || async {
                    match self
                        .elb
                        .call("DeleteTargetGroup", &r.name, &[p("TargetGroupArn", arn)])
                        .await
                    {
                        Ok(_) => Ok(Some(())),
                        Err(e) if not_found(&e) => Ok(Some(())),
                        Err(e) if e.api_code() == Some("ResourceInUse") => Ok(None),
                        Err(e) => Err(e),
                    }
                },
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_aws_limits() {
        assert_eq!(ApiLb::name("demo", NAME_MAX), "demo-api");
        let long = ApiLb::name("a-very-long-cluster-name-for-production", NAME_MAX);
        assert!(long.len() <= NAME_MAX, "{long}");
        assert!(long.starts_with("a-very-long-cluster-nam-"), "{long}");
        assert_ne!(
            long,
            ApiLb::name("a-very-long-cluster-name-for-production-2", NAME_MAX)
        );
    }

    #[test]
    fn describe_target_health_parses() {
        let xml = r#"<DescribeTargetHealthResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/">
  <DescribeTargetHealthResult>
    <TargetHealthDescriptions>
      <member><HealthCheckPort>6443</HealthCheckPort>
        <TargetHealth><State>healthy</State></TargetHealth>
        <Target><Port>6443</Port><Id>10.42.0.10</Id></Target></member>
      <member><TargetHealth><State>unhealthy</State><Reason>Target.FailedHealthChecks</Reason></TargetHealth>
        <Target><Port>6443</Port><Id>10.42.0.11</Id></Target></member>
    </TargetHealthDescriptions>
  </DescribeTargetHealthResult>
</DescribeTargetHealthResponse>"#;
        let a: HealthAnswer = quick_xml::de::from_str(xml).unwrap();
        let m = &a
            .describe_target_health_result
            .target_health_descriptions
            .member;
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].target.id, "10.42.0.11");
        assert_eq!(
            m[1].target_health.reason.as_deref(),
            Some("Target.FailedHealthChecks")
        );
    }
}
