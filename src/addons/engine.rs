//! Talking to the API server: discovery check, ordered server-side apply, waits, diffs,
//! pruning and removal, readiness.

use super::manifest::{split_api_version, Bundle, Object, Stage};
use super::{AddonsError, FIELD_MANAGER, LABEL_ADDON};
use crate::state::{AddonRecord, ObjectRef, StateDocument};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How addons are applied.
#[derive(Debug, Clone)]
pub struct AddonOptions {
    /// Take over fields another manager owns instead of reporting the conflict.
    pub force_conflicts: bool,
    /// Wait until every addon's workloads are available (and Ceph healthy).
    pub wait: bool,
    /// Limit for each wait: CRDs Established, webhooks answering, readiness.
    pub timeout: Duration,
}

impl Default for AddonOptions {
    fn default() -> Self {
        AddonOptions {
            force_conflicts: false,
            wait: false,
            timeout: Duration::from_secs(300),
        }
    }
}

/// How an object of a kind is addressed.
#[derive(Debug, Clone)]
struct Resolved {
    ar: ApiResource,
    namespaced: bool,
}

type GvkKey = (String, String, String);

fn key(api_version: &str, kind: &str) -> GvkKey {
    let (g, v) = split_api_version(api_version);
    (g.to_string(), v.to_string(), kind.to_string())
}

/// What `plan` would do to one object.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectChange {
    pub addon: String,
    pub object: String,
    /// create | update | unchanged | delete | keep
    pub action: &'static str,
    /// Unified diff (live -> desired) for updates; a reason for `keep`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What one addon's apply did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AddonOutcome {
    pub addon: String,
    pub version: String,
    pub created: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub deleted: usize,
    /// The objects an apply changed (not created), for the operator to review.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_objects: Vec<String>,
    /// Removed from the cluster file: everything kubeforge had applied was deleted.
    pub removed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl AddonOutcome {
    pub fn line(&self) -> String {
        if self.removed {
            return format!("{} removed: {} objects deleted", self.addon, self.deleted);
        }
        format!(
            "{} {}: {} created, {} changed, {} unchanged, {} pruned",
            self.addon, self.version, self.created, self.changed, self.unchanged, self.deleted
        )
    }
}

/// Rollout status of one workload (or Ceph's health).
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadStatus {
    pub object: String,
    pub ready: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AddonStatus {
    pub addon: String,
    pub version: String,
    pub ready: bool,
    pub workloads: Vec<WorkloadStatus>,
}

impl AddonStatus {
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{} {}: {}",
            self.addon,
            self.version,
            if self.ready { "ready" } else { "not ready" }
        )];
        for w in &self.workloads {
            out.push(format!(
                "  {} {}: {}",
                if w.ready { "ok  " } else { "wait" },
                w.object,
                w.detail
            ));
        }
        out
    }
}

/// A change to the recorded addons.
pub type RecordFn = Box<dyn for<'m> FnOnce(&'m mut BTreeMap<String, AddonRecord>) + Send>;

/// Persisting what was applied. `apply` records through this so that the phase (state
/// handle under the lock) and the `addons` command share one engine.
#[async_trait::async_trait]
pub trait Recorder: Send + Sync {
    async fn record(&self, f: RecordFn) -> Result<(), AddonsError>;
}

#[async_trait::async_trait]
impl Recorder for crate::phase::StateHandle {
    async fn record(&self, f: RecordFn) -> Result<(), AddonsError> {
        self.update(|doc: &mut StateDocument| f(&mut doc.addons))
            .await
            .map_err(AddonsError::State)
    }
}

pub struct Engine {
    client: Client,
    opts: AddonOptions,
    server_version: String,
    /// Minor version of the server (`20` for v1.20.2).
    server_minor: u32,
}

fn api_message(e: &kube::Error) -> Option<(u16, String)> {
    match e {
        kube::Error::Api(r) => Some((r.code, r.message.clone())),
        _ => None,
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(api_message(e), Some((404, _)))
}

/// An admission webhook that is not serving yet (no endpoints, connection refused, TLS
/// not ready): worth waiting for.
fn is_webhook_unavailable(e: &kube::Error) -> bool {
    match api_message(e) {
        Some((code, msg)) => code >= 500 && msg.contains("webhook"),
        None => false,
    }
}

/// Remove the entry `key` from every object below `v` where `unwanted` says so (given
/// the entry's value); returns how many were removed.
fn strip(v: &mut Value, key: &str, unwanted: &dyn Fn(&Value) -> bool) -> usize {
    match v {
        Value::Object(m) => {
            let mut n = 0;
            if m.get(key).is_some_and(unwanted) {
                m.remove(key);
                n += 1;
            }
            for child in m.values_mut() {
                n += strip(child, key, unwanted);
            }
            n
        }
        Value::Array(a) => a.iter_mut().map(|c| strip(c, key, unwanted)).sum(),
        _ => 0,
    }
}

/// Remove object-valued `default`s below `v` that hold an empty string somewhere
/// (Contour v1.19's ContourConfiguration defaults `envoy` with
/// `listener.connectionBalancer: ""`, a required member): the test bed's v1.20.2 server
/// reads that string back as null and rejects the CRD, on create as on server-side
/// apply, and dropping only the member leaves the default without a required field.
/// Returns how many were removed.
fn strip_defaults_holding_empty_strings(v: &mut Value) -> usize {
    fn holds_empty(d: &Value) -> bool {
        match d {
            Value::String(s) => s.is_empty(),
            Value::Object(m) => m.values().any(holds_empty),
            Value::Array(a) => a.iter().any(holds_empty),
            _ => false,
        }
    }
    strip(v, "default", &|d| !d.is_string() && holds_empty(d))
}

/// Remove what the server adds or bumps on every write, for diffs.
fn comparable(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "managedFields",
            "resourceVersion",
            "generation",
            "uid",
            "creationTimestamp",
            "selfLink",
        ] {
            meta.remove(k);
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

fn to_yaml(v: &Value) -> String {
    serde_yaml_ng::to_string(v).unwrap_or_else(|_| v.to_string())
}

fn unified(old: &str, new: &str, what: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live {what}"), &format!("desired {what}"))
        .to_string()
}

/// Order for deleting: the reverse of applying (custom resources and webhooks first,
/// CRDs and Namespaces last).
fn delete_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 9,
        "CustomResourceDefinition" => 8,
        "ServiceAccount" | "ClusterRole" | "Role" | "ClusterRoleBinding" | "RoleBinding" => 7,
        "ConfigMap" | "Secret" | "Service" => 6,
        "Deployment" | "DaemonSet" | "StatefulSet" | "Job" => 5,
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => 1,
        _ => 0,
    }
}

impl Engine {
    /// A client from a kubeconfig (YAML), optionally reaching the server at another
    /// address (`via`, a tunnel) while checking its certificate for the kubeconfig's
    /// server name.
    pub async fn connect(
        kubeconfig: &str,
        via: Option<String>,
        opts: AddonOptions,
    ) -> Result<Engine, AddonsError> {
        let kc = Kubeconfig::from_yaml(kubeconfig)
            .map_err(|e| AddonsError::Kubeconfig(e.to_string()))?;
        let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| AddonsError::Kubeconfig(e.to_string()))?;
        if let Some(url) = via {
            let name = config
                .cluster_url
                .host()
                .map(|h| h.trim_matches(['[', ']']).to_string());
            config.cluster_url = url
                .parse()
                .map_err(|e| AddonsError::Kubeconfig(format!("tunnel address {url}: {e}")))?;
            if config.tls_server_name.is_none() {
                config.tls_server_name = name;
            }
        }
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(Duration::from_secs(60));
        let client = Client::try_from(config).map_err(|source| AddonsError::Connect {
            action: "building the client".into(),
            source: Box::new(source),
        })?;
        let info = client
            .apiserver_version()
            .await
            .map_err(|source| AddonsError::Connect {
                action: "GET /version".into(),
                source: Box::new(source),
            })?;
        let server_minor = info.minor.trim_end_matches('+').parse().unwrap_or(u32::MAX);
        Ok(Engine {
            client,
            opts,
            server_version: info.git_version,
            server_minor,
        })
    }

    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// Fit CRDs to an older server: schema fields it predates are dropped (an older
    /// server drops them itself on a plain create, but server-side apply refuses them),
    /// each such change noted on its bundle. CEL rules (`x-kubernetes-validations`,
    /// Kubernetes 1.25+) and `selectableFields` (1.30+) are the ones upstream uses.
    pub fn adapt(&self, bundles: &mut [Bundle]) {
        for b in bundles {
            let mut cel = 0;
            let mut selectable = 0;
            let mut empty_defaults = 0;
            for o in b.objects.iter_mut() {
                if o.kind() != "CustomResourceDefinition" {
                    continue;
                }
                let Some(versions) = o
                    .value
                    .pointer_mut("/spec/versions")
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for v in versions {
                    if self.server_minor < 25 {
                        if let Some(schema) = v.get_mut("schema") {
                            cel += strip(schema, "x-kubernetes-validations", &|_| true);
                            empty_defaults += strip(schema, "default", &|d| d.as_str() == Some(""));
                            empty_defaults += strip_defaults_holding_empty_strings(schema);
                        }
                    }
                    if self.server_minor < 30 {
                        if let Some(m) = v.as_object_mut() {
                            selectable += usize::from(m.remove("selectableFields").is_some());
                        }
                    }
                }
            }
            if cel > 0 {
                b.notes.push(format!(
                    "Kubernetes {} predates CEL validation rules in CRDs (1.25): {cel} rule set(s) left out of {}'s CRDs; those checks are not enforced by the API server",
                    self.server_version,
                    b.title()
                ));
            }
            if empty_defaults > 0 {
                b.notes.push(format!(
                    "Kubernetes {}'s server-side apply turns empty-string defaults in CRD schemas into null and rejects them: {empty_defaults} empty-string default(s) left out of {}'s CRDs",
                    self.server_version,
                    b.title()
                ));
            }
            if selectable > 0 {
                b.notes.push(format!(
                    "Kubernetes {} predates CRD selectableFields (1.30): left out of {selectable} CRD version(s) of {}",
                    self.server_version,
                    b.title()
                ));
            }
        }
    }

    /// Resources the server serves for `api_version` (empty when it serves none).
    async fn discover(
        &self,
        api_version: &str,
        cache: &mut HashMap<String, Vec<(String, Resolved)>>,
    ) -> Result<Vec<(String, Resolved)>, AddonsError> {
        if let Some(r) = cache.get(api_version) {
            return Ok(r.clone());
        }
        let (group, version) = split_api_version(api_version);
        let list = if group.is_empty() {
            self.client.list_core_api_resources(version).await
        } else {
            self.client.list_api_group_resources(api_version).await
        };
        let out = match list {
            Ok(list) => list
                .resources
                .into_iter()
                .filter(|r| !r.name.contains('/'))
                .map(|r| {
                    let gvk = GroupVersionKind::gvk(group, version, &r.kind);
                    (
                        r.kind.clone(),
                        Resolved {
                            ar: ApiResource::from_gvk_with_plural(&gvk, &r.name),
                            namespaced: r.namespaced,
                        },
                    )
                })
                .collect(),
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(source) => {
                return Err(AddonsError::Connect {
                    action: format!("discovery of {api_version}"),
                    source: Box::new(source),
                })
            }
        };
        cache.insert(api_version.to_string(), out.clone());
        Ok(out)
    }

    /// Check every object's apiVersion/kind against discovery, counting kinds that CRDs
    /// of these bundles will add. Nothing is applied when anything is missing.
    async fn resolve(&self, bundles: &[Bundle]) -> Result<HashMap<GvkKey, Resolved>, AddonsError> {
        let mut from_crds: HashMap<GvkKey, Resolved> = HashMap::new();
        for o in bundles.iter().flat_map(|b| &b.objects) {
            if o.kind() != "CustomResourceDefinition" {
                continue;
            }
            let spec = &o.value["spec"];
            let group = spec["group"].as_str().unwrap_or_default();
            let kind = spec["names"]["kind"].as_str().unwrap_or_default();
            let plural = spec["names"]["plural"].as_str().unwrap_or_default();
            let namespaced = spec["scope"].as_str() == Some("Namespaced");
            for v in spec["versions"].as_array().into_iter().flatten() {
                if v["served"].as_bool() != Some(true) {
                    continue;
                }
                let version = v["name"].as_str().unwrap_or_default();
                let gvk = GroupVersionKind::gvk(group, version, kind);
                from_crds.insert(
                    (group.into(), version.into(), kind.into()),
                    Resolved {
                        ar: ApiResource::from_gvk_with_plural(&gvk, plural),
                        namespaced,
                    },
                );
            }
        }
        let mut cache = HashMap::new();
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        for b in bundles {
            let mut seen = BTreeSet::new();
            for o in &b.objects {
                let k = key(o.api_version(), o.kind());
                if out.contains_key(&k) {
                    continue;
                }
                let served = self.discover(o.api_version(), &mut cache).await?;
                if let Some((_, r)) = served.iter().find(|(kind, _)| kind == o.kind()) {
                    out.insert(k, r.clone());
                } else if let Some(r) = from_crds.get(&k) {
                    out.insert(k, r.clone());
                } else if seen.insert(k.clone()) {
                    missing.push(format!(
                        "{}: {} {} (e.g. {} from {}) is not served by Kubernetes {}",
                        b.title(),
                        o.api_version(),
                        o.kind(),
                        o.name(),
                        o.origin,
                        self.server_version
                    ));
                }
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(AddonsError::Unserved(missing))
        }
    }

    fn api(&self, r: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        if r.namespaced {
            Api::namespaced_with(self.client.clone(), namespace.unwrap_or("default"), &r.ar)
        } else {
            Api::all_with(self.client.clone(), &r.ar)
        }
    }

    fn params(&self, dry_run: bool) -> PatchParams {
        let mut pp = PatchParams::apply(FIELD_MANAGER);
        if self.opts.force_conflicts {
            pp = pp.force();
        }
        pp.dry_run = dry_run;
        pp
    }

    async fn ssa(
        &self,
        r: &Resolved,
        o: &Object,
        dry_run: bool,
    ) -> Result<DynamicObject, kube::Error> {
        let mut value = o.value.clone();
        if r.namespaced && o.namespace().is_none() {
            value["metadata"]["namespace"] = Value::String("default".into());
        }
        self.api(r, o.namespace())
            .patch(o.name(), &self.params(dry_run), &Patch::Apply(&value))
            .await
    }

    /// What applying `bundles` (and removing the recorded addons no longer wanted)
    /// would change, object by object, read-only (server-side dry run).
    pub async fn plan(
        &self,
        bundles: &[Bundle],
        records: &BTreeMap<String, AddonRecord>,
    ) -> Result<Vec<ObjectChange>, AddonsError> {
        let resolved = self.resolve(bundles).await?;
        let mut out = Vec::new();
        for b in bundles {
            for o in &b.objects {
                let Some(r) = resolved.get(&key(o.api_version(), o.kind())) else {
                    continue;
                };
                let live = match self.api(r, o.namespace()).get_opt(o.name()).await {
                    Ok(l) => l,
                    // The kind comes with this bundle's CRDs: nothing exists yet.
                    Err(e) if is_not_found(&e) => None,
                    Err(source) => {
                        return Err(AddonsError::Api {
                            action: "reading".into(),
                            object: o.describe(),
                            source: Box::new(source),
                        })
                    }
                };
                let change = |action, detail| ObjectChange {
                    addon: b.addon.to_string(),
                    object: o.describe(),
                    action,
                    detail,
                };
                let Some(live) = live else {
                    out.push(change("create", None));
                    continue;
                };
                let live = comparable(serde_json::to_value(&live).unwrap_or_default());
                match self.ssa(r, o, true).await {
                    Ok(after) => {
                        let after = comparable(serde_json::to_value(&after).unwrap_or_default());
                        if after == live {
                            out.push(change("unchanged", None));
                        } else {
                            let d = unified(&to_yaml(&live), &to_yaml(&after), &o.describe());
                            out.push(change("update", Some(d)));
                        }
                    }
                    Err(e) => {
                        let msg = api_message(&e).map(|(_, m)| m).unwrap_or(e.to_string());
                        out.push(change("update", Some(format!("cannot dry-run: {msg}"))));
                    }
                }
            }
        }
        for (addon, old) in self.stale(bundles, records) {
            for r in old {
                out.push(ObjectChange {
                    addon: addon.clone(),
                    object: r.to_string(),
                    action: "delete",
                    detail: None,
                });
            }
        }
        Ok(out)
    }

    /// Recorded objects the bundles no longer contain, per addon (a removed addon:
    /// all of them), in deletion order.
    fn stale(
        &self,
        bundles: &[Bundle],
        records: &BTreeMap<String, AddonRecord>,
    ) -> Vec<(String, Vec<ObjectRef>)> {
        let mut out = Vec::new();
        for (addon, rec) in records {
            let desired: BTreeSet<ObjectRef> = bundles
                .iter()
                .filter(|b| b.addon.as_str() == addon)
                .flat_map(|b| b.objects.iter().map(Object::reference))
                .collect();
            let mut old: Vec<ObjectRef> = rec
                .objects
                .iter()
                .filter(|r| !desired.contains(r))
                .cloned()
                .collect();
            old.sort_by_key(|r| delete_rank(&r.kind));
            if !old.is_empty() {
                out.push((addon.clone(), old));
            }
        }
        out
    }

    /// Apply every bundle in order, prune what they no longer contain and remove the
    /// recorded addons the cluster file dropped. Records progress through `rec`.
    pub async fn apply(
        &self,
        bundles: &[Bundle],
        records: &BTreeMap<String, AddonRecord>,
        rec: &dyn Recorder,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<Vec<AddonOutcome>, AddonsError> {
        let resolved = self.resolve(bundles).await?;
        let stale: BTreeMap<String, Vec<ObjectRef>> =
            self.stale(bundles, records).into_iter().collect();
        let mut outcomes = Vec::new();
        for b in bundles {
            let addon = b.addon.to_string();
            let desired: Vec<ObjectRef> = b.objects.iter().map(Object::reference).collect();
            // Track everything that may exist before creating anything.
            {
                let addon = addon.clone();
                let desired = desired.clone();
                rec.record(Box::new(move |m| {
                    let r = m.entry(addon).or_default();
                    for d in desired {
                        if !r.objects.contains(&d) {
                            r.objects.push(d);
                        }
                    }
                }))
                .await?;
            }
            let mut outcome = AddonOutcome {
                addon: addon.clone(),
                version: b.version.clone(),
                notes: b.notes.clone(),
                ..Default::default()
            };
            progress(format!(
                "{}: applying {} objects",
                b.title(),
                b.objects.len()
            ));
            for stage in [Stage::Foundation, Stage::Workload, Stage::Config] {
                let objs: Vec<&Object> = b.objects.iter().filter(|o| o.stage == stage).collect();
                if objs.is_empty() {
                    continue;
                }
                if stage == Stage::Config {
                    self.wait_admission(b, &objs, &resolved).await?;
                }
                self.apply_objects(&objs, &resolved, &mut outcome).await?;
                if stage == Stage::Foundation {
                    self.wait_established(b, &objs).await?;
                }
            }
            if let Some(old) = stale.get(&addon) {
                outcome.deleted = self.delete_refs(&addon, old, progress).await?;
            }
            {
                let addon = addon.clone();
                let version = b.version.clone();
                rec.record(Box::new(move |m| {
                    // Unchanged (same release, same objects): the record and its time stay
                    // as they are, so a no-op run writes nothing for it.
                    let unchanged = m
                        .get(&addon)
                        .is_some_and(|old| old.version == version && old.objects == desired);
                    if !unchanged {
                        m.insert(
                            addon,
                            AddonRecord {
                                version,
                                objects: desired,
                                applied: Some(chrono::Utc::now()),
                            },
                        );
                    }
                }))
                .await?;
            }
            progress(outcome.line());
            outcomes.push(outcome);
        }
        // Addons dropped from the cluster file.
        for (addon, old) in &stale {
            if bundles.iter().any(|b| b.addon.as_str() == addon) {
                continue;
            }
            progress(format!(
                "{addon}: removing {} objects kubeforge applied",
                old.len()
            ));
            let deleted = self.delete_refs(addon, old, progress).await?;
            let name = addon.clone();
            rec.record(Box::new(move |m| {
                m.remove(&name);
            }))
            .await?;
            let outcome = AddonOutcome {
                addon: addon.clone(),
                version: records
                    .get(addon)
                    .map(|r| r.version.clone())
                    .unwrap_or_default(),
                deleted,
                removed: true,
                ..Default::default()
            };
            progress(outcome.line());
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn apply_objects(
        &self,
        objs: &[&Object],
        resolved: &HashMap<GvkKey, Resolved>,
        outcome: &mut AddonOutcome,
    ) -> Result<(), AddonsError> {
        let mut conflicts = Vec::new();
        for o in objs {
            let Some(r) = resolved.get(&key(o.api_version(), o.kind())) else {
                continue;
            };
            let before = match self.api(r, o.namespace()).get_opt(o.name()).await {
                Ok(l) => l,
                Err(source) => {
                    return Err(AddonsError::Api {
                        action: "reading".into(),
                        object: o.describe(),
                        source: Box::new(source),
                    })
                }
            };
            match self.ssa(r, o, false).await {
                // Changed means the content changed: some servers (1.20) bump the
                // resourceVersion of an unchanged object just to update the time in
                // its managedFields.
                Ok(after) => match before {
                    None => outcome.created += 1,
                    Some(before)
                        if comparable(serde_json::to_value(&before).unwrap_or_default())
                            == comparable(serde_json::to_value(&after).unwrap_or_default()) =>
                    {
                        outcome.unchanged += 1
                    }
                    Some(_) => {
                        outcome.changed += 1;
                        outcome.changed_objects.push(o.describe());
                    }
                },
                Err(e) => match api_message(&e) {
                    Some((409, msg)) => {
                        conflicts.push(format!("{}: {}: {msg}", o.addon, o.describe()))
                    }
                    _ => {
                        return Err(AddonsError::Api {
                            action: "applying".into(),
                            object: o.describe(),
                            source: Box::new(e),
                        })
                    }
                },
            }
        }
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(AddonsError::Conflicts(conflicts))
        }
    }

    async fn wait_established(&self, b: &Bundle, objs: &[&Object]) -> Result<(), AddonsError> {
        let crds: Vec<&&Object> = objs
            .iter()
            .filter(|o| o.kind() == "CustomResourceDefinition")
            .collect();
        if crds.is_empty() {
            return Ok(());
        }
        let gvk = GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition");
        let api: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::from_gvk_with_plural(&gvk, "customresourcedefinitions"),
        );
        let started = Instant::now();
        loop {
            let mut pending = Vec::new();
            for o in &crds {
                let live = api
                    .get_opt(o.name())
                    .await
                    .map_err(|source| AddonsError::Api {
                        action: "reading".into(),
                        object: o.describe(),
                        source: Box::new(source),
                    })?;
                let established = live
                    .as_ref()
                    .and_then(|l| l.data["status"]["conditions"].as_array())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["type"].as_str() == Some("Established")
                                && c["status"].as_str() == Some("True")
                        })
                    });
                if !established {
                    pending.push(o.name().to_string());
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= self.opts.timeout {
                return Err(AddonsError::Timeout {
                    what: format!("the CRDs of {} to be Established", b.title()),
                    seconds: self.opts.timeout.as_secs(),
                    detail: format!("not yet: {}", pending.join(", ")),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Dry-run the rendered objects until the addon's admission webhooks answer them.
    async fn wait_admission(
        &self,
        b: &Bundle,
        objs: &[&Object],
        resolved: &HashMap<GvkKey, Resolved>,
    ) -> Result<(), AddonsError> {
        let started = Instant::now();
        'retry: loop {
            for o in objs {
                let Some(r) = resolved.get(&key(o.api_version(), o.kind())) else {
                    continue;
                };
                match self.ssa(r, o, true).await {
                    Ok(_) => {}
                    Err(e) if is_webhook_unavailable(&e) => {
                        if started.elapsed() >= self.opts.timeout {
                            return Err(AddonsError::Timeout {
                                what: format!("the admission webhook of {} to answer", b.title()),
                                seconds: self.opts.timeout.as_secs(),
                                detail: format!(
                                    "{} was not admitted: {}",
                                    o.describe(),
                                    api_message(&e).map(|(_, m)| m).unwrap_or_default()
                                ),
                            });
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue 'retry;
                    }
                    // Conflicts and rejections surface in the real apply.
                    Err(_) => {}
                }
            }
            return Ok(());
        }
    }

    /// Delete recorded objects that still carry this addon's label; returns how many.
    async fn delete_refs(
        &self,
        addon: &str,
        refs: &[ObjectRef],
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<usize, AddonsError> {
        let mut cache = HashMap::new();
        let mut deleted = 0;
        for r in refs {
            let served = self.discover(&r.api_version, &mut cache).await?;
            let Some((_, res)) = served.iter().find(|(k, _)| k == &r.kind) else {
                continue; // its CRD is gone, and with it the object
            };
            let api = self.api(res, r.namespace.as_deref());
            let live = match api.get_opt(&r.name).await {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(source) => {
                    return Err(AddonsError::Api {
                        action: "reading".into(),
                        object: r.to_string(),
                        source: Box::new(source),
                    })
                }
            };
            let ours = live
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ADDON))
                .is_some_and(|v| v == addon);
            if !ours {
                progress(format!(
                    "{addon}: kept {r}: it does not carry {LABEL_ADDON}={addon}, so kubeforge did not make it"
                ));
                continue;
            }
            match api.delete(&r.name, &DeleteParams::background()).await {
                Ok(_) => deleted += 1,
                Err(e) if is_not_found(&e) => {}
                Err(source) => {
                    return Err(AddonsError::Api {
                        action: "deleting".into(),
                        object: r.to_string(),
                        source: Box::new(source),
                    })
                }
            }
        }
        Ok(deleted)
    }

    /// Rollout status of every addon: Deployments/DaemonSets/StatefulSets available,
    /// CephCluster health.
    pub async fn status(&self, bundles: &[Bundle]) -> Result<Vec<AddonStatus>, AddonsError> {
        let mut cache = HashMap::new();
        let mut out = Vec::new();
        for b in bundles {
            let mut workloads = Vec::new();
            for o in &b.objects {
                if !matches!(
                    o.kind(),
                    "Deployment" | "DaemonSet" | "StatefulSet" | "CephCluster"
                ) {
                    continue;
                }
                let served = self.discover(o.api_version(), &mut cache).await?;
                let Some((_, r)) = served.iter().find(|(k, _)| k == o.kind()) else {
                    continue;
                };
                let live =
                    self.api(r, o.namespace())
                        .get_opt(o.name())
                        .await
                        .map_err(|source| AddonsError::Api {
                            action: "reading".into(),
                            object: o.describe(),
                            source: Box::new(source),
                        })?;
                let (ready, detail) = match live {
                    None => (false, "missing".to_string()),
                    Some(l) => readiness(o.kind(), &serde_json::to_value(&l).unwrap_or_default()),
                };
                workloads.push(WorkloadStatus {
                    object: format!(
                        "{} {}/{}",
                        o.kind(),
                        o.namespace().unwrap_or("default"),
                        o.name()
                    ),
                    ready,
                    detail,
                });
            }
            out.push(AddonStatus {
                addon: b.addon.to_string(),
                version: b.version.clone(),
                ready: workloads.iter().all(|w| w.ready),
                workloads,
            });
        }
        Ok(out)
    }

    /// Poll `status` until every addon is ready or the timeout passes.
    pub async fn wait_ready(&self, bundles: &[Bundle]) -> Result<Vec<AddonStatus>, AddonsError> {
        let started = Instant::now();
        loop {
            let st = self.status(bundles).await?;
            if st.iter().all(|s| s.ready) {
                return Ok(st);
            }
            if started.elapsed() >= self.opts.timeout {
                let pending: Vec<String> = st
                    .iter()
                    .flat_map(|s| {
                        s.workloads
                            .iter()
                            .filter(|w| !w.ready)
                            .map(move |w| format!("{}: {} ({})", s.addon, w.object, w.detail))
                    })
                    .collect();
                return Err(AddonsError::Timeout {
                    what: "the addons to become ready".into(),
                    seconds: self.opts.timeout.as_secs(),
                    detail: pending.join("; "),
                });
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Ready or not, and why, from a live workload.
pub fn readiness(kind: &str, v: &Value) -> (bool, String) {
    let generation = v["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = v["status"]["observedGeneration"].as_i64().unwrap_or(0);
    let n = |p: &str| v.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    if kind == "CephCluster" {
        let health = v
            .pointer("/status/ceph/health")
            .and_then(Value::as_str)
            .unwrap_or("");
        let phase = v
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        return match (health, phase) {
            ("", "") => (
                false,
                "no status yet (is the Rook operator running?)".into(),
            ),
            ("", p) => (false, format!("phase {p}")),
            (h, p) => (h == "HEALTH_OK", format!("{h}, phase {p}")),
        };
    }
    if observed < generation || v.get("status").is_none_or(Value::is_null) {
        return (false, "not yet observed by its controller".into());
    }
    match kind {
        "Deployment" | "StatefulSet" => {
            let want = v["spec"]["replicas"].as_i64().unwrap_or(1);
            let avail = if kind == "Deployment" {
                n("/status/availableReplicas")
            } else {
                n("/status/readyReplicas")
            };
            let updated = n("/status/updatedReplicas");
            (
                avail >= want && updated >= want,
                format!("{avail}/{want} available, {updated} updated"),
            )
        }
        "DaemonSet" => {
            let want = n("/status/desiredNumberScheduled");
            let avail = n("/status/numberAvailable");
            let updated = n("/status/updatedNumberScheduled");
            (
                avail >= want && updated >= want,
                format!("{avail}/{want} available, {updated} updated"),
            )
        }
        _ => (true, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn readiness_of_workloads() {
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "availableReplicas": 2, "updatedReplicas": 2}});
        assert!(readiness("Deployment", &d).0);
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "availableReplicas": 2, "updatedReplicas": 2}});
        assert_eq!(
            readiness("Deployment", &d),
            (false, "not yet observed by its controller".into())
        );
        let ds = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "desiredNumberScheduled": 3, "numberAvailable": 2, "updatedNumberScheduled": 3}});
        assert_eq!(
            readiness("DaemonSet", &ds),
            (false, "2/3 available, 3 updated".into())
        );
        let fresh = json!({"metadata": {"generation": 1}, "spec": {}});
        assert!(!readiness("DaemonSet", &fresh).0);
        let ceph = json!({"status": {"phase": "Ready", "ceph": {"health": "HEALTH_OK"}}});
        assert!(readiness("CephCluster", &ceph).0);
        let ceph = json!({"status": {"phase": "Progressing"}});
        assert_eq!(
            readiness("CephCluster", &ceph),
            (false, "phase Progressing".into())
        );
    }

    #[test]
    fn object_defaults_holding_empty_strings_are_left_out() {
        let mut schema = serde_json::json!({"properties": {
            "envoy": {"type": "object", "default": {"listener": {"connectionBalancer": "", "x": 1}}},
            "mode": {"type": "string", "default": ""},
            "port": {"type": "integer", "default": 8080},
            "tls": {"type": "object", "default": {"min": "1.2"}},
        }});
        assert_eq!(strip_defaults_holding_empty_strings(&mut schema), 1);
        assert!(schema.pointer("/properties/envoy/default").is_none());
        // Plain empty-string defaults are the other fitting's; the rest stay.
        assert_eq!(
            schema.pointer("/properties/mode/default"),
            Some(&serde_json::json!(""))
        );
        assert_eq!(
            schema.pointer("/properties/port/default"),
            Some(&serde_json::json!(8080))
        );
        assert!(schema.pointer("/properties/tls/default/min").is_some());
    }

    #[test]
    fn comparable_drops_server_bookkeeping() {
        let a = json!({"metadata": {"name": "x", "resourceVersion": "1", "managedFields": []}, "status": {}, "spec": {"a": 1}});
        let b = json!({"metadata": {"name": "x", "resourceVersion": "2"}, "spec": {"a": 1}});
        assert_eq!(comparable(a), comparable(b));
    }

    #[test]
    fn deletion_order_is_reverse_of_application() {
        let mut kinds = vec![
            "Namespace",
            "IPAddressPool",
            "CustomResourceDefinition",
            "Deployment",
            "ValidatingWebhookConfiguration",
        ];
        kinds.sort_by_key(|k| delete_rank(k));
        assert_eq!(
            kinds,
            vec![
                "IPAddressPool",
                "ValidatingWebhookConfiguration",
                "Deployment",
                "CustomResourceDefinition",
                "Namespace"
            ]
        );
    }
}
