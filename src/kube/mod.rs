//! The cluster's own operations, below the phases: kubectl on a control-plane node,
//! /readyz, node readiness, etcd members and health (`etcd`), and the kubeadm command
//! lines per version (`kubeadm`, one facade). Phases (bootstrap, and later upgrade and
//! recovery) call these; nothing here knows about playbooks or the state.

pub mod etcd;
pub mod etcdctl;
pub mod kubeadm;
pub mod lb;

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
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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

/// One field of a probe object (`kind` `endpoints` or `service`) by jsonpath, trimmed;
/// empty when the object or the field is not there (yet).
async fn probe_field(
    t: &dyn Transport,
    host: &str,
    kind: &str,
    jsonpath: &str,
    secrets: &dyn Redact,
) -> Result<String, HostError> {
    remote::run(
        t,
        host,
        &format!(
            "{} -n kube-system get {kind} {PROBE} -o jsonpath='{{{jsonpath}}}' 2>/dev/null || true",
            kubectl()
        ),
        secrets,
        false,
    )
    .await
    .map(|o| o.trim().to_string())
}

/// The addresses in the probe Service's Endpoints (empty: not filled in).
pub async fn probe_endpoints(
    t: &dyn Transport,
    host: &str,
    secrets: &dyn Redact,
) -> Result<String, HostError> {
    probe_field(t, host, "endpoints", ".subsets[*].addresses[*].ip", secrets).await
}

/// The addresses in a JSON Endpoints object (`subsets[*].addresses[*].ip`); anything
/// that is not one (a 404, an error text) has none.
pub fn endpoints_addresses(json: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    v["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a["ip"].as_str().map(str::to_string))
        .collect()
}

/// What the probe looks like through each watch cache an apiserver keeps: the Service,
/// its Pod, its Endpoints and its EndpointSlices (`discovery.k8s.io/v1beta1` before 1.21),
/// as `(kind, path)` asked with `resourceVersion=0` (served from the cache).
fn probe_views(minor: u64) -> [(&'static str, String); 4] {
    let ns = "/api/v1/namespaces/kube-system";
    let discovery = if minor < 21 { "v1beta1" } else { "v1" };
    [
        ("services", format!("{ns}/services/{PROBE}?resourceVersion=0")),
        ("pods", format!("{ns}/pods/{PROBE}?resourceVersion=0")),
        ("endpoints", format!("{ns}/endpoints/{PROBE}?resourceVersion=0")),
        (
            "endpointslices",
            format!(
                "/apis/discovery.k8s.io/{discovery}/namespaces/kube-system/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{PROBE}&resourceVersion=0"
            ),
        ),
    ]
}

/// The JSON document in kubectl's output (warnings may come first, with stderr merged).
fn json_in(out: &str) -> Option<serde_json::Value> {
    let start = out.find('{')?;
    serde_json::from_str(out[start..].trim()).ok()
}

/// Whether one cached view (see [`probe_views`]) shows the probe as etcd holds it.
pub fn view_current(kind: &str, out: &str) -> bool {
    let Some(v) = json_in(out) else {
        return false;
    };
    let json = v.to_string();
    let json = json.as_str();
    match kind {
        "services" | "pods" => v["metadata"]["name"] == PROBE,
        "endpoints" => !endpoints_addresses(json).is_empty(),
        "endpointslices" => v["items"].as_array().into_iter().flatten().any(|i| {
            i["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["addresses"].as_array().is_some_and(|a| !a.is_empty()))
        }),
        _ => false,
    }
}

/// The watch caches of the kube-apiserver at `apiserver` (`ip:port`, asked from `host`)
/// that miss the probe etcd holds. A stale cache means that apiserver's watch on etcd
/// for that resource is stuck, and every client watching the resource through it
/// (kube-proxy: Services and EndpointSlices; kubelets; controllers) stays blind to
/// changes (kubernetes/kubernetes#97294: the first apiserver after etcd member adds).
pub async fn stale_caches(
    t: &dyn Transport,
    host: &str,
    apiserver: &str,
    minor: u64,
    secrets: &dyn Redact,
) -> Result<Vec<&'static str>, HostError> {
    let views = probe_views(minor);
    let server = crate::transport::shell::quote(&format!("https://{apiserver}"));
    let script: Vec<String> = views
        .iter()
        .map(|(kind, path)| {
            format!(
                "echo '=={kind}'; {} --server={server} --request-timeout=5s get --raw {} 2>&1; echo",
                kubectl(),
                crate::transport::shell::quote(path)
            )
        })
        .collect();
    let out = remote::run(
        t,
        host,
        &format!("{}; true", script.join("; ")),
        secrets,
        false,
    )
    .await?;
    let mut stale = Vec::new();
    for (kind, _) in &views {
        let marker = format!("=={kind}\n");
        let body = out
            .split_once(&marker)
            .map(|(_, rest)| rest.split("\n==").next().unwrap_or_default())
            .unwrap_or_default();
        // An answer is JSON, or kubectl's NotFound for an object the cache lacks. Anything
        // else (connection refused, a certificate that does not name the address) is no
        // answer: not a stale cache, and no reason to restart anything.
        let answered = json_in(body).is_some() || body.contains("NotFound");
        if !answered {
            return Err(HostError::Other {
                host: host.to_string(),
                message: format!(
                    "the kube-apiserver at {apiserver} did not answer a read of its {kind} cache: {}",
                    body.trim()
                ),
            });
        }
        if !view_current(kind, body) {
            stale.push(*kind);
        }
    }
    Ok(stale)
}

/// The probe Service's ClusterIP (empty when it has none yet).
pub async fn probe_cluster_ip(
    t: &dyn Transport,
    host: &str,
    secrets: &dyn Redact,
) -> Result<String, HostError> {
    probe_field(t, host, "service", ".spec.clusterIP", secrets).await
}

/// Whether kube-proxy (iptables mode) on the machine behind `t` has programmed a rule
/// for the Service at `cluster_ip`.
pub async fn service_programmed(
    t: &dyn Transport,
    host: &str,
    cluster_ip: &std::net::IpAddr,
    secrets: &dyn Redact,
) -> Result<bool, HostError> {
    let out = remote::run(
        t,
        host,
        &format!(
            "if iptables-save -t nat | grep -q -- '-d {cluster_ip}/32'; then echo yes; else echo no; fi"
        ),
        secrets,
        false,
    )
    .await?;
    Ok(out.trim() == "yes")
}

/// Delete the kube-proxy Pods, of the Node `node` or (None) of every node, without
/// waiting: the DaemonSet starts new ones at once, and the rules the old ones programmed
/// stay in place meanwhile. Returns the Pods deleted (`pod/<name>`).
pub async fn replace_kube_proxies(
    t: &dyn Transport,
    host: &str,
    node: Option<&str>,
    secrets: &dyn Redact,
    verbose: bool,
) -> Result<Vec<String>, HostError> {
    let on = node
        .map(|n| {
            format!(
                " --field-selector {}",
                crate::transport::shell::quote(&format!("spec.nodeName={n}"))
            )
        })
        .unwrap_or_default();
    let out = remote::run(
        t,
        host,
        &format!(
            "{} -n kube-system delete pods -l k8s-app=kube-proxy{on} --wait=false -o name",
            kubectl()
        ),
        secrets,
        verbose,
    )
    .await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Stop the oldest process whose command line matches `pattern` (a static Pod's main
/// process: `^etcd `, `^kube-scheduler `) on the machine behind `t` with SIGTERM and wait
/// up to `limit_secs` until it is gone; kubelet starts the container again. Nothing runs:
/// nothing to do.
pub async fn restart_static_pod(
    t: &dyn Transport,
    host: &str,
    pattern: &str,
    limit_secs: u32,
    secrets: &dyn Redact,
) -> Result<(), HostError> {
    let what = pattern.trim_start_matches('^').trim();
    let cmd = format!(
        "pid=$(pgrep -o -f '{pattern}') || exit 0; kill \"$pid\"; \
for i in $(seq {limit_secs}); do kill -0 \"$pid\" 2>/dev/null || exit 0; sleep 1; done; \
echo \"{what} (pid $pid) did not stop within {limit_secs}s\" >&2; exit 1"
    );
    remote::run(t, host, &cmd, secrets, false).await.map(|_| ())
}

/// Stop the kube-apiserver of the machine behind `t` (SIGTERM: it shuts down
/// gracefully) and wait until the process is gone; kubelet starts the static pod's
/// container again. Callers wait for its /readyz.
pub async fn restart_apiserver(
    t: &dyn Transport,
    host: &str,
    secrets: &dyn Redact,
) -> Result<(), HostError> {
    restart_static_pod(t, host, "^kube-apiserver ", 90, secrets).await
}

/// The `ClusterStatus` of kubeadm before 1.22 (in the kubeadm-config ConfigMap) without
/// the control planes not in `keep`; None when nothing is to be removed. kubeadm adds an
/// entry per control-plane join and removes it only in `kubeadm reset` on that node, so
/// a machine that is gone for good leaves its entry behind (kubeadm#1300).
pub fn prune_cluster_status(
    configmap_json: &str,
    keep: &[String],
) -> Result<Option<(String, Vec<String>)>, String> {
    let v: serde_json::Value = serde_json::from_str(configmap_json)
        .map_err(|e| format!("kubeadm-config is not JSON ({e})"))?;
    let Some(text) = v["data"]["ClusterStatus"].as_str() else {
        return Ok(None);
    };
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("kubeadm-config ClusterStatus is not YAML ({e})"))?;
    let Some(endpoints) = doc
        .get_mut("apiEndpoints")
        .and_then(serde_yaml_ng::Value::as_mapping_mut)
    else {
        return Ok(None);
    };
    let stale: Vec<String> = endpoints
        .keys()
        .filter_map(|k| k.as_str())
        .filter(|k| !keep.iter().any(|n| n == k))
        .map(str::to_string)
        .collect();
    if stale.is_empty() {
        return Ok(None);
    }
    for k in &stale {
        endpoints.remove(k.as_str());
    }
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    Ok(Some((text, stale)))
}

/// Remove the `ClusterStatus` entries of control planes not in `keep` (kubeadm before
/// 1.22; later versions have none). Returns the names removed.
/// What the apiserver answers while etcd elects a leader or the apiserver restarts:
/// worth asking again a moment later.
pub fn transient_api_error(stderr: &str) -> bool {
    [
        "etcdserver: leader changed",
        "etcdserver: request timed out",
        "etcdserver: no leader",
        "etcdserver: too many requests",
        "the server is currently unable to handle the request",
        "connection refused",
        // kubectl's own words when the apiserver does not accept the connection.
        "was refused - did you specify the right host or port",
        "TLS handshake timeout",
        "http2: client connection lost",
        "context deadline exceeded",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// Run a kubectl command, asking again for up to a minute while the API answers with a
/// transient error (an etcd leader election after a member was removed, an apiserver
/// restarting).
pub async fn kubectl_retrying(
    t: &dyn Transport,
    host: &str,
    command: &str,
    secrets: &dyn Redact,
) -> Result<String, HostError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match remote::run(t, host, command, secrets, false).await {
            Err(HostError::Command(f))
                if transient_api_error(&f.stderr_tail) && Instant::now() < deadline =>
            {
                tracing::info!(host, error = %f.stderr_tail, "the API is busy: asking again");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            other => return other,
        }
    }
}

pub async fn remove_stale_api_endpoints(
    t: &dyn Transport,
    host: &str,
    keep: &[String],
    secrets: &dyn Redact,
) -> Result<Vec<String>, HostError> {
    let out = kubectl_retrying(
        t,
        host,
        &format!(
            "{} -n kube-system get configmap kubeadm-config -o json",
            kubectl()
        ),
        secrets,
    )
    .await?;
    let Some((text, stale)) =
        prune_cluster_status(&out, keep).map_err(|message| HostError::Other {
            host: host.to_string(),
            message,
        })?
    else {
        return Ok(Vec::new());
    };
    let patch = serde_json::json!({ "data": { "ClusterStatus": text } }).to_string();
    kubectl_retrying(
        t,
        host,
        &format!(
            "{} -n kube-system patch configmap kubeadm-config --type merge -p {}",
            kubectl(),
            crate::transport::shell::quote(&patch)
        ),
        secrets,
    )
    .await?;
    Ok(stale)
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
    kubectl_retrying(
        t,
        host,
        &format!(
            "{} delete node {node} --ignore-not-found --wait=false",
            kubectl()
        ),
        secrets,
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
    fn transient_api_errors_are_told_from_real_ones() {
        use super::transient_api_error;
        assert!(transient_api_error(
            "Error from server: etcdserver: leader changed"
        ));
        assert!(transient_api_error(
            "The connection to the server 10.0.0.1:6443 was refused - did you specify the right host or port?"
        ));
        assert!(!transient_api_error(
            "Error from server (NotFound): configmaps \"kubeadm-config\" not found"
        ));
        assert!(!transient_api_error(
            "error: the server doesn't have a resource type"
        ));
    }

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

    #[test]
    fn stale_api_endpoints_are_pruned_from_cluster_status() {
        let cm = serde_json::json!({"data": {"ClusterStatus":
            "apiEndpoints:\n  cp-1:\n    advertiseAddress: 10.0.0.10\n    bindPort: 6443\n  old-cp:\n    advertiseAddress: 10.0.0.99\n    bindPort: 6443\napiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterStatus\n"}}).to_string();
        let keep = vec!["cp-1".to_string(), "cp-2".to_string()];
        let (text, stale) = super::prune_cluster_status(&cm, &keep).unwrap().unwrap();
        assert_eq!(stale, ["old-cp"]);
        assert!(text.contains("cp-1") && !text.contains("old-cp") && !text.contains("10.0.0.99"));
        assert!(text.contains("kind: ClusterStatus"));
        assert!(
            super::prune_cluster_status(&cm, &["cp-1".into(), "old-cp".into()])
                .unwrap()
                .is_none()
        );
        // kubeadm 1.22+: no ClusterStatus at all.
        assert!(
            super::prune_cluster_status(r#"{"data":{"ClusterConfiguration":"x"}}"#, &keep)
                .unwrap()
                .is_none()
        );
        assert!(super::prune_cluster_status("nope", &keep).is_err());
    }

    #[test]
    fn cached_views_of_the_probe_are_judged() {
        use super::{view_current, PROBE};
        let svc = format!(r#"{{"kind":"Service","metadata":{{"name":"{PROBE}"}}}}"#);
        assert!(view_current("services", &svc));
        assert!(!view_current("services", r#"{"kind":"Status","code":404}"#));
        assert!(!view_current("pods", ""));
        let eps = r#"{"subsets":[{"addresses":[{"ip":"10.244.1.5"}]}]}"#;
        assert!(view_current("endpoints", eps));
        assert!(!view_current("endpoints", r#"{"subsets":[]}"#));
        let slices = r#"{"items":[{"endpoints":[{"addresses":["10.244.1.5"]}]}]}"#;
        assert!(view_current("endpointslices", slices));
        assert!(!view_current("endpointslices", r#"{"items":[]}"#));
        assert!(!view_current(
            "endpointslices",
            r#"{"items":[{"endpoints":null}]}"#
        ));
    }

    #[test]
    fn endpoints_addresses_are_read_and_anything_else_has_none() {
        let json = r#"{"kind":"Endpoints","subsets":[{"addresses":[{"ip":"10.244.1.5"},{"ip":"10.244.2.7"}]},{"notReadyAddresses":[{"ip":"10.244.3.1"}]}]}"#;
        assert_eq!(
            super::endpoints_addresses(json),
            ["10.244.1.5", "10.244.2.7"]
        );
        assert!(super::endpoints_addresses(r#"{"kind":"Endpoints"}"#).is_empty());
        assert!(super::endpoints_addresses("Error from server (NotFound)").is_empty());
        assert!(super::endpoints_addresses("").is_empty());
    }
}
