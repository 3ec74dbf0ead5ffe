//! SSH host key pinning: trust on first use, abort on change.
//!
//! The pinned keys live in the state document (`BTreeMap<host, OpenSSH public key
//! line>`); this module only defines the trait the transport asks and an in-memory
//! implementation. A changed key is never accepted silently: only a host named in
//! `SshConfig::accept_new_host_keys` is re-pinned.

use russh::keys::{HashAlg, PublicKey};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where pinned host keys are kept. Keys are OpenSSH public key lines
/// (`ssh-ed25519 AAAA...`), hosts are the names the transport was asked to reach.
pub trait HostKeyStore: Send + Sync {
    /// The key pinned for `host`, if any.
    fn pinned(&self, host: &str) -> Option<String>;
    /// Pin `key` for `host` (first use, or an explicit re-pin).
    fn pin(&self, host: &str, key: &str);
}

/// Host keys held in memory (tests, and the state document's map while a run lasts).
#[derive(Debug, Default)]
pub struct MemoryHostKeyStore {
    keys: Mutex<BTreeMap<String, String>>,
}

impl MemoryHostKeyStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start from keys loaded from the state.
    pub fn from_map(keys: BTreeMap<String, String>) -> Self {
        MemoryHostKeyStore {
            keys: Mutex::new(keys),
        }
    }

    /// Drop a host's pin (its machine was re-created by the provider: a new key is
    /// expected and pinned on first use).
    pub fn forget(&self, host: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(host);
    }

    /// Everything pinned so far, to write back into the state.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl HostKeyStore for MemoryHostKeyStore {
    fn pinned(&self, host: &str) -> Option<String> {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
    }

    fn pin(&self, host: &str, key: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string(), key.to_string());
    }
}

/// `SHA256:...` fingerprint of an OpenSSH public key line, as `ssh-keygen -lf` prints
/// it; the line itself when it cannot be parsed.
pub fn fingerprint(openssh_line: &str) -> String {
    match PublicKey::from_openssh(openssh_line.trim()) {
        Ok(k) => k.fingerprint(HashAlg::Sha256).to_string(),
        Err(_) => format!("unparseable key {openssh_line:?}"),
    }
}

/// The OpenSSH line of a key, without comment.
pub fn openssh_line(key: &PublicKey) -> String {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh()
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| key.fingerprint(HashAlg::Sha256).to_string())
}

/// Whether two OpenSSH lines hold the same key (comments and whitespace ignored).
pub fn same_key(a: &str, b: &str) -> bool {
    match (
        PublicKey::from_openssh(a.trim()),
        PublicKey::from_openssh(b.trim()),
    ) {
        (Ok(a), Ok(b)) => a.key_data() == b.key_data(),
        _ => false,
    }
}

/// Outcome of checking an offered host key against the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// Matches the pinned key.
    Known,
    /// Nothing was pinned: pinned now (trust on first use).
    PinnedNew,
    /// Differed from the pinned key and was re-pinned on request.
    Repinned { previous: String },
    /// Differs from the pinned key: abort.
    Changed { pinned: String, offered: String },
}

/// Check `offered` for `host` and pin it when that is allowed.
pub fn check_and_pin(
    store: &dyn HostKeyStore,
    host: &str,
    offered: &PublicKey,
    accept_new: bool,
) -> HostKeyCheck {
    let line = openssh_line(offered);
    match store.pinned(host) {
        None => {
            store.pin(host, &line);
            HostKeyCheck::PinnedNew
        }
        Some(pinned) if same_key(&pinned, &line) => HostKeyCheck::Known,
        Some(pinned) if accept_new => {
            store.pin(host, &line);
            HostKeyCheck::Repinned { previous: pinned }
        }
        Some(pinned) => HostKeyCheck::Changed {
            pinned,
            offered: line,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::PrivateKey;

    fn key() -> PublicKey {
        let seed: [u8; 32] = rand::random();
        PrivateKey::from(Ed25519Keypair::from_seed(&seed))
            .public_key()
            .clone()
    }

    #[test]
    fn first_use_pins_then_known_then_change_is_refused() {
        let store = MemoryHostKeyStore::new();
        let a = key();
        let b = key();
        assert_eq!(
            check_and_pin(&store, "h1", &a, false),
            HostKeyCheck::PinnedNew
        );
        assert_eq!(check_and_pin(&store, "h1", &a, false), HostKeyCheck::Known);
        match check_and_pin(&store, "h1", &b, false) {
            HostKeyCheck::Changed { pinned, offered } => {
                assert!(same_key(&pinned, &openssh_line(&a)));
                assert!(same_key(&offered, &openssh_line(&b)));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The refused key was not pinned.
        assert!(same_key(&store.pinned("h1").unwrap(), &openssh_line(&a)));
        assert!(matches!(
            check_and_pin(&store, "h1", &b, true),
            HostKeyCheck::Repinned { .. }
        ));
        assert_eq!(check_and_pin(&store, "h1", &b, false), HostKeyCheck::Known);
        assert_eq!(store.snapshot().len(), 1);
    }

    #[test]
    fn fingerprint_matches_ssh_keygen_format() {
        let a = key();
        let fp = fingerprint(&openssh_line(&a));
        assert!(fp.starts_with("SHA256:"), "{fp}");
        assert_eq!(fp.len(), "SHA256:".len() + 43);
        assert_ne!(fp, fingerprint(&openssh_line(&key())));
    }
}
