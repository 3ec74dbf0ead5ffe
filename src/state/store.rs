//! `StateStore`: load/save with compare-and-swap, history, lock, encryption.

use super::backend::{
    client_options, retry_config, BackendError, FileBackend, ObjectStoreBackend, ObjectVersion,
    StateBackend, WriteMode,
};
use super::crypto::{self, Keyring, StateAuth};
use super::document::{self, DecodeError, Decoded, Secrets, StateDocument};
use super::lock::{self, backend_err, LockGuard, LockInfo, LockOptions, Unlocked};
use super::{StateError, StateSpec, StoreOptions};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const STATE_KEY: &str = "state.json";
pub const HISTORY_DIR: &str = "history";

pub fn history_key(generation: u64) -> String {
    format!("{HISTORY_DIR}/{generation}.json")
}

/// The version a document was read at: its generation and the object's ETag. Pass it
/// back to [`StateStore::save`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub generation: u64,
    /// `None`: no state object exists yet (the save creates it).
    pub object: Option<ObjectVersion>,
}

impl Version {
    /// The version of a state that does not exist yet.
    pub fn absent() -> Self {
        Version {
            generation: 0,
            object: None,
        }
    }
}

pub const SNAPSHOT_DIR: &str = "snapshots";

/// One stored snapshot (`snapshots/<name>.age`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    pub name: String,
    /// Encrypted size in bytes.
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<DateTime<Utc>>,
}

/// One saved generation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub generation: u64,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// Why the entry cannot be read, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The cluster's remote state.
#[derive(Debug, Clone)]
pub struct StateStore {
    backend: Arc<dyn StateBackend>,
    cluster: Option<String>,
    keyring: Option<Arc<Keyring>>,
    /// A history entry whose write failed after its state was saved; retried first
    /// thing on the next save.
    pending_history: Arc<Mutex<Option<(u64, Bytes)>>>,
    /// Derived MAC keys by (lineage, scrypt work factor): scrypt is slow on purpose.
    mac_keys: Arc<Mutex<MacKeys>>,
    /// Where the newest authenticated generation seen per store is recorded (rollback
    /// detection); `None`: not recorded.
    seen_dir: Option<PathBuf>,
    /// A control-plane node shipping its own snapshots: it holds the state's public
    /// key (to encrypt) and the snapshot MAC key, never the state key.
    node_seal: Option<Arc<NodeSeal>>,
}

/// What a node that ships snapshots holds instead of the state key.
pub struct NodeSeal {
    pub recipient: age::x25519::Recipient,
    pub mac_key: [u8; 32],
}

impl std::fmt::Debug for NodeSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeSeal({}, <mac key>)", self.recipient)
    }
}

/// Derived MAC keys by (lineage, scrypt work factor).
type MacKeys = HashMap<(String, Option<u8>), [u8; 32]>;

/// What this machine last saw of a store: its newest authenticated generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Seen {
    url: String,
    lineage: String,
    generation: u64,
    mac: String,
}

/// The default directory of the rollback records: `$XDG_STATE_HOME/kubeforge/seen`,
/// else `~/.local/state/kubeforge/seen`.
pub fn default_seen_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(base.join("kubeforge").join("seen"))
}

fn url_err(url: &str, detail: impl Into<String>) -> StateError {
    StateError::Url {
        url: url.to_string(),
        detail: detail.into(),
    }
}

/// Split `scheme://bucket/some/prefix` into (bucket, prefix).
fn bucket_and_prefix<'a>(url: &'a str, rest: &'a str) -> Result<(&'a str, &'a str), StateError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(url_err(url, "the bucket name is missing"));
    }
    Ok((bucket, prefix.trim_matches('/')))
}

/// An S3 client for `bucket` with the store options (endpoint, region, path style,
/// http, named credentials; the usual AWS variables otherwise). `url` is for messages.
pub fn s3_client(
    url: &str,
    bucket: &str,
    options: &StoreOptions,
) -> Result<object_store::aws::AmazonS3, StateError> {
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry_config())
        .with_client_options(
            client_options(options.allow_http, options.ca_bundle.as_deref())
                .map_err(|e| url_err(url, e))?,
        )
        .with_allow_http(options.allow_http)
        .with_virtual_hosted_style_request(!options.path_style);
    if let Some(endpoint) = &options.endpoint {
        b = b.with_endpoint(endpoint);
    }
    if let Some(c) = &options.credentials {
        b = b
            .with_access_key_id(&c.access_key_id)
            .with_secret_access_key(&c.secret_access_key);
        if let Some(t) = &c.session_token {
            b = b.with_token(t);
        }
    }
    let region = options
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    b.with_region(region)
        .build()
        .map_err(|e| url_err(url, e.to_string()))
}

impl StateStore {
    /// Open the store of a cluster from its `spec.state` (URL default:
    /// [`super::default_url`]). Relative file URLs and key files resolve against
    /// `base_dir`.
    pub fn open(spec: &StateSpec, cluster_name: &str, base_dir: &Path) -> Result<Self, StateError> {
        let url = spec
            .url
            .clone()
            .unwrap_or_else(|| super::default_url(cluster_name));
        let backend = Self::backend_for(&url, &spec.options()?, base_dir)?;
        let keyring = Keyring::resolve(&spec.encryption, base_dir)?;
        Ok(StateStore::with_backend(backend)
            .with_cluster(Some(cluster_name.to_string()))
            .with_keyring(keyring))
    }

    /// Open a store by URL alone (key from the default environment variables).
    pub fn open_url(
        url: &str,
        options: &StoreOptions,
        base_dir: &Path,
    ) -> Result<Self, StateError> {
        let backend = Self::backend_for(url, options, base_dir)?;
        let keyring = Keyring::resolve(&Default::default(), base_dir)?;
        Ok(StateStore::with_backend(backend).with_keyring(keyring))
    }

    /// A store over any backend (tests use `memory://` or their own fakes).
    pub fn with_backend(backend: Arc<dyn StateBackend>) -> Self {
        StateStore {
            backend,
            cluster: None,
            keyring: None,
            pending_history: Arc::new(Mutex::new(None)),
            mac_keys: Arc::new(Mutex::new(HashMap::new())),
            seen_dir: default_seen_dir(),
            node_seal: None,
        }
    }

    /// A store that can write snapshots (encrypted to the state's public key, their
    /// metadata authenticated) and nothing secret else: what a control-plane node
    /// shipping its timer's snapshots gets.
    pub fn with_node_seal(mut self, seal: NodeSeal) -> Self {
        self.node_seal = Some(Arc::new(seal));
        self
    }

    /// The key snapshot metadata is authenticated with (HMAC-SHA256): derived from the
    /// state key for this cluster (HKDF for an X25519 key; scrypt with work factor
    /// `log_n`, default the keyring's, for a passphrase), or the one a shipping node was
    /// given. None without a key.
    pub fn snapshot_mac_key(&self, log_n: Option<u8>) -> Result<Option<[u8; 32]>, StateError> {
        if let Some(seal) = &self.node_seal {
            return Ok(Some(seal.mac_key));
        }
        let Some(keyring) = &self.keyring else {
            return Ok(None);
        };
        let cluster = self.cluster.as_deref().unwrap_or("-");
        let log_n = log_n.or(keyring.mac_log_n());
        self.mac_key(keyring, &format!("snapshots:{cluster}"), log_n)
            .map(Some)
    }

    /// The scrypt work factor new snapshot MACs are derived with (passphrase only).
    pub fn snapshot_mac_log_n(&self) -> Option<u8> {
        match (&self.node_seal, &self.keyring) {
            (None, Some(k)) => k.mac_log_n(),
            _ => None,
        }
    }

    /// The public key snapshots are encrypted to (X25519 state keys only).
    pub fn snapshot_recipient(&self) -> Option<String> {
        self.keyring.as_ref().and_then(|k| k.recipient())
    }

    /// Record the newest authenticated generation seen in `dir` (default
    /// [`default_seen_dir`]); `None` turns the local rollback record off.
    pub fn with_seen_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.seen_dir = dir;
        self
    }

    /// An empty in-process store (for unit tests of code that uses the state).
    pub fn in_memory() -> Self {
        let store = Arc::new(object_store::memory::InMemory::new());
        Self::with_backend(Arc::new(ObjectStoreBackend::new(store, "", "memory://")))
            .with_seen_dir(None)
    }

    pub fn with_cluster(mut self, cluster: Option<String>) -> Self {
        self.cluster = cluster;
        self
    }

    pub fn with_keyring(mut self, keyring: Option<Keyring>) -> Self {
        self.keyring = keyring.map(Arc::new);
        self
    }

    pub fn has_key(&self) -> bool {
        self.keyring.is_some()
    }

    pub fn url(&self) -> String {
        self.backend.describe()
    }

    pub fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.backend
    }

    /// Build the backend for a URL.
    pub fn backend_for(
        url: &str,
        options: &StoreOptions,
        base_dir: &Path,
    ) -> Result<Arc<dyn StateBackend>, StateError> {
        let resolved;
        let options = match &options.ca_bundle {
            Some(ca) if ca.is_relative() => {
                resolved = StoreOptions {
                    ca_bundle: Some(base_dir.join(ca)),
                    ..options.clone()
                };
                &resolved
            }
            _ => options,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            // A bare path is a local directory.
            return Ok(Arc::new(FileBackend::new(resolve_dir(
                Path::new(url),
                base_dir,
            ))));
        };
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(url_err(url, "the directory is missing"));
                }
                Ok(Arc::new(FileBackend::new(resolve_dir(
                    Path::new(rest),
                    base_dir,
                ))))
            }
            "s3" | "s3a" => {
                let (bucket, prefix) = bucket_and_prefix(url, rest)?;
                let store = s3_client(url, bucket, options)?;
                let shown = match &options.endpoint {
                    Some(ep) => format!("{url} (endpoint {ep})"),
                    None => url.to_string(),
                };
                Ok(Arc::new(ObjectStoreBackend::new(
                    Arc::new(store),
                    prefix,
                    shown,
                )))
            }
            "gs" => {
                let (bucket, prefix) = bucket_and_prefix(url, rest)?;
                let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry_config())
                    .with_client_options(
                        client_options(options.allow_http, options.ca_bundle.as_deref())
                            .map_err(|e| url_err(url, e))?,
                    )
                    .build()
                    .map_err(|e| url_err(url, e.to_string()))?;
                Ok(Arc::new(ObjectStoreBackend::new(
                    Arc::new(store),
                    prefix,
                    url,
                )))
            }
            "az" | "azure" | "abfs" => {
                let (container, prefix) = bucket_and_prefix(url, rest)?;
                let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry_config())
                    .with_client_options(
                        client_options(options.allow_http, options.ca_bundle.as_deref())
                            .map_err(|e| url_err(url, e))?,
                    )
                    .build()
                    .map_err(|e| url_err(url, e.to_string()))?;
                Ok(Arc::new(ObjectStoreBackend::new(
                    Arc::new(store),
                    prefix,
                    url,
                )))
            }
            "memory" => Ok(Arc::new(ObjectStoreBackend::new(
                Arc::new(object_store::memory::InMemory::new()),
                rest,
                url,
            ))),
            other => Err(url_err(
                url,
                format!("unknown scheme {other:?} (use file://, s3://, gs:// or az://)"),
            )),
        }
    }

    // ---------------------------------------------------------------- lock

    /// Take the lock for `command` (the command line shown to others) with the default
    /// lease; it is refreshed in the background until released.
    pub async fn lock(&self, command: &str) -> Result<LockGuard, StateError> {
        self.lock_with(LockOptions::new(command)).await
    }

    pub async fn lock_with(&self, opts: LockOptions) -> Result<LockGuard, StateError> {
        lock::acquire(self.backend.clone(), opts).await
    }

    /// Who holds the lock, if anyone.
    pub async fn lock_status(&self) -> Result<Option<LockInfo>, StateError> {
        Ok(lock::read_lock(self.backend.as_ref())
            .await?
            .map(|(i, _)| i))
    }

    /// Remove an expired lock (`force`: any lock). Returns what was broken.
    pub async fn unlock(&self, force: bool) -> Result<Option<Unlocked>, StateError> {
        lock::unlock(self.backend.as_ref(), force).await
    }

    pub async fn unlock_force(&self) -> Result<Option<Unlocked>, StateError> {
        self.unlock(true).await
    }

    // ---------------------------------------------------------------- read

    fn corrupted(&self, key: &str, detail: String, last_good: Option<u64>) -> StateError {
        StateError::Corrupted {
            url: self.url(),
            key: key.to_string(),
            detail,
            last_good,
        }
    }

    fn check_cluster(&self, doc: &StateDocument) -> Result<(), StateError> {
        if let Some(c) = &self.cluster {
            if !doc.cluster.is_empty() && doc.cluster != *c {
                return Err(StateError::ClusterMismatch {
                    url: self.url(),
                    expected: c.clone(),
                    found: doc.cluster.clone(),
                });
            }
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>, StateError> {
        self.backend
            .get(key)
            .await
            .map_err(|e| backend_err(self.backend.as_ref(), e))
    }

    /// Decode `state.json`; on damage, report the last good generation from history.
    /// With a key, the document must be authenticated and not older than what was seen
    /// before (see [`Self::check_rollback`]).
    async fn decode_current(&self, bytes: &[u8]) -> Result<StateDocument, StateError> {
        let d = self.decode_current_unverified(bytes).await?;
        self.verify(STATE_KEY, &d)?;
        self.check_rollback(&d).await?;
        Ok(d.doc)
    }

    async fn decode_current_unverified(&self, bytes: &[u8]) -> Result<Decoded, StateError> {
        match document::decode_full(bytes) {
            Ok(d) => Ok(d),
            Err(DecodeError::Unsupported(detail)) => Err(StateError::Unsupported {
                url: self.url(),
                key: STATE_KEY.into(),
                detail,
            }),
            Err(DecodeError::Corrupted(detail)) => {
                let last_good = self.last_good_generation().await.unwrap_or(None);
                Err(self.corrupted(STATE_KEY, detail, last_good))
            }
        }
    }

    /// The highest generation in history that decodes cleanly (and, with a key, is
    /// authenticated).
    pub async fn last_good_generation(&self) -> Result<Option<u64>, StateError> {
        let mut gens = self.history_generations().await?;
        gens.sort_unstable_by(|a, b| b.cmp(a));
        for g in gens.into_iter().take(50) {
            if let Some((bytes, _)) = self.get(&history_key(g)).await? {
                if let Ok(d) = document::decode_full(&bytes) {
                    if self.verify(&history_key(g), &d).is_ok() {
                        return Ok(Some(g));
                    }
                }
            }
        }
        Ok(None)
    }

    // ---------------------------------------------------------------- authentication

    fn mac_key(
        &self,
        keyring: &Keyring,
        lineage: &str,
        log_n: Option<u8>,
    ) -> Result<[u8; 32], StateError> {
        let id = (lineage.to_string(), log_n);
        if let Some(k) = self.mac_keys.lock().expect("mac keys").get(&id) {
            return Ok(*k);
        }
        let k = keyring.mac_key(lineage, log_n)?;
        self.mac_keys.lock().expect("mac keys").insert(id, k);
        Ok(k)
    }

    fn unauthenticated(&self, key: &str, detail: String, hint: String) -> StateError {
        StateError::Unauthenticated {
            url: self.url(),
            key: key.to_string(),
            detail,
            hint,
        }
    }

    /// With a key: the document's MAC must verify. Without one there is nothing to
    /// check against (such a store is not authenticated; see docs/state.md).
    fn verify(&self, key: &str, d: &Decoded) -> Result<(), StateError> {
        let Some(keyring) = &self.keyring else {
            return Ok(());
        };
        let Some(auth) = &d.auth else {
            let hint = if key == STATE_KEY {
                format!(
                    ". If it was written by a kubeforge from before state authentication and you trust it, check it with `kubeforge state show` and adopt it with `kubeforge state migrate --generation {}`",
                    d.doc.generation
                )
            } else {
                String::new()
            };
            return Err(self.unauthenticated(key, "it carries no authentication tag".into(), hint));
        };
        // A tag that does not verify because the key is simply another one: say so
        // (the secrets do not decrypt either) rather than call the document forged.
        let wrong_key = || -> Option<StateError> {
            let sealed = d.doc.sealed.as_ref()?;
            keyring.open(sealed).err()
        };
        if auth.alg != crypto::MAC_ALG || auth.kdf != keyring.mac_kdf() {
            if let Some(e) = wrong_key() {
                return Err(e);
            }
            return Err(self.unauthenticated(
                key,
                format!(
                    "it is tagged with {}/{}, but the key from {} authenticates with {}/{}",
                    auth.alg,
                    auth.kdf,
                    keyring.source(),
                    crypto::MAC_ALG,
                    keyring.mac_kdf()
                ),
                String::new(),
            ));
        }
        let mac_key = self.mac_key(keyring, &d.doc.lineage, auth.log_n)?;
        if !crypto::hmac_verify(&mac_key, &d.message, &auth.mac) {
            if let Some(e) = wrong_key() {
                return Err(e);
            }
            return Err(self.unauthenticated(
                key,
                format!(
                    "its authentication tag does not verify with the key from {}",
                    keyring.source()
                ),
                String::new(),
            ));
        }
        Ok(())
    }

    fn seen_path(&self) -> Option<PathBuf> {
        let url = self.url();
        if url.starts_with("memory://") {
            return None;
        }
        let id = hex::encode(&Sha256::digest(url.as_bytes())[..16]);
        Some(self.seen_dir.as_ref()?.join(format!("{id}.json")))
    }

    fn read_seen(&self) -> Option<(PathBuf, Seen)> {
        let path = self.seen_path()?;
        let text = std::fs::read(&path).ok()?;
        let seen: Seen = serde_json::from_slice(&text).ok()?;
        Some((path, seen))
    }

    /// Remember the newest authenticated generation of this store (best effort).
    fn record_seen(&self, doc: &StateDocument, mac: &str) {
        if self.keyring.is_none() {
            return;
        }
        let Some(path) = self.seen_path() else {
            return;
        };
        if let Some((_, old)) = self.read_seen() {
            if old.lineage == doc.lineage && old.generation >= doc.generation {
                return;
            }
        }
        let seen = Seen {
            url: self.url(),
            lineage: doc.lineage.clone(),
            generation: doc.generation,
            mac: mac.to_string(),
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&seen).expect("seen serializes"),
            )?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!(
                "cannot record the state generation seen in {}: {e} (rollback detection relies on history only)",
                path.display()
            );
        }
    }

    /// Refuse an authenticated but older document presented as current: the newest
    /// generation this machine saw of the same lineage (recorded under
    /// [`default_seen_dir`]) and the newest authenticated generation in history must
    /// not be newer than it.
    async fn check_rollback(&self, d: &Decoded) -> Result<(), StateError> {
        let (Some(_), Some(auth)) = (&self.keyring, &d.auth) else {
            return Ok(());
        };
        let doc = &d.doc;
        if let Some((path, seen)) = self.read_seen() {
            if seen.lineage == doc.lineage {
                if seen.generation > doc.generation {
                    return Err(StateError::Rollback {
                        url: self.url(),
                        key: STATE_KEY.into(),
                        found: doc.generation,
                        evidence: format!(
                            "generation {} was seen here before (recorded in {})",
                            seen.generation,
                            path.display()
                        ),
                    });
                }
                if seen.generation == doc.generation && seen.mac != auth.mac {
                    return Err(StateError::Rollback {
                        url: self.url(),
                        key: STATE_KEY.into(),
                        found: doc.generation,
                        evidence: format!(
                            "a different generation {} was seen here before (recorded in {})",
                            seen.generation,
                            path.display()
                        ),
                    });
                }
            }
        }
        let newer = self
            .history_generations()
            .await?
            .into_iter()
            .filter(|g| *g > doc.generation)
            .max();
        if let Some(g) = newer {
            if let Some((bytes, _)) = self.get(&history_key(g)).await? {
                if let Ok(h) = document::decode_full(&bytes) {
                    if h.doc.lineage == doc.lineage
                        && h.doc.generation == g
                        && self.verify(&history_key(g), &h).is_ok()
                    {
                        return Err(StateError::Rollback {
                            url: self.url(),
                            key: STATE_KEY.into(),
                            found: doc.generation,
                            evidence: format!(
                                "history/{g}.json holds a newer authenticated generation {g}"
                            ),
                        });
                    }
                }
            }
        }
        self.record_seen(doc, &auth.mac);
        Ok(())
    }

    async fn history_generations(&self) -> Result<Vec<u64>, StateError> {
        let listed = self
            .backend
            .list(HISTORY_DIR)
            .await
            .map_err(|e| backend_err(self.backend.as_ref(), e))?;
        Ok(listed
            .iter()
            .filter_map(|l| {
                l.key
                    .strip_prefix("history/")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect())
    }

    /// The current state with its secrets left sealed (no key needed). For showing,
    /// pulling and pushing.
    pub async fn load_sealed(&self) -> Result<Option<(StateDocument, Version)>, StateError> {
        let Some((bytes, object)) = self.get(STATE_KEY).await? else {
            return Ok(None);
        };
        let doc = self.decode_current(&bytes).await?;
        self.check_cluster(&doc)?;
        let version = Version {
            generation: doc.generation,
            object: Some(object),
        };
        Ok(Some((doc, version)))
    }

    /// The current state with its secrets decrypted. Fails without a key when the state
    /// holds secrets, and with a clear error for a wrong key (nothing is changed).
    pub async fn load(&self) -> Result<Option<(StateDocument, Version)>, StateError> {
        let Some((mut doc, version)) = self.load_sealed().await? else {
            return Ok(None);
        };
        self.open_secrets(&mut doc)?;
        Ok(Some((doc, version)))
    }

    /// [`Self::load`], or a new empty document (generation 0) when there is no state.
    pub async fn load_or_new(&self) -> Result<(StateDocument, Version), StateError> {
        match self.load().await? {
            Some(found) => Ok(found),
            None => Ok((
                StateDocument::new(self.cluster.as_deref().unwrap_or_default()),
                Version::absent(),
            )),
        }
    }

    /// Decrypt a document's sealed secrets into `doc.secrets`.
    pub fn open_secrets(&self, doc: &mut StateDocument) -> Result<(), StateError> {
        let Some(sealed) = doc.sealed.clone() else {
            doc.secrets_open = true;
            return Ok(());
        };
        let Some(keyring) = &self.keyring else {
            return Err(StateError::NoKey {
                url: self.url(),
                names: sealed.names.join(", "),
            });
        };
        let plain = keyring.open(&sealed)?;
        doc.secrets = Secrets::from_plaintext(&plain)?;
        doc.sealed_digest = Some(Sha256::digest(&plain).into());
        doc.secrets_open = true;
        Ok(())
    }

    /// One generation from history (secrets sealed; see [`Self::open_secrets`]).
    pub async fn load_generation(&self, generation: u64) -> Result<StateDocument, StateError> {
        let (_, doc) = self.raw_generation(generation).await?;
        Ok(doc)
    }

    async fn raw_generation(&self, generation: u64) -> Result<(Bytes, StateDocument), StateError> {
        let key = history_key(generation);
        let Some((bytes, _)) = self.get(&key).await? else {
            return Err(StateError::NoGeneration {
                url: self.url(),
                generation,
            });
        };
        let doc = match document::decode_full(&bytes) {
            Ok(d) => {
                self.verify(&key, &d)?;
                d.doc
            }
            Err(DecodeError::Corrupted(detail)) => {
                let last_good = self.last_good_generation().await.unwrap_or(None);
                return Err(self.corrupted(&key, detail, last_good));
            }
            Err(DecodeError::Unsupported(detail)) => {
                return Err(StateError::Unsupported {
                    url: self.url(),
                    key,
                    detail,
                })
            }
        };
        Ok((bytes, doc))
    }

    /// The stored bytes of the current state (or of `generation`), verified, for
    /// `state pull`. Secrets stay encrypted.
    pub async fn pull(
        &self,
        generation: Option<u64>,
    ) -> Result<(Bytes, StateDocument), StateError> {
        match generation {
            Some(g) => self.raw_generation(g).await,
            None => {
                let Some((bytes, _)) = self.get(STATE_KEY).await? else {
                    return Err(StateError::NoState { url: self.url() });
                };
                let doc = self.decode_current(&bytes).await?;
                self.check_cluster(&doc)?;
                Ok((bytes, doc))
            }
        }
    }

    /// Every generation kept in history, oldest first.
    pub async fn history(&self) -> Result<Vec<HistoryEntry>, StateError> {
        let listed = self
            .backend
            .list(HISTORY_DIR)
            .await
            .map_err(|e| backend_err(self.backend.as_ref(), e))?;
        let mut items: Vec<(u64, u64)> = listed
            .iter()
            .filter_map(|l| {
                let g = l
                    .key
                    .strip_prefix("history/")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((g, l.size))
            })
            .collect();
        items.sort_unstable();
        let entries = futures::stream::iter(items)
            .map(|(generation, size)| async move {
                let mut e = HistoryEntry {
                    generation,
                    size,
                    updated: None,
                    updated_by: None,
                    problem: None,
                };
                match self.get(&history_key(generation)).await {
                    Ok(Some((bytes, _))) => match document::decode(&bytes) {
                        Ok(doc) => {
                            e.updated = doc.updated;
                            e.updated_by = doc.updated_by;
                            if doc.generation != generation {
                                e.problem = Some(format!("holds generation {}", doc.generation));
                            }
                        }
                        Err(DecodeError::Corrupted(d)) | Err(DecodeError::Unsupported(d)) => {
                            e.problem = Some(d)
                        }
                    },
                    Ok(None) => e.problem = Some("vanished while listing".into()),
                    Err(err) => return Err(err),
                }
                Ok(e)
            })
            .buffered(8)
            .collect::<Vec<_>>()
            .await;
        entries.into_iter().collect()
    }

    // ---------------------------------------------------------------- write

    /// Save `doc`, read at `base`, as generation `base.generation + 1`: a
    /// compare-and-swap on the state object's ETag (create-if-absent for the first
    /// save). Losing the race is [`StateError::Conflict`]; nothing is overwritten.
    /// On success `doc` is updated (generation, updated, sealed secrets) and the new
    /// version is returned. Secrets are encrypted; without a key, a document that holds
    /// secrets is refused.
    pub async fn save(
        &self,
        doc: &mut StateDocument,
        base: &Version,
    ) -> Result<Version, StateError> {
        if doc.generation != base.generation {
            return Err(StateError::Usage(format!(
                "internal: a document at generation {} was saved against version {}",
                doc.generation, base.generation
            )));
        }
        self.check_cluster(doc)?;
        self.flush_pending_history().await;

        let mut next = doc.clone();
        if !next.secrets_open && !next.secrets.is_empty() {
            // Secrets set on a document whose sealed secrets were never decrypted:
            // writing the old blob back would silently drop them.
            return Err(match &self.keyring {
                None => StateError::NoKey {
                    url: self.url(),
                    names: next.secret_names().join(", "),
                },
                Some(_) => StateError::Usage(
                    "internal: secrets changed on a document read without decrypting them (use StateStore::load)".into(),
                ),
            });
        }
        if next.secrets_open {
            if next.secrets.is_empty() {
                next.sealed = None;
                next.sealed_digest = None;
            } else {
                let plain = next.secrets.to_plaintext();
                let digest: [u8; 32] = Sha256::digest(&plain).into();
                if next.sealed.is_none() || next.sealed_digest != Some(digest) {
                    let Some(keyring) = &self.keyring else {
                        return Err(StateError::NoKey {
                            url: self.url(),
                            names: next.secrets.names().join(", "),
                        });
                    };
                    next.sealed = Some(keyring.seal(next.secrets.names(), &plain)?);
                    next.sealed_digest = Some(digest);
                }
            }
        }
        if next.cluster.is_empty() {
            next.cluster = self.cluster.clone().unwrap_or_default();
        }
        next.generation = base.generation + 1;
        next.updated = Some(Utc::now());
        next.updated_by = Some(lock::current_holder());
        next.versions.kubeforge = Some(env!("CARGO_PKG_VERSION").to_string());
        if next.lineage.is_empty() {
            next.lineage = format!("{:032x}", rand::random::<u128>());
        }
        let signer = match &self.keyring {
            Some(k) => Some((
                self.mac_key(k, &next.lineage, k.mac_log_n())?,
                k.mac_kdf(),
                k.mac_log_n(),
            )),
            None => None,
        };
        let mut mac = String::new();
        let bytes = Bytes::from(document::encode_authenticated(&next, |message| {
            let (key, kdf, log_n) = signer?;
            mac = crypto::hmac_hex(&key, message);
            Some(StateAuth {
                alg: crypto::MAC_ALG.to_string(),
                kdf: kdf.to_string(),
                log_n,
                mac: mac.clone(),
            })
        }));

        let mode = match &base.object {
            None => WriteMode::Create,
            Some(v) => WriteMode::Update(v.clone()),
        };
        let object = match self.backend.put(STATE_KEY, bytes.clone(), mode).await {
            Ok(v) => v,
            Err(BackendError::Precondition)
            | Err(BackendError::AlreadyExists)
            | Err(BackendError::NotFound) => {
                let current = self.get(STATE_KEY).await.ok().flatten();
                match current {
                    // Our own write went through but its answer was lost and the retry
                    // failed its condition: the stored bytes are exactly ours.
                    Some((b, v)) if b == bytes => v,
                    other => {
                        let current = other
                            .and_then(|(b, _)| document::decode(&b).ok())
                            .map(|d| d.generation);
                        return Err(StateError::Conflict {
                            url: self.url(),
                            base: base.generation,
                            current,
                        });
                    }
                }
            }
            Err(e) => return Err(backend_err(self.backend.as_ref(), e)),
        };
        self.write_history(next.generation, bytes).await;
        self.record_seen(&next, &mac);
        *doc = next;
        Ok(Version {
            generation: doc.generation,
            object: Some(object),
        })
    }

    async fn write_history(&self, generation: u64, bytes: Bytes) {
        match self
            .backend
            .put(&history_key(generation), bytes.clone(), WriteMode::Create)
            .await
        {
            Ok(_) => {}
            Err(BackendError::AlreadyExists) => {
                tracing::warn!("history/{generation}.json already exists; left as it is");
            }
            Err(e) => {
                tracing::warn!(
                    "generation {generation} is saved but its history copy is not ({e}); it will be written on the next save"
                );
                *self.pending_history.lock().expect("pending history") = Some((generation, bytes));
            }
        }
    }

    async fn flush_pending_history(&self) {
        let pending = self.pending_history.lock().expect("pending history").take();
        if let Some((g, bytes)) = pending {
            self.write_history(g, bytes).await;
        }
    }

    /// `state migrate`: adopt a state written before state authentication (no MAC) as
    /// a new, authenticated generation. Needs the key (the secrets must decrypt with
    /// it) and the generation the operator checked (`expected`); refused when the
    /// state is already authenticated or carries a tag that does not verify.
    pub async fn migrate(&self, expected: u64) -> Result<(StateDocument, Version), StateError> {
        let Some(keyring) = &self.keyring else {
            return Err(StateError::Key(format!(
                "adopting the unauthenticated state at {} needs the state key (it authenticates every later save): set KUBEFORGE_STATE_KEY_FILE, KUBEFORGE_STATE_KEY or KUBEFORGE_STATE_PASSPHRASE, or spec.state.encryption",
                self.url()
            )));
        };
        let Some((bytes, object)) = self.get(STATE_KEY).await? else {
            return Err(StateError::NoState { url: self.url() });
        };
        let d = self.decode_current_unverified(&bytes).await?;
        self.check_cluster(&d.doc)?;
        if d.auth.is_some() {
            self.verify(STATE_KEY, &d)?;
            return Err(StateError::Usage(format!(
                "the state at {} is already authenticated with the key from {}: nothing to migrate",
                self.url(),
                keyring.source()
            )));
        }
        if d.doc.generation != expected {
            return Err(StateError::Conflict {
                url: self.url(),
                base: expected,
                current: Some(d.doc.generation),
            });
        }
        // A store that has held authenticated generations never goes back to an
        // unauthenticated one: such a state.json had its tag stripped.
        let refuse = |evidence: String| {
            self.unauthenticated(
                STATE_KEY,
                format!("it carries no authentication tag, but {evidence}"),
                ". It is not a state from before authentication and is not adopted".into(),
            )
        };
        if let Some((path, seen)) = self.read_seen() {
            return Err(refuse(format!(
                "authenticated generation {} of this store was seen here before (recorded in {})",
                seen.generation,
                path.display()
            )));
        }
        let mut gens = self.history_generations().await?;
        gens.sort_unstable_by(|a, b| b.cmp(a));
        for g in gens.into_iter().take(50) {
            if let Some((hb, _)) = self.get(&history_key(g)).await? {
                if let Ok(h) = document::decode_full(&hb) {
                    if h.auth.is_some() && self.verify(&history_key(g), &h).is_ok() {
                        return Err(refuse(format!(
                            "history/{g}.json is an authenticated generation of this store"
                        )));
                    }
                }
            }
        }
        let mut doc = d.doc;
        self.open_secrets(&mut doc)?;
        let base = Version {
            generation: doc.generation,
            object: Some(object),
        };
        let v = self.save(&mut doc, &base).await?;
        Ok((doc, v))
    }

    /// `state push`: replace the state with an edited copy pulled at `expected`
    /// generation. The copy's sealed secrets are written back as they are. The current
    /// state must verify (with a key); an authenticated state needs the key.
    pub async fn push(&self, bytes: &[u8], expected: u64) -> Result<Version, StateError> {
        let mut doc = self.pushed_document(bytes, expected)?;
        let base = match self.get(STATE_KEY).await? {
            None if expected == 0 => Version::absent(),
            None => {
                return Err(StateError::Conflict {
                    url: self.url(),
                    base: expected,
                    current: None,
                })
            }
            Some((current, object)) => {
                if self.keyring.is_none() {
                    if let Ok(d) = document::decode_full(&current) {
                        if d.auth.is_some() {
                            return Err(StateError::Key(format!(
                                "the state at {} is authenticated: pushing a copy needs the state key (set KUBEFORGE_STATE_KEY_FILE, KUBEFORGE_STATE_KEY or KUBEFORGE_STATE_PASSPHRASE, or spec.state.encryption); nothing was changed",
                                self.url()
                            )));
                        }
                    }
                }
                let cur = self.decode_current(&current).await?;
                if cur.generation != expected {
                    return Err(StateError::Conflict {
                        url: self.url(),
                        base: expected,
                        current: Some(cur.generation),
                    });
                }
                Version {
                    generation: expected,
                    object: Some(object),
                }
            }
        };
        doc.secrets_open = doc.sealed.is_none();
        self.save(&mut doc, &base).await
    }

    fn pushed_document(&self, bytes: &[u8], expected: u64) -> Result<StateDocument, StateError> {
        let (doc, authenticated) = document::decode_edited(bytes)
            .map_err(|e| StateError::Usage(format!("the file is not a state document: {e}")))?;
        if doc.generation != expected {
            return Err(StateError::Usage(format!(
                "the file holds generation {} but --generation is {expected}",
                doc.generation
            )));
        }
        if self.keyring.is_none() && authenticated {
            return Err(StateError::Key(format!(
                "the copy comes from an authenticated state: pushing it to {} needs the state key (set KUBEFORGE_STATE_KEY_FILE, KUBEFORGE_STATE_KEY or KUBEFORGE_STATE_PASSPHRASE, or spec.state.encryption); nothing was changed",
                self.url()
            )));
        }
        self.check_cluster(&doc)?;
        if doc.sealed.is_some() && self.keyring.is_some() {
            // Refuse a copy whose secrets our key cannot read (e.g. from another store).
            let mut probe = doc.clone();
            self.open_secrets(&mut probe)?;
        }
        Ok(doc)
    }

    /// `state push --replace-corrupted`: replace a state object that fails its checksum
    /// (or is truncated) with a copy, typically the last good generation pulled from
    /// history. Refused when the current object is intact. Still a compare-and-swap on
    /// the damaged object's ETag; the new generation follows the highest one in history.
    pub async fn push_replacing_corrupted(
        &self,
        bytes: &[u8],
        expected: u64,
    ) -> Result<Version, StateError> {
        let mut doc = self.pushed_document(bytes, expected)?;
        let Some((current, object)) = self.get(STATE_KEY).await? else {
            return Err(StateError::NoState { url: self.url() });
        };
        match document::decode(&current) {
            Err(DecodeError::Corrupted(detail)) => {
                tracing::warn!("replacing the corrupted state object ({detail})");
            }
            _ => {
                return Err(StateError::Usage(format!(
                    "the state at {} is not corrupted: push without --replace-corrupted",
                    self.url()
                )))
            }
        }
        let newest = self
            .history_generations()
            .await?
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(expected);
        doc.generation = newest;
        doc.secrets_open = doc.sealed.is_none();
        let base = Version {
            generation: newest,
            object: Some(object),
        };
        self.save(&mut doc, &base).await
    }
}

impl StateStore {
    fn snapshot_err(&self, name: &str, detail: impl Into<String>) -> StateError {
        StateError::Snapshot {
            url: self.url(),
            name: name.to_string(),
            detail: detail.into(),
        }
    }

    /// Whether `name` can name a snapshot: letters, digits, '.', '_' and '-', not
    /// starting with '.', at most 200 characters (it becomes part of object keys and of
    /// file paths on the nodes).
    pub fn valid_snapshot_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 200
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    }

    fn snapshot_key(&self, name: &str) -> Result<String, StateError> {
        if !Self::valid_snapshot_name(name) {
            return Err(self.snapshot_err(
                name,
                "a snapshot name is letters, digits, '.', '_' and '-' (not starting with '.')",
            ));
        }
        Ok(format!("{SNAPSHOT_DIR}/{name}.age"))
    }

    /// Store a snapshot (an etcd snapshot holds every cluster secret, so it is
    /// encrypted with the state key, which is required). Never overwrites one.
    pub async fn put_snapshot(&self, name: &str, data: &[u8]) -> Result<SnapshotInfo, StateError> {
        let key = self.snapshot_key(name)?;
        let sealed = match (&self.keyring, &self.node_seal) {
            (Some(keyring), _) => Bytes::from(keyring.encrypt_blob(data)?),
            (None, Some(seal)) => Bytes::from(super::crypto::encrypt_to(&seal.recipient, data)?),
            (None, None) => {
                return Err(self.snapshot_err(
                    name,
                    "snapshots hold the cluster's secrets and are encrypted: give the state an encryption key",
                ))
            }
        };
        let size = sealed.len() as u64;
        match self.backend.put(&key, sealed, WriteMode::Create).await {
            Ok(_) => Ok(SnapshotInfo {
                name: name.to_string(),
                size,
                last_modified: Some(Utc::now()),
            }),
            Err(BackendError::AlreadyExists) => {
                Err(self.snapshot_err(name, "a snapshot with this name exists already"))
            }
            Err(e) => Err(backend_err(self.backend.as_ref(), e)),
        }
    }

    /// Read and decrypt a snapshot.
    pub async fn get_snapshot(&self, name: &str) -> Result<Vec<u8>, StateError> {
        let key = self.snapshot_key(name)?;
        let Some((bytes, _)) = self.get(&key).await? else {
            return Err(self.snapshot_err(name, "no such snapshot"));
        };
        let Some(keyring) = &self.keyring else {
            return Err(self.snapshot_err(name, "it is encrypted and no key was given"));
        };
        keyring.decrypt_blob(&bytes).map_err(|e| match e {
            Ok(wrong) => wrong,
            Err(detail) => self.snapshot_err(name, format!("corrupted or truncated: {detail}")),
        })
    }

    /// Store what a snapshot is (time, versions, revision, members, source, sha256) next
    /// to it as `snapshots/<name>.json`: no secret, readable without the key.
    pub async fn put_snapshot_meta(&self, name: &str, meta: &[u8]) -> Result<(), StateError> {
        let key = self.snapshot_key(name)?.replace(".age", ".json");
        self.backend
            .put(&key, Bytes::copy_from_slice(meta), WriteMode::Overwrite)
            .await
            .map(|_| ())
            .map_err(|e| backend_err(self.backend.as_ref(), e))
    }

    /// What [`Self::put_snapshot_meta`] stored for `name` (None: nothing stored).
    pub async fn snapshot_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        let key = self.snapshot_key(name)?.replace(".age", ".json");
        Ok(self.get(&key).await?.map(|(b, _)| b.to_vec()))
    }

    /// Delete a snapshot and what is stored about it.
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), StateError> {
        let key = self.snapshot_key(name)?;
        for k in [key.replace(".age", ".json"), key] {
            self.backend
                .delete(&k)
                .await
                .map_err(|e| backend_err(self.backend.as_ref(), e))?;
        }
        Ok(())
    }

    /// Stored snapshots, oldest name first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, StateError> {
        let listed = self
            .backend
            .list(SNAPSHOT_DIR)
            .await
            .map_err(|e| backend_err(self.backend.as_ref(), e))?;
        let mut out: Vec<SnapshotInfo> = listed
            .into_iter()
            .filter_map(|l| {
                let name = l.key.strip_prefix("snapshots/")?.strip_suffix(".age")?;
                Some(SnapshotInfo {
                    name: name.to_string(),
                    size: l.size,
                    last_modified: l.last_modified,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

fn resolve_dir(p: &Path, base_dir: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    };
    // Absolute (without resolving symlinks) so messages name the real place.
    std::path::absolute(&joined).unwrap_or(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed() -> StateStore {
        StateStore::in_memory()
            .with_cluster(Some("demo".into()))
            .with_keyring(Some(Keyring::generate().0))
    }

    #[tokio::test]
    async fn save_load_cas_and_history() {
        let store = keyed();
        let (mut doc, v0) = store.load_or_new().await.unwrap();
        assert_eq!(v0, Version::absent());
        doc.secrets.admin_kubeconfig = Some("kubeconfig-secret".into());
        let v1 = store.save(&mut doc, &v0).await.unwrap();
        assert_eq!(v1.generation, 1);
        // A second save against the old version loses.
        let mut stale = doc.clone();
        stale.generation = 0;
        let err = store.save(&mut stale, &v0).await.unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Conflict {
                    base: 0,
                    current: Some(1),
                    ..
                }
            ),
            "{err}"
        );
        let (loaded, lv) = store.load().await.unwrap().unwrap();
        assert_eq!(lv, v1);
        assert_eq!(
            loaded.secrets.admin_kubeconfig.as_deref(),
            Some("kubeconfig-secret")
        );
        let h = store.history().await.unwrap();
        assert_eq!(h.iter().map(|e| e.generation).collect::<Vec<_>>(), vec![1]);
        let raw = store.pull(None).await.unwrap().0;
        assert!(!String::from_utf8_lossy(&raw).contains("kubeconfig-secret"));
    }

    /// A backend whose writes go through but whose answers are lost, as when a
    /// conditional PUT succeeds, the connection drops, and the retry fails its
    /// condition (412 / already exists).
    #[derive(Debug)]
    struct LostAnswers {
        inner: Arc<dyn StateBackend>,
    }

    #[async_trait::async_trait]
    impl StateBackend for LostAnswers {
        fn describe(&self) -> String {
            "lost-answers://".into()
        }
        async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>, BackendError> {
            self.inner.get(key).await
        }
        async fn put(
            &self,
            key: &str,
            body: Bytes,
            mode: WriteMode,
        ) -> Result<ObjectVersion, BackendError> {
            let lost = match &mode {
                WriteMode::Create => BackendError::AlreadyExists,
                _ => BackendError::Precondition,
            };
            self.inner.put(key, body, mode).await?;
            Err(lost)
        }
        async fn delete(&self, key: &str) -> Result<(), BackendError> {
            self.inner.delete(key).await
        }
        async fn list(
            &self,
            dir: &str,
        ) -> Result<Vec<super::super::backend::Listed>, BackendError> {
            self.inner.list(dir).await
        }
    }

    #[tokio::test]
    async fn a_lost_answer_to_our_own_write_is_not_a_conflict() {
        let memory = StateStore::in_memory();
        let store = StateStore::with_backend(Arc::new(LostAnswers {
            inner: memory.backend().clone(),
        }))
        .with_cluster(Some("demo".into()));
        let (mut doc, v0) = store.load_or_new().await.unwrap();
        let v1 = store.save(&mut doc, &v0).await.unwrap();
        assert_eq!(v1.generation, 1);
        let v2 = store.save(&mut doc, &v1).await.unwrap();
        assert_eq!(v2.generation, 2);
        // A real conflict is still one.
        let mut stale = doc.clone();
        stale.generation = 1;
        assert!(matches!(
            store.save(&mut stale, &v1).await,
            Err(StateError::Conflict {
                base: 1,
                current: Some(2),
                ..
            })
        ));
        // The lock: our create went through, its answer was lost.
        let guard = store.lock("test").await.unwrap();
        assert_eq!(
            memory.lock_status().await.unwrap().unwrap().id,
            guard.info().id
        );
        // Someone else's lock is still refused.
        assert!(matches!(
            store.lock("other").await,
            Err(StateError::Locked { .. })
        ));
        guard.release().await.unwrap();
        assert!(memory.lock_status().await.unwrap().is_none());
        // Refreshes whose answers are lost keep the lock too.
        let guard = store
            .lock_with(LockOptions {
                command: "test".into(),
                lease: std::time::Duration::from_secs(2),
                refresh_every: Some(std::time::Duration::from_millis(100)),
                break_stale_lock: false,
            })
            .await
            .unwrap();
        let first = guard.info();
        tokio::time::sleep(std::time::Duration::from_millis(450)).await;
        guard.check().unwrap();
        let held = memory.lock_status().await.unwrap().unwrap();
        assert!(held.expires > first.expires, "not refreshed");
        assert_eq!(held, guard.info());
        guard.release().await.unwrap();
    }

    /// A backend whose reads of the lock return a copy taken earlier: what a releaser
    /// or unlocker sees when the lock changes between its read and its write.
    #[derive(Debug)]
    struct FrozenLockReads {
        inner: Arc<dyn StateBackend>,
        frozen: Mutex<Option<(Bytes, ObjectVersion)>>,
    }

    #[async_trait::async_trait]
    impl StateBackend for FrozenLockReads {
        fn describe(&self) -> String {
            "frozen://".into()
        }
        async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>, BackendError> {
            if key == lock::LOCK_KEY {
                if let Some(f) = self.frozen.lock().unwrap().clone() {
                    return Ok(Some(f));
                }
            }
            self.inner.get(key).await
        }
        async fn put(
            &self,
            key: &str,
            body: Bytes,
            mode: WriteMode,
        ) -> Result<ObjectVersion, BackendError> {
            self.inner.put(key, body, mode).await
        }
        async fn delete(&self, key: &str) -> Result<(), BackendError> {
            self.inner.delete(key).await
        }
        async fn list(
            &self,
            dir: &str,
        ) -> Result<Vec<super::super::backend::Listed>, BackendError> {
            self.inner.list(dir).await
        }
    }

    #[tokio::test]
    async fn release_and_unlock_never_remove_a_newer_holders_lock() {
        let memory = StateStore::in_memory();
        let frozen = Arc::new(FrozenLockReads {
            inner: memory.backend().clone(),
            frozen: Mutex::new(None),
        });
        let store = StateStore::with_backend(frozen.clone());
        let a = store.lock("a").await.unwrap();
        // What A reads from now on: its own lock...
        *frozen.frozen.lock().unwrap() = memory.backend().get(lock::LOCK_KEY).await.unwrap();
        // ...while it was broken and B took the lock.
        memory.unlock(true).await.unwrap();
        let b = memory.lock("b").await.unwrap();
        a.release().await.unwrap();
        assert_eq!(
            memory.lock_status().await.unwrap().map(|l| l.id),
            Some(b.info().id),
            "A's release removed B's lock"
        );
        // An unlock --force that read A's (replaced) lock removes nothing either.
        let err = store.unlock(true).await.unwrap_err();
        assert!(matches!(err, StateError::LockContended { .. }), "{err}");
        assert_eq!(
            memory.lock_status().await.unwrap().map(|l| l.id),
            Some(b.info().id),
            "a stale unlock removed B's lock"
        );
        b.release().await.unwrap();
        assert!(memory.lock_status().await.unwrap().is_none());
        // Free again: the next command takes it (over the tombstone).
        let c = memory.lock("c").await.unwrap();
        assert!(matches!(
            memory.lock("d").await,
            Err(StateError::Locked { .. })
        ));
        c.release().await.unwrap();
    }

    #[test]
    fn urls() {
        let base = Path::new("/srv/clusters");
        let opts = StoreOptions::default();
        let b = StateStore::backend_for("file://state", &opts, base).unwrap();
        assert_eq!(b.describe(), "file:///srv/clusters/state");
        let b = StateStore::backend_for("file:///abs/dir", &opts, base).unwrap();
        assert_eq!(b.describe(), "file:///abs/dir");
        let b = StateStore::backend_for("relative/dir", &opts, base).unwrap();
        assert_eq!(b.describe(), "file:///srv/clusters/relative/dir");
        let s3 = StoreOptions {
            endpoint: Some("http://127.0.0.1:9000".into()),
            path_style: true,
            allow_http: true,
            ..Default::default()
        };
        let b = StateStore::backend_for("s3://bucket/clusters/prod", &s3, base).unwrap();
        assert_eq!(
            b.describe(),
            "s3://bucket/clusters/prod (endpoint http://127.0.0.1:9000)"
        );
        assert!(StateStore::backend_for("gs://bucket/prefix", &opts, base).is_ok());
        for (url, want) in [
            ("s3:///x", "the bucket name is missing"),
            ("file://", "the directory is missing"),
            ("ftp://h/x", "unknown scheme \"ftp\""),
        ] {
            let err = StateStore::backend_for(url, &opts, base).unwrap_err();
            assert!(err.to_string().contains(want), "{url}: {err}");
            assert_eq!(err.exit_kind(), crate::error::ExitKind::Input);
        }
    }

    #[tokio::test]
    async fn keys_live_under_the_prefix() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let backend = Arc::new(ObjectStoreBackend::new(
            memory.clone(),
            "clusters/prod/",
            "memory://clusters/prod",
        ));
        let store = StateStore::with_backend(backend).with_cluster(Some("prod".into()));
        let (mut doc, v0) = store.load_or_new().await.unwrap();
        let v1 = store.save(&mut doc, &v0).await.unwrap();
        store.save(&mut doc, &v1).await.unwrap();
        let lock = store.lock("t").await.unwrap();
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let mut keys: Vec<String> = memory
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        assert_eq!(
            keys,
            [
                "clusters/prod/history/1.json",
                "clusters/prod/history/2.json",
                "clusters/prod/lock",
                "clusters/prod/state.json"
            ]
        );
        lock.release().await.unwrap();
        let gens: Vec<u64> = store
            .history()
            .await
            .unwrap()
            .iter()
            .map(|h| h.generation)
            .collect();
        assert_eq!(gens, [1, 2]);
    }

    #[tokio::test]
    async fn a_dropped_guard_releases_in_the_background() {
        let store = StateStore::in_memory();
        let guard = store.lock("test").await.unwrap();
        assert!(store.lock_status().await.unwrap().is_some());
        drop(guard);
        for _ in 0..50 {
            if store.lock_status().await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the dropped guard did not release the lock");
    }

    #[tokio::test]
    async fn secrets_need_a_key() {
        let store = StateStore::in_memory();
        let (mut doc, v0) = store.load_or_new().await.unwrap();
        doc.secrets
            .join_tokens
            .push("abcdef.0123456789abcdef".into());
        let err = store.save(&mut doc, &v0).await.unwrap_err();
        assert!(matches!(err, StateError::NoKey { .. }), "{err}");
    }

    #[tokio::test]
    async fn unchanged_secrets_are_not_reencrypted() {
        let store = keyed();
        let (mut doc, v0) = store.load_or_new().await.unwrap();
        doc.secrets.certificate_key = Some("ck".into());
        let v1 = store.save(&mut doc, &v0).await.unwrap();
        let sealed1 = doc.sealed.clone();
        doc.host_keys
            .insert("cp-1".into(), "ssh-ed25519 AAAA".into());
        store.save(&mut doc, &v1).await.unwrap();
        assert_eq!(doc.sealed, sealed1);
        doc.secrets.certificate_key = Some("ck2".into());
        let v3 = store
            .save(
                &mut doc,
                &Version {
                    generation: 2,
                    ..v1.clone()
                },
            )
            .await;
        // v1's ETag is stale: conflict, nothing written.
        assert!(matches!(v3, Err(StateError::Conflict { .. })));
    }
}
