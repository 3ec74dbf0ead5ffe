//! Remote state store (issue 3): the cluster's persisted state in object storage, with
//! a leased lock, compare-and-swap saves, a history of every generation, checksums,
//! and age-encrypted secrets. See `docs/state.md`.
//!
//! Layout under the store's prefix: `state.json`, `lock`, `history/<generation>.json`
//! (later `snapshots/`).

pub mod backend;
pub mod crypto;
pub mod document;
pub mod handle;
pub mod lock;
pub mod retention;
pub mod store;

pub use backend::{FileBackend, ObjectStoreBackend, ObjectVersion, StateBackend};
pub use crypto::{Keyring, SealedSecrets};
pub use document::{
    AddonRecord, AppliedVersions, JournalEntry, Machine, ObjectRef, PhaseStatus, Secrets,
    StateDocument,
};
pub use handle::{JournalId, StateHandle};
pub use lock::{HolderHost, LockGuard, LockInfo, LockOptions, Unlocked};
pub use store::{HistoryEntry, NodeSeal, SnapshotInfo, StateStore, Version};

use crate::error::ExitKind;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Connection options for a store URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreOptions {
    /// S3 endpoint URL (MinIO, any S3-compatible store); AWS when unset.
    pub endpoint: Option<String>,
    /// Region (default: $AWS_REGION / $AWS_DEFAULT_REGION, else us-east-1).
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style
    /// (`bucket.endpoint/key`). MinIO and most emulators need it.
    pub path_style: bool,
    /// Allow plain http:// endpoints (local emulators).
    pub allow_http: bool,
    /// S3 credentials read from the variables the cluster file names (default: the
    /// AWS environment). Never serialized.
    #[serde(skip)]
    pub credentials: Option<S3Credentials>,
    /// PEM file of the CA(s) that sign the endpoint's certificate (MinIO over https with
    /// its own CA), added to the system's; relative to the cluster file.
    pub ca_bundle: Option<std::path::PathBuf>,
}

#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

// `spec.state` of the cluster file is intent and lives with the cluster spec; the
// store adds how it is used.
pub use crate::spec::{EncryptionSpec, StateSpec};

impl StateSpec {
    /// Connection options, with the S3 credentials read from the variables named in
    /// `accessKeyIdEnv` / `secretAccessKeyEnv` (an unset variable is an error), else for
    /// s3:// URLs as the AWS CLI finds them (environment, `profile` / $AWS_PROFILE in the
    /// shared credentials and config files).
    pub fn options(&self) -> Result<StoreOptions, StateError> {
        let s3 = self
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("s3://") || u.starts_with("s3a://"));
        s3_options(
            "spec.state",
            S3Settings {
                endpoint: &self.endpoint,
                region: &self.region,
                path_style: self.path_style,
                allow_http: self.allow_http,
                access_key_id_env: &self.access_key_id_env,
                secret_access_key_env: &self.secret_access_key_env,
                profile: &self.profile,
                ca_bundle: &self.ca_bundle,
            },
            s3,
        )
    }
}

/// The S3 settings of a cluster-file block (`spec.state`, a Terraform state source).
pub struct S3Settings<'a> {
    pub endpoint: &'a Option<String>,
    pub region: &'a Option<String>,
    pub path_style: bool,
    pub allow_http: bool,
    pub access_key_id_env: &'a Option<String>,
    pub secret_access_key_env: &'a Option<String>,
    pub profile: &'a Option<String>,
    pub ca_bundle: &'a Option<std::path::PathBuf>,
}

/// Store options from S3 settings; `field` names the block in messages. Credentials are
/// only looked for when `s3` (a file store needs none, and a broken profile must not
/// stop it).
pub fn s3_options(field: &str, s: S3Settings<'_>, s3: bool) -> Result<StoreOptions, StateError> {
    let read = |setting: &str, var: &String| {
        std::env::var(var).map_err(|_| {
            StateError::Usage(format!("{field}.{setting} names {var}, which is not set"))
        })
    };
    let credentials = match (s.access_key_id_env, s.secret_access_key_env) {
        (Some(id), Some(secret)) => Some(S3Credentials {
            access_key_id: read("accessKeyIdEnv", id)?,
            secret_access_key: read("secretAccessKeyEnv", secret)?,
            session_token: None,
        }),
        (Some(_), None) | (None, Some(_)) => {
            return Err(StateError::Usage(format!(
                "{field}: give both accessKeyIdEnv and secretAccessKeyEnv, or neither"
            )))
        }
        (None, None) if s3 => crate::aws_credentials::load(s.profile.as_deref())
            .map_err(|e| StateError::Usage(format!("{field}: S3 credentials: {e}")))?
            .map(|k| S3Credentials {
                access_key_id: k.access_key_id,
                secret_access_key: k.secret_access_key,
                session_token: k.session_token,
            }),
        (None, None) => None,
    };
    let region = s.region.clone().or_else(|| {
        s3.then(|| crate::aws_credentials::profile_region(s.profile.as_deref()))
            .flatten()
    });
    Ok(StoreOptions {
        endpoint: s.endpoint.clone(),
        region,
        path_style: s.path_style,
        allow_http: s.allow_http,
        credentials,
        ca_bundle: s.ca_bundle.clone(),
    })
}

/// The default store of a cluster: a directory next to the cluster file.
pub fn default_url(cluster_name: &str) -> String {
    format!("file://.kubeforge/{cluster_name}")
}

/// Open the store a cluster file describes. Relative `file://` URLs and key files are
/// resolved against `base_dir` (the cluster file's directory).
pub fn open(
    spec: &StateSpec,
    cluster_name: &str,
    base_dir: &std::path::Path,
) -> Result<StateStore, StateError> {
    StateStore::open(spec, cluster_name, base_dir)
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn last_good_text(g: &Option<u64>) -> String {
    match g {
        Some(g) => format!(
            "the last good generation in history is {g}: restore it with `kubeforge state pull --generation {g} --out FILE` and `kubeforge state push FILE --generation {g} --replace-corrupted`"
        ),
        None => "no good generation was found in history".to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid state store URL {url:?}: {detail}")]
    Url { url: String, detail: String },
    #[error("{0}")]
    Usage(String),
    #[error("state encryption key: {0}")]
    Key(String),
    #[error("the state at {url} holds encrypted secrets ({names}) but no key was given: set KUBEFORGE_STATE_KEY_FILE, KUBEFORGE_STATE_KEY or KUBEFORGE_STATE_PASSPHRASE, or spec.state.encryption")]
    NoKey { url: String, names: String },
    #[error("wrong state encryption key: {0}; nothing was changed")]
    WrongKey(String),
    #[error("the state at {url} is locked by {holder}; the lease runs until {} and is refreshed while that command runs", ts(.expires))]
    Locked {
        url: String,
        holder: String,
        expires: DateTime<Utc>,
    },
    #[error("the state at {url} is locked by {holder}; its lease expired at {} (the holder probably died): if it is not running any more, remove the lock with `kubeforge state unlock --force`", ts(.expired))]
    LockExpired {
        url: String,
        holder: String,
        expired: DateTime<Utc>,
    },
    #[error("the state at {url} is locked by {holder}, but that process is dead: {detail}; it was killed without releasing the lock: remove the lock with `kubeforge state unlock` (no --force needed)")]
    LockHolderGone {
        url: String,
        holder: String,
        detail: String,
    },
    #[error(
        "the state at {url} is locked by another command (the lock changed while it was read)"
    )]
    LockContended { url: String },
    #[error("lost the state lock at {url}: {detail}")]
    LockLost { url: String, detail: String },
    #[error("the lock object at {url} is unreadable ({detail}); remove it with `kubeforge state unlock --force`")]
    LockUnreadable { url: String, detail: String },
    #[error("the state at {url} changed since it was read at generation {base}{}: nothing was written; read it again and retry", match .current { Some(c) => format!(" (it is now at generation {c})"), None => String::new() })]
    Conflict {
        url: String,
        base: u64,
        current: Option<u64>,
    },
    #[error("{key} at {url} is corrupted: {detail}; nothing was changed, and {}", last_good_text(.last_good))]
    Corrupted {
        url: String,
        key: String,
        detail: String,
        last_good: Option<u64>,
    },
    #[error("{key} at {url} is not authenticated: {detail}; it was not written with this state key (forged, or altered in the store), so it is not used and nothing was changed{hint}")]
    Unauthenticated {
        url: String,
        key: String,
        detail: String,
        /// What to do (e.g. how to adopt a state from before authentication).
        hint: String,
    },
    #[error("{key} at {url} was rolled back: it presents generation {found} as current, but {evidence}; an older state re-uploaded as current is refused and nothing was changed (if this is intended, pull the generation you want and `kubeforge state push` it as a new generation)")]
    Rollback {
        url: String,
        key: String,
        found: u64,
        evidence: String,
    },
    #[error("{key} at {url} cannot be read by this kubeforge: {detail}")]
    Unsupported {
        url: String,
        key: String,
        detail: String,
    },
    #[error("the state at {url} belongs to cluster {found:?}, not {expected:?}")]
    ClusterMismatch {
        url: String,
        expected: String,
        found: String,
    },
    #[error("there is no state at {url} yet")]
    NoState { url: String },
    #[error("generation {generation} is not in the history at {url}")]
    NoGeneration { url: String, generation: u64 },
    #[error("cannot reach the state store at {url} (retried with backoff); every write is all-or-nothing: read the state again once the store is back")]
    Unavailable {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the state store at {url} cannot do conditional writes (create-if-absent, compare-and-swap), without which the lock and safe saves are impossible; see docs/state.md")]
    NoConditionalWrites {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("snapshot {name:?} at {url}: {detail}")]
    Snapshot {
        url: String,
        name: String,
        detail: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted (Ctrl-C); the state lock was released")]
    Interrupted,
}

impl StateError {
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            StateError::Locked { .. }
            | StateError::LockHolderGone { .. }
            | StateError::LockExpired { .. }
            | StateError::LockContended { .. }
            | StateError::LockLost { .. } => ExitKind::Lock,
            StateError::Url { .. } | StateError::Usage(_) | StateError::Io { .. } => {
                ExitKind::Input
            }
            StateError::Interrupted => ExitKind::Internal,
            _ => ExitKind::State,
        }
    }
}

/// Run `fut` until it finishes or Ctrl-C arrives (then `Err(StateError::Interrupted)`).
/// Pair it with [`LockGuard::release`] so an interrupted command still frees the lock:
/// `let r = until_ctrl_c(work).await; guard.release().await?;`.
pub async fn until_ctrl_c<F: std::future::Future>(fut: F) -> Result<F::Output, StateError> {
    tokio::select! {
        out = fut => Ok(out),
        _ = tokio::signal::ctrl_c() => Err(StateError::Interrupted),
    }
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn s3_credentials_come_from_the_named_variables() {
        std::env::set_var("KF_TEST_S3_ID_71", "minio-user");
        std::env::set_var("KF_TEST_S3_SECRET_71", "minio-secret-value");
        let spec = StateSpec {
            url: Some("s3://b/p".into()),
            access_key_id_env: Some("KF_TEST_S3_ID_71".into()),
            secret_access_key_env: Some("KF_TEST_S3_SECRET_71".into()),
            ..Default::default()
        };
        let c = spec.options().unwrap().credentials.unwrap();
        assert_eq!(c.access_key_id, "minio-user");
        assert_eq!(c.secret_access_key, "minio-secret-value");
        assert!(!format!("{c:?}").contains("minio-secret-value"));
        let missing = StateSpec {
            secret_access_key_env: Some("KF_TEST_S3_UNSET_71".into()),
            ..spec
        };
        assert_eq!(
            missing.options().unwrap_err().to_string(),
            StateError::Usage(
                "spec.state.secretAccessKeyEnv names KF_TEST_S3_UNSET_71, which is not set".into()
            )
            .to_string()
        );
        assert!(StateSpec::default()
            .options()
            .unwrap()
            .credentials
            .is_none());
    }
}
