//! The cluster's own operations, below the phases: kubectl on a control-plane node,
//! /readyz, node readiness, etcd members and health (`etcd`), and the kubeadm command
//! lines per version (`kubeadm`, one facade). Phases (bootstrap, and later upgrade and
//! recovery) call these; nothing here knows about playbooks or the state.

pub mod etcd;
pub mod kubeadm;

use crate::render::views::BIN_DIR;
use crate::transport::remote::{self, HostError, Redact};
use crate::transport::Transport;
use std::time::{Duration, Instant};

pub use kubeadm::Kubeadm;

pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
pub const CA_CERT: &str = "/etc/kubernetes/pki/ca.crt";
pub const MANIFESTS: &str = "/etc/kubernetes/manifests";

/// `kubectl` as root on a control-plane node.
pub fn kubectl() -> String {
    format!("{BIN_DIR}/kubectl --kubeconfig={ADMIN_CONF}")
}

/// A Node as kubeforge reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    pub kubelet_version: String,
    pub unschedulable: bool,
}

/// The nodes of a `kubectl get nodes -o json`.
pub fn parse_nodes(json: &str) -> Result<Vec<NodeInfo>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("node list is not JSON: {e}"))?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| NodeInfo {
            name: n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ready: n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            kubelet_version: n["status"]["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            unschedulable: n["spec"]["unschedulable"].as_bool().unwrap_or(false),
        })
        .collect())
}

/// Names of the nodes whose Ready condition is True, and of all nodes.
pub fn ready_nodes(json: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let nodes = parse_nodes(json)?;
    Ok((
        nodes
            .iter()
            .filter(|n| n.ready)
            .map(|n| n.name.clone())
            .collect(),
        nodes.into_iter().map(|n| n.name).collect(),
    ))
}

/// The nodes as the API server on `host` (a control-plane node) sees them.
pub async fn nodes(
    t: &dyn Transport,
    host: &str,
    secrets: &dyn Redact,
) -> Result<Vec<NodeInfo>, HostError> {
    let out = remote::run(
        t,
        host,
        &format!("{} get nodes -o json", kubectl()),
        secrets,
        false,
    )
    .await?;
    parse_nodes(&out).map_err(|message| HostError::Other {
        host: host.to_string(),
        message,
    })
}

/// Whether `https://{endpoint}/readyz` answers `ok`, asked from `t`; the answer
/// otherwise.
pub async fn readyz(t: &dyn Transport, endpoint: &str) -> Result<(), String> {
    let cmd = format!(
        "curl -sk --max-time 5 {}",
        crate::transport::shell::quote(&format!("https://{endpoint}/readyz"))
    );
    match t.exec(&cmd).await {
        Ok(o) if o.success() && o.stdout.trim() == "ok" => Ok(()),
        Ok(o) => Err(format!("{}{}", o.stdout.trim(), o.stderr.trim())),
        Err(e) => Err(e.to_string()),
    }
}

/// Wait until `https://{endpoint}/readyz` answers ok (asked from `t`), at most `limit`.
pub async fn wait_readyz(t: &dyn Transport, endpoint: &str, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let last = match readyz(t, endpoint).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() > limit {
            return Err(format!(
                "https://{endpoint}/readyz did not answer ok within {}s (last: {last})",
                limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Name of the probe Pod and Service the Endpoints gate creates (kube-system).
pub const PROBE: &str = "kubeforge-endpoints-probe";

/// A Pod running the sandbox (pause) image every node has, and a Service selecting it:
/// kube-controller-manager must fill the Service's Endpoints with the Pod's address.
pub fn endpoints_probe_manifest(sandbox_image: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{PROBE}","namespace":"kube-system","labels":{{"app.kubernetes.io/name":"{PROBE}"}}}},
 "spec":{{"containers":[{{"name":"pause","image":"{sandbox_image}","imagePullPolicy":"Never"}}],
  "tolerations":[{{"operator":"Exists"}}],"terminationGracePeriodSeconds":0}}}},
{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{PROBE}","namespace":"kube-system"}},
 "spec":{{"selector":{{"app.kubernetes.io/name":"{PROBE}"}},"ports":[{{"port":80,"protocol":"TCP"}}]}}}}]}}"#
    )
}

/// The addresses in the probe Service's Endpoints (empty: not filled in).
pub async fn probe_endpoints(
    t: &dyn Transport,
    host: &str,
    secrets: &dyn Redact,
) -> Result<String, HostError> {
    remote::run(
        t,
        host,
        &format!(
            "{} -n kube-system get endpoints {PROBE} -o jsonpath='{{.subsets[*].addresses[*].ip}}' 2>/dev/null || true",
            kubectl()
        ),
        secrets,
        false,
    )
    .await
    .map(|o| o.trim().to_string())
}

/// Delete a Node object (a machine that is gone for good). Absent is fine.
pub async fn delete_node(
    t: &dyn Transport,
    host: &str,
    node: &str,
    secrets: &dyn Redact,
) -> Result<(), HostError> {
    if !is_node_name(node) {
        return Err(HostError::Other {
            host: host.to_string(),
            message: format!("`{node}` is not a node name"),
        });
    }
    remote::run(
        t,
        host,
        &format!(
            "{} delete node {node} --ignore-not-found --wait=false",
            kubectl()
        ),
        secrets,
        false,
    )
    .await
    .map(|_| ())
}

/// A DNS-1123 subdomain (what Kubernetes accepts as a Node name); safe in a shell word.
pub fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn nodes_are_read_from_the_api_answer() {
        let json = r#"{"items":[
          {"metadata":{"name":"a"},"spec":{"unschedulable":true},"status":{"conditions":[{"type":"Ready","status":"True"}],"nodeInfo":{"kubeletVersion":"v1.20.2"}}},
          {"metadata":{"name":"b"},"status":{"conditions":[{"type":"Ready","status":"False"}]}},
          {"metadata":{"name":"c"},"status":{}}]}"#;
        let (ready, all) = super::ready_nodes(json).unwrap();
        assert_eq!(ready, ["a"]);
        assert_eq!(all, ["a", "b", "c"]);
        let n = super::parse_nodes(json).unwrap();
        assert_eq!(n[0].kubelet_version, "v1.20.2");
        assert!(n[0].unschedulable && !n[1].unschedulable);
        assert!(super::ready_nodes("nope").is_err());
    }
}
