//! etcd snapshots in the state store: taken on one healthy member (or by the
//! control-plane nodes' timer and collected), verified with etcd's own code on the node
//! (a restore into a scratch directory, then `snapshot status`), encrypted with the
//! state key, stored with what they are (`snapshots/<name>.json`), kept to
//! `spec.backup.keep`. `kubeforge backup`, the etcd-backup phase, the upgrade's
//! pre-upgrade snapshot and `kubeforge restore` all go through here.

use crate::kube::{etcd, etcdctl};
use crate::phase::exec::Runtime;
use crate::phase::PhaseError;
use crate::render::views::SNAPSHOT_TIMER_DIR;
use crate::spec::{Host, LoadedCluster};
use crate::state::StateStore;
use crate::transport::remote::{self, HostError, Redact};
use crate::transport::Transport;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a stored snapshot is (no secret in it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupMeta {
    pub name: String,
    pub taken: DateTime<Utc>,
    /// `manual` (kubeforge backup), `timer`, `pre-upgrade`.
    pub trigger: String,
    /// The control-plane node whose etcd member gave it.
    pub source: String,
    #[serde(default)]
    pub etcd_version: String,
    #[serde(default)]
    pub kubernetes_version: String,
    pub revision: i64,
    pub total_keys: i64,
    /// Size of the database (the stored object is the encrypted file).
    pub db_bytes: u64,
    pub sha256: String,
    /// The members when it was taken, `name=peerURL`.
    #[serde(default)]
    pub members: Vec<String>,
    /// HMAC-SHA256 (hex) of this metadata with the snapshot MAC key, which only the
    /// holder of the state key (and the control-plane nodes that ship snapshots) have:
    /// the state's public key lets anyone encrypt a snapshot, this says who wrote it.
    /// Absent on snapshots stored before kubeforge authenticated them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// scrypt work factor of the MAC key (state keys that are passphrases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_log_n: Option<u8>,
}

const META_DOMAIN: &[u8] = b"kubeforge.dev/snapshot-meta/v1\0";

/// The bytes a metadata MAC covers: the JSON object without its `mac`, compact, keys in
/// the order serde_json's map keeps them (the same on both sides: both go through a
/// `serde_json::Value`), so fields added later are covered too.
fn meta_message(mut v: serde_json::Value) -> Vec<u8> {
    if let Some(o) = v.as_object_mut() {
        o.remove("mac");
    }
    let mut m = META_DOMAIN.to_vec();
    m.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
    m
}

/// Set `meta.mac` when the store can authenticate (it has a key or a node seal).
pub fn sign_meta(
    store: &StateStore,
    meta: &mut BackupMeta,
) -> Result<(), crate::state::StateError> {
    meta.mac = None;
    meta.mac_log_n = store.snapshot_mac_log_n();
    if let Some(key) = store.snapshot_mac_key(meta.mac_log_n)? {
        let v = serde_json::to_value(&*meta).unwrap_or_default();
        meta.mac = Some(crate::state::crypto::hmac_hex(&key, &meta_message(v)));
    }
    Ok(())
}

/// Whether a stored snapshot's metadata says who wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Authenticity {
    /// Its MAC verifies: kubeforge with the state key, or a shipping control plane.
    Verified,
    /// No MAC (stored before snapshots were authenticated) or no key to check it with.
    Unchecked,
    /// A MAC that does not verify, or no metadata: never restored from.
    Forged,
}

/// Check the raw stored metadata of a snapshot against the store's snapshot MAC key.
pub fn authenticity(store: &StateStore, raw_meta: Option<&[u8]>) -> Authenticity {
    let Some(raw) = raw_meta else {
        return Authenticity::Forged;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(raw) else {
        return Authenticity::Forged;
    };
    let Some(mac) = v.get("mac").and_then(|m| m.as_str()).map(str::to_string) else {
        return Authenticity::Unchecked;
    };
    let log_n = v
        .get("macLogN")
        .and_then(|n| n.as_u64())
        .and_then(|n| u8::try_from(n).ok());
    match store.snapshot_mac_key(log_n) {
        Ok(Some(key)) if crate::state::crypto::hmac_verify(&key, &meta_message(v), &mac) => {
            Authenticity::Verified
        }
        Ok(Some(_)) => Authenticity::Forged,
        _ => Authenticity::Unchecked,
    }
}

/// A stored snapshot as `backup list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub name: String,
    /// Encrypted size in the store.
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<BackupMeta>,
    /// Whether its metadata's MAC verifies (see [`Authenticity`]).
    pub authenticity: Authenticity,
}

impl Listed {
    /// When it was taken: its metadata, else the time in its name.
    pub fn taken(&self) -> Option<DateTime<Utc>> {
        self.meta
            .as_ref()
            .map(|m| m.taken)
            .or_else(|| time_in_name(&self.name))
    }
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// The `YYYYmmddTHHMMSSZ` at the end of a snapshot name.
pub fn time_in_name(name: &str) -> Option<DateTime<Utc>> {
    let last = name.rsplit('-').next()?;
    chrono::NaiveDateTime::parse_from_str(last, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|n| n.and_utc())
}

fn host_err(phase: &str, host: &str, message: String) -> PhaseError {
    PhaseError::host(
        phase,
        HostError::Other {
            host: host.to_string(),
            message,
        },
    )
}

fn state_err(phase: &str) -> impl Fn(crate::state::StateError) -> PhaseError + '_ {
    move |source| PhaseError::State {
        phase: phase.to_string(),
        source,
    }
}

/// Verify `snap` on `host` (its etcd image), then store it encrypted as `name` with
/// its metadata. Nothing is stored when the verification fails.
#[allow(clippy::too_many_arguments)]
pub async fn store_verified(
    phase: &str,
    t: &dyn Transport,
    host: &str,
    store: &StateStore,
    secrets: &dyn Redact,
    name: &str,
    trigger: &str,
    taken: DateTime<Utc>,
    kubernetes_version: &str,
    snap: &etcd::Snapshot,
) -> Result<BackupMeta, PhaseError> {
    let file = etcdctl::snapshot_file(snap);
    // A work file of this call's own: the node's shipping and a collect can verify the
    // same snapshot at the same moment.
    let work = format!("{name}.{:08x}", rand::random::<u32>());
    let path = etcdctl::upload_snapshot(t, host, &work, file.clone())
        .await
        .map_err(|e| PhaseError::host(phase, e))?;
    let verified = etcdctl::verify(t, host, &path, secrets).await;
    let _ = t.exec(&format!("rm -f {path}")).await;
    let status = verified.map_err(|e| {
        host_err(
            phase,
            host,
            format!("snapshot {name} failed verification, not stored: {e}"),
        )
    })?;
    let etcd_version = etcd::version(t, host, secrets).await.unwrap_or_default();
    let members = etcd::members(t, host, secrets)
        .await
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    format!(
                        "{}={}",
                        m.name,
                        m.peer_urls.first().map(String::as_str).unwrap_or("-")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut meta = BackupMeta {
        name: name.to_string(),
        taken,
        trigger: trigger.to_string(),
        source: host.to_string(),
        etcd_version,
        kubernetes_version: kubernetes_version.to_string(),
        revision: status.revision,
        total_keys: status.total_key,
        db_bytes: snap.db.len() as u64,
        sha256: snap.sha256.clone(),
        members,
        mac: None,
        mac_log_n: None,
    };
    sign_meta(store, &mut meta).map_err(state_err(phase))?;
    store
        .put_snapshot(name, &file)
        .await
        .map_err(state_err(phase))?;
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| PhaseError::Gate {
        phase: phase.to_string(),
        message: format!("cannot write the snapshot's metadata: {e}"),
    })?;
    store
        .put_snapshot_meta(name, &json)
        .await
        .map_err(state_err(phase))?;
    Ok(meta)
}

/// Take a snapshot now from the member on `host` (exactly one endpoint) and store it
/// verified as `<prefix>-<time>`.
#[allow(clippy::too_many_arguments)]
pub async fn take(
    phase: &str,
    t: &dyn Transport,
    host: &str,
    store: &StateStore,
    secrets: &dyn Redact,
    prefix: &str,
    trigger: &str,
    kubernetes_version: &str,
) -> Result<BackupMeta, PhaseError> {
    let now = Utc::now();
    let snap = etcd::snapshot(t, host, secrets)
        .await
        .map_err(|e| PhaseError::host(phase, e))?;
    let name = format!("{prefix}-{}", stamp(now));
    store_verified(
        phase,
        t,
        host,
        store,
        secrets,
        &name,
        trigger,
        now,
        kubernetes_version,
        &snap,
    )
    .await
}

/// Bring the timer's snapshots from the control-plane nodes that answer into the store
/// (those not there yet), each verified first. Returns what was stored and, per host,
/// what could not be (a corrupted file is named and left on the node).
///
/// `ahead`: the control planes' listings asked in the facts' round trip may stand (a
/// run that has changed nothing, moments after its facts).
pub async fn collect(
    phase: &str,
    rt: &Runtime,
    c: &LoadedCluster,
    store: &StateStore,
    secrets: &dyn Redact,
    ahead: bool,
) -> Result<(Vec<BackupMeta>, Vec<String>), PhaseError> {
    let stored: Vec<String> = store
        .snapshots()
        .await
        .map_err(state_err(phase))?
        .into_iter()
        .map(|i| i.name)
        .collect();
    let mut got = Vec::new();
    let mut problems = Vec::new();
    // What every control plane's timer took, asked of all at once; then collected one
    // node at a time.
    let listings =
        futures::future::join_all(c.topology.control_planes().into_iter().map(|h| async move {
            let s = crate::phase::exec::session(rt, h).await.ok()?;
            let command = listing_command();
            let out = match ahead.then(|| rt.asked_ahead(&h.name, &command)).flatten() {
                Some(out) => out,
                None => remote::run(s.as_ref(), &h.name, &command, secrets, false)
                    .await
                    .ok()?,
            };
            Some((h, s, out))
        }))
        .await;
    for (h, s, out) in listings.into_iter().flatten() {
        for file in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some(name) = file.strip_suffix(".stream") else {
                continue;
            };
            if stored.iter().any(|n| n == name) || !StateStore::valid_snapshot_name(name) {
                continue;
            }
            match collect_one(phase, s.as_ref(), h, store, secrets, name, c).await {
                Ok(m) => got.push(m),
                // Shipped by its node meanwhile (spec.backup.ship): stored, not a problem.
                Err(_) if matches!(store.snapshot_meta(name).await, Ok(Some(_))) => {}
                Err(e) => problems.push(format!("{}: {name}: {e}", h.name)),
            }
        }
    }
    Ok((got, problems))
}

/// On a control plane: the snapshots its timer took and kubeforge has not collected
/// (one name per line). A glob of the shell's own: it is asked on every run, where an
/// `ls | grep` costs two process starts.
pub fn listing_command() -> String {
    format!(
        "for f in {SNAPSHOT_TIMER_DIR}/auto-*.stream; do [ -e \"$f\" ] && printf '%s\\n' \"${{f##*/}}\"; done; true"
    )
}

async fn collect_one(
    phase: &str,
    t: &dyn Transport,
    h: &Host,
    store: &StateStore,
    secrets: &dyn Redact,
    name: &str,
    c: &LoadedCluster,
) -> Result<BackupMeta, PhaseError> {
    let path = format!("{SNAPSHOT_TIMER_DIR}/{name}.stream");
    let stream = remote::download(t, &h.name, &path)
        .await
        .map_err(|e| PhaseError::host(phase, e))?;
    let snap = etcd::parse_snapshot_stream(&stream).map_err(|e| host_err(phase, &h.name, e))?;
    let taken = time_in_name(name).unwrap_or_else(Utc::now);
    let version = c.cluster.spec.kubernetes_version.clone();
    store_verified(
        phase, t, &h.name, store, secrets, name, "timer", taken, &version, &snap,
    )
    .await
}

/// Where a shipping control plane keeps what `apply` gave it.
pub const SHIP_CONFIG: &str = "/etc/kubeforge/snapshot-ship.json";
pub const SHIP_CA: &str = "/etc/kubeforge/snapshot-ship-ca.pem";
pub const NODE_BINARY: &str = "/usr/local/lib/kubeforge/kubeforge";

/// What a control plane needs to put its timer's snapshots into the state bucket
/// (`spec.backup.ship`), written 0600 by `apply`: the store's address, a narrowly
/// scoped S3 key, the state's public key and the snapshot MAC key. Never the state key.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShipConfig {
    pub cluster: String,
    /// This node's name in the cluster (the snapshots' `source`).
    pub host: String,
    /// `s3://bucket/prefix` (the state's).
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub allow_http: bool,
    /// Path on the node of the PEM bundle of the endpoint's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// age X25519 public key of the state.
    pub recipient: String,
    /// Hex snapshot MAC key.
    pub mac_key: String,
    pub kubernetes_version: String,
    /// Retention in the bucket (`spec.backup.keep`).
    pub keep: u32,
}

impl std::fmt::Debug for ShipConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipConfig")
            .field("cluster", &self.cluster)
            .field("host", &self.host)
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("mac_key", &"<redacted>")
            .finish()
    }
}

impl ShipConfig {
    /// The store this configuration writes snapshots into (no state key).
    pub fn open_store(&self) -> Result<StateStore, String> {
        let recipient: age::x25519::Recipient = self
            .recipient
            .parse()
            .map_err(|e| format!("recipient: {e}"))?;
        let mac: [u8; 32] = hex::decode(&self.mac_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or("macKey: not 32 bytes of hex")?;
        let options = crate::state::StoreOptions {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            allow_http: self.allow_http,
            credentials: Some(crate::state::S3Credentials {
                access_key_id: self.access_key_id.clone(),
                secret_access_key: self.secret_access_key.clone(),
                session_token: self.session_token.clone(),
            }),
            ca_bundle: self.ca_bundle.as_ref().map(std::path::PathBuf::from),
        };
        let backend = StateStore::backend_for(&self.url, &options, std::path::Path::new("/"))
            .map_err(|e| e.to_string())?;
        Ok(StateStore::with_backend(backend)
            .with_cluster(Some(self.cluster.clone()))
            .with_seen_dir(None)
            .with_node_seal(crate::state::NodeSeal {
                recipient,
                mac_key: mac,
            }))
    }
}

/// What one shipping did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shipped {
    /// None: it was in the bucket already.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<BackupMeta>,
    pub name: String,
    /// Removed by retention.
    pub pruned: Vec<String>,
}

/// On a control plane: verify the timer's snapshot `stream` with etcd's own code, then
/// put it encrypted (to the state's public key) into the bucket with its metadata
/// signed, then retention. A snapshot already there is left alone.
pub async fn ship(config: &ShipConfig, stream_path: &std::path::Path) -> Result<Shipped, String> {
    let phase = "ship-snapshot";
    let name = stream_path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".stream"))
        .filter(|n| StateStore::valid_snapshot_name(n))
        .ok_or_else(|| {
            format!(
                "{} is not a snapshot stream the timer wrote (auto-<node>-<time>.stream)",
                stream_path.display()
            )
        })?
        .to_string();
    let store = config.open_store()?;
    if store
        .snapshot_meta(&name)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(Shipped {
            stored: None,
            name,
            pruned: Vec::new(),
        });
    }
    let stream = std::fs::read(stream_path)
        .map_err(|e| format!("cannot read {}: {e}", stream_path.display()))?;
    let snap = etcd::parse_snapshot_stream(&stream)?;
    let taken = time_in_name(&name).unwrap_or_else(Utc::now);
    let t = crate::transport::local::LocalTransport::new(config.host.clone());
    let meta = store_verified(
        phase,
        &t,
        &config.host,
        &store,
        &remote::NoSecrets,
        &name,
        "timer",
        taken,
        &config.kubernetes_version,
        &snap,
    )
    .await;
    let meta = match meta {
        Ok(m) => Some(m),
        // Collected by `backup collect` or `apply` meanwhile: stored all the same.
        Err(_) if matches!(store.snapshot_meta(&name).await, Ok(Some(_))) => None,
        Err(e) => return Err(crate::error::render_chain(&e)),
    };
    let pruned = prune(&store, config.keep as usize)
        .await
        .map_err(|e| format!("stored {name}, but retention failed: {e}"))?;
    Ok(Shipped {
        stored: meta,
        name,
        pruned,
    })
}

/// A stored snapshot with its raw record parsed and checked.
fn listed(store: &StateStore, name: String, size: u64, raw: Option<&[u8]>) -> Listed {
    let meta: Option<BackupMeta> = raw.and_then(|b| serde_json::from_slice(b).ok());
    let mut authenticity = authenticity(store, raw);
    // A verified record copied next to another object names that other one.
    if meta.as_ref().is_some_and(|m| m.name != name) {
        authenticity = Authenticity::Forged;
    }
    Listed {
        name,
        size,
        meta,
        authenticity,
    }
}

/// Every stored snapshot with its metadata, oldest first.
pub async fn list(store: &StateStore) -> Result<Vec<Listed>, crate::state::StateError> {
    let mut out = Vec::new();
    for i in store.snapshots().await? {
        let raw = store.snapshot_meta(&i.name).await.ok().flatten();
        out.push(listed(store, i.name, i.size, raw.as_deref()));
    }
    out.sort_by_key(|l| l.taken());
    Ok(out)
}

/// Which snapshots retention removes: of the manual and timer ones (not those taken
/// before an upgrade), all but the newest `keep`.
pub fn expired(listed: &[Listed], keep: usize) -> Vec<String> {
    let mut kept: Vec<&Listed> = listed
        .iter()
        .filter(|l| l.name.starts_with("backup-") || l.name.starts_with("auto-"))
        .collect();
    kept.sort_by_key(|l| std::cmp::Reverse(l.taken()));
    kept.iter().skip(keep).map(|l| l.name.clone()).collect()
}

/// Apply retention (`spec.backup.keep`); returns the names removed.
pub async fn prune(
    store: &StateStore,
    keep: usize,
) -> Result<Vec<String>, crate::state::StateError> {
    let listed = list(store).await?;
    let gone = expired(&listed, keep.max(1));
    for n in &gone {
        store.delete_snapshot(n).await?;
    }
    Ok(gone)
}

/// The snapshot a restore uses: `wanted`, else the newest one whose metadata verifies
/// (else, in a store from before snapshots were authenticated, the newest unchecked
/// one). One whose metadata does not verify is never used.
pub fn choose<'a>(listed: &'a [Listed], wanted: Option<&str>) -> Result<&'a Listed, String> {
    let forged = |l: &Listed| {
        format!(
            "snapshot `{}` is refused: {}; it was not written by kubeforge with the state key or by a control plane shipping it, and is never restored from",
            l.name,
            if l.meta.is_none() {
                "it has no metadata"
            } else {
                "its metadata's MAC does not verify"
            }
        )
    };
    match wanted {
        Some(w) => {
            let l = listed.iter().find(|l| l.name == w).ok_or_else(|| {
                format!(
                    "no snapshot `{w}` in the state store ({} stored: `kubeforge backup list`)",
                    listed.len()
                )
            })?;
            if l.authenticity == Authenticity::Forged {
                return Err(forged(l));
            }
            Ok(l)
        }
        None => {
            let newest = |a: Authenticity| {
                listed
                    .iter()
                    .filter(|l| l.authenticity == a)
                    .max_by_key(|l| l.taken())
            };
            newest(Authenticity::Verified)
                .or_else(|| newest(Authenticity::Unchecked))
                .ok_or_else(|| match listed.iter().find(|l| l.authenticity == Authenticity::Forged) {
                    Some(l) => forged(l),
                    None => "the state store holds no etcd snapshot: nothing to restore from (`kubeforge backup` takes one)".to_string(),
                })
        }
    }
}

/// Before a stored snapshot is used: its metadata is not forged and names this
/// database (`db_sha256`, of the decrypted object).
pub async fn check_stored(store: &StateStore, name: &str, db_sha256: &str) -> Result<(), String> {
    let raw = store.snapshot_meta(name).await.map_err(|e| e.to_string())?;
    let l = listed(store, name.to_string(), 0, raw.as_deref());
    if l.authenticity == Authenticity::Forged {
        return Err(format!(
            "its metadata {} (not written by kubeforge with the state key or by a control plane shipping it)",
            if l.meta.is_none() { "is missing" } else { "does not verify" }
        ));
    }
    matches_meta(&l, db_sha256)
}

/// Check a snapshot's database against its stored metadata before it is used: the
/// MAC-covered sha256 binds the (unauthenticated) encrypted object to its metadata.
pub fn matches_meta(listed: &Listed, db_sha256: &str) -> Result<(), String> {
    match &listed.meta {
        Some(m) if m.sha256 != db_sha256 => Err(format!(
            "its database (sha256 {}) is not the one its metadata names (sha256 {}): replaced or damaged",
            &db_sha256[..16.min(db_sha256.len())],
            &m.sha256[..16.min(m.sha256.len())]
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str) -> BackupMeta {
        BackupMeta {
            name: name.into(),
            taken: time_in_name(name).unwrap(),
            trigger: "timer".into(),
            source: "cp-1".into(),
            etcd_version: "3.4.13".into(),
            kubernetes_version: "v1.20.2".into(),
            revision: 42,
            total_keys: 7,
            db_bytes: 8192,
            sha256: "ab".repeat(32),
            members: vec![],
            mac: None,
            mac_log_n: None,
        }
    }

    #[tokio::test]
    async fn snapshot_metadata_is_signed_by_the_key_holder_or_a_shipping_node_and_checked() {
        let (keyring, _) = crate::state::Keyring::generate();
        let recipient: age::x25519::Recipient = keyring.recipient().unwrap().parse().unwrap();
        let operator = StateStore::in_memory()
            .with_cluster(Some("c1".into()))
            .with_keyring(Some(keyring));
        let mac_key = operator.snapshot_mac_key(None).unwrap().unwrap();
        // A node: the public key and the MAC key, no state key.
        let node = StateStore::with_backend(operator.backend().clone())
            .with_cluster(Some("c1".into()))
            .with_seen_dir(None)
            .with_node_seal(crate::state::NodeSeal { recipient, mac_key });
        let name = "auto-cp-1-20261129T100000Z";
        let mut m = meta(name);
        sign_meta(&node, &mut m).unwrap();
        let json = serde_json::to_vec_pretty(&m).unwrap();
        node.put_snapshot(name, b"database").await.unwrap();
        node.put_snapshot_meta(name, &json).await.unwrap();
        // The operator reads the node's object with the state key, and its MAC verifies.
        assert_eq!(operator.get_snapshot(name).await.unwrap(), b"database");
        assert_eq!(authenticity(&operator, Some(&json)), Authenticity::Verified);
        // Changed metadata (another revision), a missing MAC, none at all, another
        // cluster's key.
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["revision"] = 43.into();
        let changed = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            authenticity(&operator, Some(&changed)),
            Authenticity::Forged
        );
        v.as_object_mut().unwrap().remove("mac");
        let unsigned = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            authenticity(&operator, Some(&unsigned)),
            Authenticity::Unchecked
        );
        assert_eq!(authenticity(&operator, None), Authenticity::Forged);
        let other = StateStore::in_memory()
            .with_cluster(Some("c2".into()))
            .with_keyring(Some(crate::state::Keyring::generate().0));
        assert_eq!(authenticity(&other, Some(&json)), Authenticity::Forged);
        // What a restore uses: the verified one, never a forged one even if newer.
        let listed = list(&operator).await.unwrap();
        assert_eq!(listed[0].authenticity, Authenticity::Verified);
        let planted = Listed {
            name: "auto-cp-1-20991231T000000Z".into(),
            size: 1,
            meta: None,
            authenticity: Authenticity::Forged,
        };
        let both = vec![listed[0].clone(), planted];
        assert_eq!(choose(&both, None).unwrap().name, name);
        let e = choose(&both, Some("auto-cp-1-20991231T000000Z")).unwrap_err();
        assert!(e.contains("refused") && e.contains("no metadata"), "{e}");
        // The database must be the one the metadata names.
        assert!(check_stored(&operator, name, &"ab".repeat(32))
            .await
            .is_ok());
        let e = check_stored(&operator, name, &"cd".repeat(32))
            .await
            .unwrap_err();
        assert!(e.contains("not the one its metadata names"), "{e}");
        // Metadata copied next to another object names the other one.
        operator
            .put_snapshot("backup-20261129T110000Z", b"x")
            .await
            .unwrap();
        operator
            .put_snapshot_meta("backup-20261129T110000Z", &json)
            .await
            .unwrap();
        let listed = list(&operator).await.unwrap();
        let copied = listed
            .iter()
            .find(|l| l.name == "backup-20261129T110000Z")
            .unwrap();
        assert_eq!(copied.authenticity, Authenticity::Forged);
    }

    #[test]
    fn the_shipping_configuration_never_shows_its_secrets() {
        let c = ShipConfig {
            cluster: "c".into(),
            host: "cp-1".into(),
            url: "s3://b/p".into(),
            endpoint: None,
            region: None,
            path_style: true,
            allow_http: false,
            ca_bundle: None,
            access_key_id: "AKIA".into(),
            secret_access_key: "very-secret".into(),
            session_token: None,
            recipient: "age1".into(),
            mac_key: "00".repeat(32),
            kubernetes_version: "v1.20.2".into(),
            keep: 3,
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("very-secret") && !shown.contains(&"00".repeat(32)),
            "{shown}"
        );
        assert!(c.open_store().unwrap_err().contains("recipient"));
    }

    fn l(name: &str) -> Listed {
        Listed {
            name: name.into(),
            size: 1,
            meta: None,
            authenticity: Authenticity::Unchecked,
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_never_touches_pre_upgrade_snapshots() {
        let listed = vec![
            l("backup-20261101T000000Z"),
            l("auto-cp-1-20261102T000000Z"),
            l("pre-upgrade-v1.20.3-20261001T000000Z"),
            l("auto-cp-2-20261103T000000Z"),
        ];
        assert_eq!(
            expired(&listed, 2),
            vec!["backup-20261101T000000Z".to_string()]
        );
        assert!(expired(&listed, 5).is_empty());
        assert_eq!(
            choose(&listed, None).unwrap().name,
            "auto-cp-2-20261103T000000Z"
        );
        assert!(choose(&listed, Some("nope"))
            .unwrap_err()
            .contains("backup list"));
        assert!(choose(&[], None).unwrap_err().contains("no etcd snapshot"));
    }

    #[test]
    fn the_time_is_read_from_the_name() {
        let t = time_in_name("auto-cp-1-20261129T071500Z").unwrap();
        assert_eq!(stamp(t), "20261129T071500Z");
        assert!(time_in_name("backup-x").is_none());
    }
}
