//! Desired objects per addon: upstream manifests (fetched, verified, parsed, labelled,
//! customised) plus the objects kubeforge renders from the cluster file.

use super::catalogue::{self, AddonId, MetallbFlavour, Release};
use super::{AddonsError, LABEL_ADDON};
use crate::artifacts::fetch::{fetch_pinned, Cache, Fetcher};
use crate::artifacts::{Location, Source};
use crate::spec::{Cni, IngressController, LoadedCluster, MetalLbMode};
use crate::state::ObjectRef;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// When an object is applied: Namespaces and CRDs first (then CRDs must be
/// Established), then the upstream rest, then what kubeforge renders (which needs the
/// addon's CRDs and admission webhooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Foundation,
    Workload,
    Config,
}

#[derive(Debug, Clone)]
pub struct Object {
    pub addon: AddonId,
    /// The upstream file it came from, or `kubeforge` for rendered objects.
    pub origin: String,
    pub stage: Stage,
    pub value: Value,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

impl Object {
    pub fn api_version(&self) -> &str {
        str_at(&self.value, &["apiVersion"]).unwrap_or_default()
    }
    pub fn kind(&self) -> &str {
        str_at(&self.value, &["kind"]).unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        str_at(&self.value, &["metadata", "name"]).unwrap_or_default()
    }
    pub fn namespace(&self) -> Option<&str> {
        str_at(&self.value, &["metadata", "namespace"])
    }
    /// `(group, version)` of the apiVersion (`v1` is the core group "").
    pub fn group_version(&self) -> (&str, &str) {
        split_api_version(self.api_version())
    }
    pub fn reference(&self) -> ObjectRef {
        ObjectRef {
            api_version: self.api_version().to_string(),
            kind: self.kind().to_string(),
            namespace: self.namespace().map(str::to_string),
            name: self.name().to_string(),
        }
    }
    pub fn describe(&self) -> String {
        self.reference().to_string()
    }
}

pub fn split_api_version(av: &str) -> (&str, &str) {
    match av.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", av),
    }
}

/// One addon's desired objects, in application order.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub addon: AddonId,
    pub version: String,
    pub objects: Vec<Object>,
    /// Things the operator should know (legacy choices, defaults taken).
    pub notes: Vec<String>,
}

impl Bundle {
    pub fn title(&self) -> String {
        format!("{} {}", self.addon.title(), self.version)
    }
}

/// The addons the cluster file asks for, with their pinned releases.
pub fn wanted(c: &LoadedCluster) -> Result<Vec<Release>, AddonsError> {
    let a = &c.cluster.spec.addons;
    let mut out = Vec::new();
    let k8s = c.version();
    let mut add = |addon: AddonId, version: &Option<String>, flavour: MetallbFlavour| {
        // The cluster file was validated against the same matrix; this only fails for
        // a cluster built by hand.
        let chosen = catalogue::select(addon, version.as_deref(), &k8s)
            .map_err(AddonsError::Incompatible)?;
        match catalogue::release(addon, chosen.version, flavour) {
            Some(r) => {
                out.push(r);
                Ok(())
            }
            None => Err(AddonsError::UnknownVersion {
                addon,
                version: chosen.version.to_string(),
                known: catalogue::known_versions(addon).join(", "),
            }),
        }
    };
    // The pod network first: nodes are not Ready without it.
    match c.cluster.spec.networking.cni {
        Cni::Flannel => add(AddonId::Flannel, &None, MetallbFlavour::Native)?,
        Cni::Calico => add(AddonId::Calico, &None, MetallbFlavour::Native)?,
        Cni::Bridge | Cni::None => {}
    }
    if let Some(m) = &a.metallb {
        let flavour = match m.mode {
            MetalLbMode::L2 => MetallbFlavour::Native,
            MetalLbMode::Bgp => MetallbFlavour::Frr,
        };
        add(AddonId::Metallb, &m.version, flavour)?;
    }
    if let Some(i) = &a.ingress {
        let id = match i.controller {
            IngressController::Contour => AddonId::Contour,
            IngressController::IngressNginx => AddonId::IngressNginx,
        };
        add(id, &i.version, MetallbFlavour::Native)?;
    }
    if let Some(r) = &a.rook_ceph {
        add(AddonId::RookCeph, &r.version, MetallbFlavour::Native)?;
    }
    Ok(out)
}

/// Fetch (verified against the pinned sha256, cached), parse and complete every addon
/// the cluster file asks for.
pub async fn load(c: &LoadedCluster, cache: &Cache) -> Result<Vec<Bundle>, AddonsError> {
    let releases = wanted(c)?;
    if releases.is_empty() {
        return Ok(Vec::new());
    }
    let source = Source::from_spec(c.cluster.spec.artifacts.mirror.as_deref(), &c.base_dir)
        .map_err(|source| AddonsError::Fetch {
            addon: releases[0].addon,
            source,
        })?;
    let fetcher = Fetcher::new();
    let mut bundles = Vec::new();
    for r in releases {
        let mut objects = Vec::new();
        for f in &r.files {
            let loc = match &source {
                Source::Upstream { .. } => Location::Url(f.url.clone()),
                mirror => mirror.location(&f.mirror_path(r.addon, &r.version)),
            };
            let name = format!("{}-{}-{}", r.addon, r.version, f.name);
            let (path, _, _) = fetch_pinned(&fetcher, &loc, f.sha256, cache, &name)
                .await
                .map_err(|source| AddonsError::Fetch {
                    addon: r.addon,
                    source,
                })?;
            let text =
                tokio::fs::read_to_string(&path)
                    .await
                    .map_err(|e| AddonsError::Manifest {
                        addon: r.addon,
                        message: format!("cannot read the cached {}: {e}", path.display()),
                    })?;
            objects.extend(parse(r.addon, &loc.to_string(), &text)?);
        }
        bundles.push(complete(c, &r, objects)?);
    }
    Ok(bundles)
}

/// Parse a multi-document manifest (`List` kinds are flattened) into objects labelled
/// for `addon`, with the Service/container port protocols spelled out.
pub fn parse(addon: AddonId, file: &str, text: &str) -> Result<Vec<Object>, AddonsError> {
    let origin = file.rsplit('/').next().unwrap_or(file).to_string();
    let docs = super::yaml::documents(text).map_err(|(doc, message)| AddonsError::Parse {
        file: file.to_string(),
        doc,
        message,
    })?;
    let mut out = Vec::new();
    for (i, value) in docs.into_iter().enumerate() {
        let bad = |message: String| AddonsError::Parse {
            file: file.to_string(),
            doc: i + 1,
            message,
        };
        let items = match value {
            Value::Null => continue,
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => m
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            v => vec![v],
        };
        for mut v in items {
            for field in [&["apiVersion"][..], &["kind"], &["metadata", "name"]] {
                if str_at(&v, field).is_none_or(str::is_empty) {
                    return Err(bad(format!("no {}", field.join("."))));
                }
            }
            label(&mut v, addon);
            fill_protocols(&mut v);
            // Status is the server's: older generated CRDs ship an empty one
            // (`acceptedNames`, `conditions`, `storedVersions`), which, applied, would
            // conflict with kube-apiserver's own on every re-apply.
            if let Some(m) = v.as_object_mut() {
                m.remove("status");
            }
            let kind = str_at(&v, &["kind"]).unwrap_or_default();
            let stage = match kind {
                "Namespace" | "CustomResourceDefinition" => Stage::Foundation,
                _ => Stage::Workload,
            };
            out.push(Object {
                addon,
                origin: origin.clone(),
                stage,
                value: v,
            });
        }
    }
    Ok(out)
}

fn label(v: &mut Value, addon: AddonId) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if !labels.is_object() {
            *labels = Value::Object(Map::new());
        }
        if let Some(l) = labels.as_object_mut() {
            l.insert(LABEL_ADDON.into(), Value::String(addon.as_str().into()));
        }
    }
}

/// `protocol: TCP` where ports leave it out. It is the API default, so the object means
/// the same; server-side apply needs it on Kubernetes 1.20 and older, whose list-map
/// keys (port, protocol) have no default (fixed in 1.21).
fn fill_protocols(v: &mut Value) {
    fn ports(list: Option<&mut Value>) {
        if let Some(items) = list.and_then(Value::as_array_mut) {
            for p in items.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol")
                    .or_insert_with(|| Value::String("TCP".into()));
            }
        }
    }
    fn pod_spec(spec: Option<&mut Value>) {
        let Some(spec) = spec else { return };
        for key in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
                for c in cs {
                    ports(c.get_mut("ports"));
                }
            }
        }
    }
    let kind = str_at(v, &["kind"]).unwrap_or_default().to_string();
    match kind.as_str() {
        "Service" => ports(v.pointer_mut("/spec/ports")),
        "Pod" => pod_spec(v.get_mut("spec")),
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
            pod_spec(v.pointer_mut("/spec/template/spec"))
        }
        "CronJob" => pod_spec(v.pointer_mut("/spec/jobTemplate/spec/template/spec")),
        _ => {}
    }
}

/// Customise the upstream objects for this cluster and add the ones kubeforge renders.
pub fn complete(
    c: &LoadedCluster,
    r: &Release,
    mut objects: Vec<Object>,
) -> Result<Bundle, AddonsError> {
    let a = &c.cluster.spec.addons;
    let mut notes = Vec::new();
    let pod_subnet = c.cluster.spec.networking.pod_subnet.as_str();
    match r.addon {
        AddonId::Flannel => flannel_network(&mut objects, pod_subnet)?,
        AddonId::Calico => calico_pool(&mut objects, pod_subnet)?,
        AddonId::Metallb => {
            if let Some(m) = &a.metallb {
                objects.extend(metallb_objects(m));
            }
        }
        AddonId::Contour | AddonId::IngressNginx => {
            if let Some(i) = &a.ingress {
                let (ns, name) = match r.addon {
                    AddonId::Contour => ("projectcontour", "envoy"),
                    _ => {
                        notes.push(
                            "ingress-nginx is a legacy choice: it was retired upstream in March 2026 and gets no more fixes; Contour (the default) is maintained"
                                .into(),
                        );
                        ("ingress-nginx", "ingress-nginx-controller")
                    }
                };
                let svc = objects
                    .iter_mut()
                    .find(|o| {
                        o.kind() == "Service" && o.name() == name && o.namespace() == Some(ns)
                    })
                    .ok_or_else(|| AddonsError::Manifest {
                        addon: r.addon,
                        message: format!(
                            "the manifest has no Service {ns}/{name} to expose through MetalLB"
                        ),
                    })?;
                expose(
                    &mut svc.value,
                    i.pool.as_deref(),
                    i.load_balancer_ip.as_deref(),
                );
            }
        }
        AddonId::RookCeph => {
            if let Some(rc) = &a.rook_ceph {
                let workers: Vec<String> = c
                    .topology
                    .workers()
                    .iter()
                    .map(|h| h.name.clone())
                    .collect();
                let image = r.ceph_image.unwrap_or("quay.io/ceph/ceph:v20.2.4");
                objects.push(rendered(
                    AddonId::RookCeph,
                    ceph_cluster(rc, &workers, image, &r.version),
                ));
            }
        }
    }
    // Stable: upstream order is kept inside a stage and a kind.
    objects.sort_by_key(|o| (o.stage, kind_rank(o.kind())));
    Ok(Bundle {
        addon: r.addon,
        version: r.version.clone(),
        objects,
        notes,
    })
}

/// Flannel's network is `net-conf.json`'s `Network` in the kube-flannel-cfg ConfigMap:
/// the cluster's pod subnet (kube-controller-manager hands each node a /24 of it).
fn flannel_network(objects: &mut [Object], pod_subnet: &str) -> Result<(), AddonsError> {
    let bad = |message: String| AddonsError::Manifest {
        addon: AddonId::Flannel,
        message,
    };
    let cm = objects
        .iter_mut()
        .find(|o| o.kind() == "ConfigMap" && o.name() == "kube-flannel-cfg")
        .ok_or_else(|| bad("the manifest has no ConfigMap kube-flannel-cfg".into()))?;
    let text = cm
        .value
        .pointer("/data/net-conf.json")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("kube-flannel-cfg has no data.net-conf.json".into()))?;
    let mut conf: Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("kube-flannel-cfg data.net-conf.json: {e}")))?;
    conf["Network"] = json!(pod_subnet);
    let text = serde_json::to_string_pretty(&conf).unwrap_or_default() + "\n";
    cm.value["data"]["net-conf.json"] = Value::String(text);
    Ok(())
}

/// Calico's IPv4 pool is the calico-node container's `CALICO_IPV4POOL_CIDR` (commented
/// out upstream): the cluster's pod subnet.
fn calico_pool(objects: &mut [Object], pod_subnet: &str) -> Result<(), AddonsError> {
    let ds = objects
        .iter_mut()
        .find(|o| o.kind() == "DaemonSet" && o.name() == "calico-node")
        .ok_or_else(|| AddonsError::Manifest {
            addon: AddonId::Calico,
            message: "the manifest has no DaemonSet calico-node".into(),
        })?;
    let containers = ds
        .value
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut);
    let node = containers
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == "calico-node"))
        .ok_or_else(|| AddonsError::Manifest {
            addon: AddonId::Calico,
            message: "DaemonSet calico-node has no calico-node container".into(),
        })?;
    let env = node
        .as_object_mut()
        .map(|m| m.entry("env").or_insert_with(|| json!([])));
    if let Some(list) = env.and_then(Value::as_array_mut) {
        list.retain(|e| e["name"] != "CALICO_IPV4POOL_CIDR");
        list.push(json!({"name": "CALICO_IPV4POOL_CIDR", "value": pod_subnet}));
    }
    Ok(())
}

/// Order inside a stage: identities and RBAC before what runs with them, admission
/// webhooks last so they never judge the addon's own objects half-installed.
fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "ServiceAccount" => 2,
        "ClusterRole" | "Role" => 3,
        "ClusterRoleBinding" | "RoleBinding" => 4,
        "ConfigMap" | "Secret" => 5,
        "Service" => 6,
        "Deployment" | "DaemonSet" | "StatefulSet" | "Job" => 7,
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => 9,
        _ => 8,
    }
}

fn rendered(addon: AddonId, mut value: Value) -> Object {
    label(&mut value, addon);
    Object {
        addon,
        origin: "kubeforge".into(),
        stage: Stage::Config,
        value,
    }
}

/// A LoadBalancer Service taking its address from MetalLB (`metallb.io/address-pool`,
/// `metallb.io/loadBalancerIPs`).
fn expose(svc: &mut Value, pool: Option<&str>, ip: Option<&str>) {
    if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("type".into(), Value::String("LoadBalancer".into()));
    }
    let mut annotations = Vec::new();
    if let Some(p) = pool {
        annotations.push(("metallb.io/address-pool", p));
    }
    if let Some(ip) = ip {
        annotations.push(("metallb.io/loadBalancerIPs", ip));
    }
    if annotations.is_empty() {
        return;
    }
    if let Some(meta) = svc.get_mut("metadata").and_then(Value::as_object_mut) {
        let a = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(a) = a.as_object_mut() {
            for (k, v) in annotations {
                a.insert(k.into(), Value::String(v.into()));
            }
        }
    }
}

const METALLB_NS: &str = "metallb-system";

fn metallb_objects(m: &crate::spec::MetalLb) -> Vec<Object> {
    let mut out = Vec::new();
    let pools: Vec<&str> = m.pools.iter().map(|p| p.name.as_str()).collect();
    for p in &m.pools {
        out.push(json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": p.name, "namespace": METALLB_NS},
            "spec": {
                "addresses": p.addresses,
                "autoAssign": p.auto_assign,
                "avoidBuggyIPs": p.avoid_buggy_ips,
            }
        }));
    }
    match (m.mode, &m.bgp) {
        (MetalLbMode::Bgp, Some(b)) => {
            for peer in &b.peers {
                let mut spec = json!({
                    "myASN": b.my_asn,
                    "peerASN": peer.asn,
                    "peerAddress": peer.address,
                });
                if let Some(port) = peer.port {
                    spec["peerPort"] = json!(port);
                }
                if let Some(h) = &peer.hold_time {
                    spec["holdTime"] = json!(h);
                }
                if let Some(s) = &peer.password_secret {
                    spec["passwordSecret"] = json!({"name": s, "namespace": METALLB_NS});
                }
                if !peer.nodes.is_empty() {
                    spec["nodeSelectors"] = json!([{"matchExpressions": [{
                        "key": "kubernetes.io/hostname",
                        "operator": "In",
                        "values": peer.nodes,
                    }]}]);
                }
                out.push(json!({
                    "apiVersion": "metallb.io/v1beta2",
                    "kind": "BGPPeer",
                    "metadata": {"name": peer_name(&peer.address), "namespace": METALLB_NS},
                    "spec": spec,
                }));
            }
            let mut spec = json!({ "ipAddressPools": pools });
            if !b.communities.is_empty() {
                spec["communities"] = json!(b.communities);
            }
            out.push(json!({
                "apiVersion": "metallb.io/v1beta1",
                "kind": "BGPAdvertisement",
                "metadata": {"name": "kubeforge", "namespace": METALLB_NS},
                "spec": spec,
            }));
        }
        _ => {
            let mut spec = json!({ "ipAddressPools": pools });
            if !m.interfaces.is_empty() {
                spec["interfaces"] = json!(m.interfaces);
            }
            out.push(json!({
                "apiVersion": "metallb.io/v1beta1",
                "kind": "L2Advertisement",
                "metadata": {"name": "kubeforge", "namespace": METALLB_NS},
                "spec": spec,
            }));
        }
    }
    out.into_iter()
        .map(|v| rendered(AddonId::Metallb, v))
        .collect()
}

/// `peer-10-0-0-1` / `peer-fd00--1`: a valid object name from a peer address.
fn peer_name(address: &str) -> String {
    let s: String = address
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("peer-{}", s.trim_matches('-'))
}

fn ceph_cluster(
    r: &crate::spec::RookCeph,
    workers: &[String],
    image: &str,
    rook_version: &str,
) -> Value {
    let nodes: Vec<Value> = if r.nodes.is_empty() {
        workers.iter().map(|w| json!({"name": w})).collect()
    } else {
        r.nodes
            .iter()
            .map(|n| {
                let mut v = json!({"name": n.name});
                if !n.devices.is_empty() {
                    v["devices"] = Value::Array(
                        n.devices
                            .iter()
                            .map(|d| json!({"name": d.trim_start_matches("/dev/")}))
                            .collect(),
                    );
                }
                if let Some(f) = &n.device_filter {
                    v["deviceFilter"] = json!(f);
                }
                v
            })
            .collect()
    };
    let mut storage = json!({
        "useAllNodes": false,
        "useAllDevices": false,
        "nodes": nodes,
    });
    // The OSD store type: `storage.store.type` from Rook v1.11; before, the
    // `storeType` OSD config setting (v1.10's CRD has no `store` and would prune it).
    if rook_version.starts_with("v1.10.") {
        storage["config"] = json!({"storeType": "bluestore"});
    } else {
        storage["store"] = json!({"type": "bluestore"});
    }
    if let Some(f) = &r.device_filter {
        storage["deviceFilter"] = json!(f);
    }
    json!({
        "apiVersion": "ceph.rook.io/v1",
        "kind": "CephCluster",
        "metadata": {"name": "rook-ceph", "namespace": "rook-ceph"},
        "spec": {
            "cephVersion": {"image": image},
            "dataDirHostPath": r.data_dir_host_path,
            "mon": {"count": r.mon_count, "allowMultiplePerNode": false},
            "mgr": {"count": 2, "allowMultiplePerNode": false},
            "dashboard": {"enabled": true},
            "storage": storage,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cni_manifests_get_the_pod_subnet() {
        let flannel = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kube-flannel-cfg, namespace: kube-flannel}\ndata:\n  net-conf.json: |\n    {\n      \"Network\": \"10.244.0.0/16\",\n      \"Backend\": {\"Type\": \"vxlan\"}\n    }\n";
        let mut objs = parse(AddonId::Flannel, "/m/kube-flannel.yml", flannel).unwrap();
        flannel_network(&mut objs, "10.200.0.0/16").unwrap();
        let net: Value =
            serde_json::from_str(objs[0].value["data"]["net-conf.json"].as_str().unwrap()).unwrap();
        assert_eq!(
            net,
            json!({"Network": "10.200.0.0/16", "Backend": {"Type": "vxlan"}})
        );

        let calico = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: calico-node, namespace: kube-system}\nspec:\n  template:\n    spec:\n      containers:\n      - name: calico-node\n        env:\n        - {name: CALICO_DISABLE_FILE_LOGGING, value: \"true\"}\n";
        let mut objs = parse(AddonId::Calico, "/m/calico.yaml", calico).unwrap();
        calico_pool(&mut objs, "10.200.0.0/16").unwrap();
        let env = &objs[0].value["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(
            env[1],
            json!({"name": "CALICO_IPV4POOL_CIDR", "value": "10.200.0.0/16"})
        );
        assert!(calico_pool(&mut [], "10.200.0.0/16").is_err());
    }

    #[test]
    fn upstream_status_is_left_to_the_server() {
        let text = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: a.b.c}\nspec: {group: b.c}\nstatus:\n  acceptedNames: {kind: \"\", plural: \"\"}\n  conditions: []\n  storedVersions: []\n";
        let objs = parse(AddonId::Contour, "/m/contour.yaml", text).unwrap();
        assert!(objs[0].value.get("status").is_none(), "{}", objs[0].value);
        assert!(objs[0].value.get("spec").is_some());
    }

    #[test]
    fn parse_labels_flattens_lists_and_fills_protocols() {
        let text = "---\n# only a comment\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: x}\n  spec:\n    ports:\n    - port: 80\n    - port: 53\n      protocol: UDP\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d, namespace: x}\n  spec:\n    template:\n      spec:\n        containers:\n        - name: c\n          ports: [{containerPort: 8080}]\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
        let objs = parse(AddonId::Contour, "/m/contour.yaml", text).unwrap();
        assert_eq!(objs.len(), 3);
        assert_eq!(objs[0].value["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(objs[0].value["spec"]["ports"][1]["protocol"], "UDP");
        assert_eq!(
            objs[1].value["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"],
            "TCP"
        );
        assert_eq!(objs[2].stage, Stage::Foundation);
        assert_eq!(objs[2].origin, "contour.yaml");
        for o in &objs {
            assert_eq!(o.value["metadata"]["labels"][LABEL_ADDON], "contour");
        }
    }

    #[test]
    fn parse_errors_name_the_file_and_document() {
        let e = parse(
            AddonId::Metallb,
            "m.yaml",
            "kind: A\n---\napiVersion: v1\nkind: B\nmetadata: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "m.yaml: document 1: no apiVersion");
        let e = parse(
            AddonId::Metallb,
            "m.yaml",
            "apiVersion: v1\nkind: B\nmetadata: {name: [\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("m.yaml: document 1: "), "{e}");
    }

    #[test]
    fn peer_names_are_valid_object_names() {
        assert_eq!(peer_name("10.0.0.1"), "peer-10-0-0-1");
        assert_eq!(peer_name("FD00::1"), "peer-fd00--1");
    }
}
