//! The persisted state document and its on-store envelope (format tag + checksum).
//!
//! Everything here is plain serde with `#[serde(default)]` so other modules can add
//! fields without breaking older documents. Secrets are the exception: [`Secrets`] has
//! no `Serialize` at all; the store seals them with age into [`SealedSecrets`].

use super::crypto::{SealedSecrets, StateAuth};
use super::StateError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// Format tag of the envelope; a newer tag is refused rather than misread.
pub const FORMAT: &str = "kubeforge.dev/state/v1";

/// A machine the cluster runs on, as created or adopted by a provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Machine {
    pub name: String,
    /// The provider's id (docker container id, cloud instance id); none for static hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    pub addresses: Vec<String>,
    /// `control-plane`, `worker`, `load-balancer`, ...
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Versions that are actually applied on the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AppliedVersions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<String>,
    /// The kubeforge version that last wrote the state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeforge: Option<String>,
    /// Other components (containerd, haproxy, addons, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PhaseStatus {
    #[default]
    Started,
    Done,
    Failed,
}

impl fmt::Display for PhaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PhaseStatus::Started => "started",
            PhaseStatus::Done => "done",
            PhaseStatus::Failed => "failed",
        })
    }
}

/// One journal line: a phase applied (or being applied) with a given plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct JournalEntry {
    pub phase: String,
    pub plan_digest: String,
    pub status: PhaseStatus,
    pub started: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// The host the phase ran on, if it is per host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Default for JournalEntry {
    fn default() -> Self {
        JournalEntry {
            phase: String::new(),
            plan_digest: String::new(),
            status: PhaseStatus::Started,
            started: DateTime::<Utc>::UNIX_EPOCH,
            finished: None,
            host: None,
            error: None,
        }
    }
}

/// Cluster secrets. Never serialized in clear: no `Serialize`, redacted `Debug`; the
/// store encrypts them as one age blob when it saves the document.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// Cluster PKI by file name relative to /etc/kubernetes/pki (`ca.crt`, `ca.key`,
    /// `sa.key`, `etcd/ca.key`, `front-proxy-ca.key`, ...).
    pub pki: BTreeMap<String, String>,
    /// kubeadm bootstrap (join) tokens.
    pub join_tokens: Vec<String>,
    /// kubeadm `--certificate-key` for control-plane joins.
    pub certificate_key: Option<String>,
    pub admin_kubeconfig: Option<String>,
    /// Anything else (etcd encryption key, addon credentials, ...).
    pub extra: BTreeMap<String, String>,
}

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.names().is_empty()
    }

    /// Names of the secrets present (never their values).
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        names.extend(self.pki.keys().map(|k| format!("pki/{k}")));
        for i in 0..self.join_tokens.len() {
            names.push(format!("joinTokens/{i}"));
        }
        if self.certificate_key.is_some() {
            names.push("certificateKey".into());
        }
        if self.admin_kubeconfig.is_some() {
            names.push("adminKubeconfig".into());
        }
        names.extend(self.extra.keys().map(|k| format!("extra/{k}")));
        names
    }

    pub(crate) fn to_plaintext(&self) -> Vec<u8> {
        serde_json::to_vec(&SecretsWire::from(self.clone())).expect("secrets serialize")
    }

    pub(crate) fn from_plaintext(bytes: &[u8]) -> Result<Secrets, StateError> {
        let wire: SecretsWire = serde_json::from_slice(bytes).map_err(|e| {
            StateError::WrongKey(format!("the decrypted secrets are not readable: {e}"))
        })?;
        Ok(wire.into())
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets {{ <redacted>: {:?} }}", self.names())
    }
}

/// The clear form that only ever exists inside the encrypted blob.
#[derive(Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SecretsWire {
    pki: BTreeMap<String, String>,
    join_tokens: Vec<String>,
    certificate_key: Option<String>,
    admin_kubeconfig: Option<String>,
    extra: BTreeMap<String, String>,
}

impl From<Secrets> for SecretsWire {
    fn from(s: Secrets) -> Self {
        SecretsWire {
            pki: s.pki,
            join_tokens: s.join_tokens,
            certificate_key: s.certificate_key,
            admin_kubeconfig: s.admin_kubeconfig,
            extra: s.extra,
        }
    }
}

impl From<SecretsWire> for Secrets {
    fn from(s: SecretsWire) -> Self {
        Secrets {
            pki: s.pki,
            join_tokens: s.join_tokens,
            certificate_key: s.certificate_key,
            admin_kubeconfig: s.admin_kubeconfig,
            extra: s.extra,
        }
    }
}

/// A Kubernetes object by identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {} {ns}/{}", self.api_version, self.kind, self.name),
            None => write!(f, "{} {} {}", self.api_version, self.kind, self.name),
        }
    }
}

/// What kubeforge applied for one addon. While an apply is under way `objects` holds
/// the union of the old and the new set, so an interrupted run never loses track of an
/// object it may have created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AddonRecord {
    pub version: String,
    pub objects: Vec<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<DateTime<Utc>>,
}

/// The cluster's persisted state. Change it only under the lock, save it with
/// [`super::StateStore::save`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StateDocument {
    /// Incremented by every save; history/<generation>.json keeps each one.
    pub generation: u64,
    pub cluster: String,
    /// Random id given at the first authenticated save and kept by every later one:
    /// tells a rollback of this state (same lineage, older generation) from a new
    /// state created after the old one was removed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub lineage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<DateTime<Utc>>,
    /// `user@host` of the last writer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// Machines by name.
    pub machines: BTreeMap<String, Machine>,
    /// Pinned SSH host keys: host (name or address) -> OpenSSH public key line.
    pub host_keys: BTreeMap<String, String>,
    /// The pod /24 of each node of the built-in pod network (kept for the node's life).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_cidrs: BTreeMap<String, String>,
    pub versions: AppliedVersions,
    pub journal: Vec<JournalEntry>,
    /// Addons kubeforge applied, by name: what to prune or remove later.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub addons: BTreeMap<String, AddonRecord>,
    /// Cluster secrets, in clear in memory only (see [`Secrets`]).
    #[serde(skip)]
    pub secrets: Secrets,
    /// The encrypted form as stored (names in clear, values sealed).
    #[serde(rename = "secrets", skip_serializing_if = "Option::is_none")]
    pub(crate) sealed: Option<SealedSecrets>,
    /// `secrets` reflects `sealed` (it was decrypted, or the document is new). False for
    /// documents read without a key: their sealed blob is written back untouched.
    #[serde(skip)]
    pub(crate) secrets_open: bool,
    /// Digest of the secrets' clear form that `sealed` holds, to avoid re-encrypting
    /// unchanged secrets on every save (scrypt is slow on purpose).
    #[serde(skip)]
    pub(crate) sealed_digest: Option<[u8; 32]>,
}

impl Default for StateDocument {
    fn default() -> Self {
        StateDocument {
            generation: 0,
            cluster: String::new(),
            lineage: String::new(),
            updated: None,
            updated_by: None,
            machines: BTreeMap::new(),
            host_keys: BTreeMap::new(),
            pod_cidrs: BTreeMap::new(),
            versions: AppliedVersions::default(),
            journal: Vec::new(),
            addons: BTreeMap::new(),
            secrets: Secrets::default(),
            sealed: None,
            secrets_open: true,
            sealed_digest: None,
        }
    }
}

impl StateDocument {
    /// An empty document for a cluster that has no state yet (generation 0, never saved).
    pub fn new(cluster: &str) -> Self {
        StateDocument {
            cluster: cluster.to_string(),
            ..Default::default()
        }
    }

    /// The sealed form of the secrets as stored (names, scheme, recipient), if any.
    pub fn sealed_secrets(&self) -> Option<&SealedSecrets> {
        self.sealed.as_ref()
    }

    /// Names of the stored secrets, whether or not they were decrypted.
    pub fn secret_names(&self) -> Vec<String> {
        if self.secrets_open && self.sealed.is_none() {
            return self.secrets.names();
        }
        self.sealed
            .as_ref()
            .map(|s| s.names.clone())
            .unwrap_or_default()
    }

    /// Record that `phase` starts with the plan `plan_digest`; returns the entry index.
    pub fn journal_start(&mut self, phase: &str, plan_digest: &str, host: Option<&str>) -> usize {
        self.journal.push(JournalEntry {
            phase: phase.to_string(),
            plan_digest: plan_digest.to_string(),
            status: PhaseStatus::Started,
            started: Utc::now(),
            finished: None,
            host: host.map(str::to_string),
            error: None,
        });
        self.journal.len() - 1
    }

    /// Mark journal entry `index` done (`error == None`) or failed.
    pub fn journal_finish(&mut self, index: usize, error: Option<&str>) {
        if let Some(e) = self.journal.get_mut(index) {
            e.finished = Some(Utc::now());
            e.status = if error.is_some() {
                PhaseStatus::Failed
            } else {
                PhaseStatus::Done
            };
            e.error = error.map(str::to_string);
        }
    }

    /// The last journal entry for `phase` (and `host`, when given).
    pub fn last_journal(&self, phase: &str, host: Option<&str>) -> Option<&JournalEntry> {
        self.journal
            .iter()
            .rev()
            .find(|e| e.phase == phase && (host.is_none() || e.host.as_deref() == host))
    }
}

// ---------------------------------------------------------------------------------------
// envelope

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    checksum: String,
    /// The MAC (absent in documents written without a key, and in those written by
    /// kubeforge before state authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<StateAuth>,
    state: serde_json::Value,
}

fn canonical(state: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(state).expect("json value serializes")
}

fn checksum_of(canonical: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(canonical)))
}

/// Serialize a document (whose secrets are already sealed) into the stored bytes.
#[cfg(test)]
pub(crate) fn encode(doc: &StateDocument) -> Vec<u8> {
    encode_authenticated(doc, |_| None)
}

/// [`encode`], with `sign` computing the MAC over the message it is given
/// ([`super::crypto::mac_message`] of the canonical state).
pub(crate) fn encode_authenticated(
    doc: &StateDocument,
    sign: impl FnOnce(&[u8]) -> Option<StateAuth>,
) -> Vec<u8> {
    let state = serde_json::to_value(doc).expect("state document serializes");
    let canon = canonical(&state);
    let auth = sign(&super::crypto::mac_message(&canon));
    let env = Envelope {
        format: FORMAT.to_string(),
        checksum: checksum_of(&canon),
        auth,
        state,
    };
    let mut out = serde_json::to_vec_pretty(&env).expect("envelope serializes");
    out.push(b'\n');
    out
}

/// Why stored bytes are not a valid state document.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Truncated, not JSON, checksum mismatch: the object is damaged.
    Corrupted(String),
    /// Intact but written by a newer kubeforge (unknown format tag).
    Unsupported(String),
}

/// A decoded document with what its authentication needs.
pub(crate) struct Decoded {
    pub doc: StateDocument,
    pub auth: Option<StateAuth>,
    /// The bytes the MAC covers.
    pub message: Vec<u8>,
}

/// Parse stored bytes, verifying format and checksum. Secrets stay sealed.
pub(crate) fn decode(bytes: &[u8]) -> Result<StateDocument, DecodeError> {
    decode_full(bytes).map(|d| d.doc)
}

/// [`decode`], keeping the MAC and the message it covers.
pub(crate) fn decode_full(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
        DecodeError::Corrupted(if e.is_eof() {
            format!("truncated ({} bytes): {e}", bytes.len())
        } else {
            format!("not a state document: {e}")
        })
    })?;
    if env.format != FORMAT {
        return Err(DecodeError::Unsupported(format!(
            "format {:?} is not {FORMAT:?} (written by a newer kubeforge?)",
            env.format
        )));
    }
    let canon = canonical(&env.state);
    let actual = checksum_of(&canon);
    if actual != env.checksum {
        return Err(DecodeError::Corrupted(format!(
            "checksum mismatch: recorded {}, content has {actual}",
            env.checksum
        )));
    }
    let mut doc: StateDocument = serde_json::from_value(env.state)
        .map_err(|e| DecodeError::Corrupted(format!("invalid state document: {e}")))?;
    doc.secrets_open = doc.sealed.is_none();
    Ok(Decoded {
        doc,
        auth: env.auth,
        message: super::crypto::mac_message(&canon),
    })
}

/// Parse a document a person may have edited (`state push`): the checksum is not
/// required to match (it is recomputed on save), but the structure must be valid.
pub(crate) fn decode_edited(bytes: &[u8]) -> Result<(StateDocument, bool), String> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let authenticated = env.auth.is_some();
    if env.format != FORMAT {
        return Err(format!("format {:?} is not {FORMAT:?}", env.format));
    }
    let mut doc: StateDocument =
        serde_json::from_value(env.state).map_err(|e| format!("invalid state document: {e}"))?;
    doc.secrets_open = doc.sealed.is_none();
    Ok((doc, authenticated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let mut doc = StateDocument::new("demo");
        doc.generation = 3;
        doc.machines.insert(
            "cp-1".into(),
            Machine {
                name: "cp-1".into(),
                provider_id: Some("abc".into()),
                addresses: vec!["10.0.0.2".into()],
                roles: vec!["control-plane".into()],
                ..Default::default()
            },
        );
        let i = doc.journal_start("etcd", "sha256:1", Some("cp-1"));
        doc.journal_finish(i, None);
        let bytes = encode(&doc);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.generation, 3);
        assert_eq!(back.machines, doc.machines);
        assert_eq!(back.journal[0].status, PhaseStatus::Done);

        // Flip one character inside the body: checksum mismatch.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let bad = text.replace("10.0.0.2", "10.0.0.3");
        match decode(bad.as_bytes()) {
            Err(DecodeError::Corrupted(m)) => assert!(m.contains("checksum mismatch"), "{m}"),
            other => panic!("expected corruption, got {other:?}"),
        }
        // Truncated.
        match decode(&bytes[..bytes.len() / 2]) {
            Err(DecodeError::Corrupted(m)) => assert!(m.contains("truncated"), "{m}"),
            other => panic!("expected truncation, got {other:?}"),
        }
    }

    #[test]
    fn secrets_debug_is_redacted() {
        let s = Secrets {
            admin_kubeconfig: Some("SUPERSECRET".into()),
            ..Default::default()
        };
        let text = format!("{s:?}");
        assert!(!text.contains("SUPERSECRET"));
        assert!(text.contains("adminKubeconfig"));
        let mut doc = StateDocument::new("x");
        doc.secrets = s;
        let json = String::from_utf8(encode(&doc)).unwrap();
        assert!(!json.contains("SUPERSECRET"), "{json}");
        assert!(!format!("{doc:?}").contains("SUPERSECRET"));
    }
}
