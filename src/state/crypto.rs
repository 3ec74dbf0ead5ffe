//! Encryption at rest of the state's secrets with age: an X25519 identity (key file or
//! environment variable) or a passphrase (scrypt, fixed work factor).

use super::{EncryptionSpec, StateError};
use age::secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

/// Default environment variables, used when the cluster file names none.
pub const ENV_KEY_FILE: &str = "KUBEFORGE_STATE_KEY_FILE";
pub const ENV_KEY: &str = "KUBEFORGE_STATE_KEY";
pub const ENV_PASSPHRASE: &str = "KUBEFORGE_STATE_PASSPHRASE";

/// scrypt work factor (N = 2^16: ~64 MiB and a fraction of a second per save/load).
pub const SCRYPT_LOG_N: u8 = 16;

pub const SCHEME_X25519: &str = "age-x25519";
pub const SCHEME_SCRYPT: &str = "age-scrypt";

/// The key material the store encrypts secrets with.
pub enum Keyring {
    X25519 {
        identity: age::x25519::Identity,
        source: String,
    },
    Passphrase {
        passphrase: SecretString,
        source: String,
        /// scrypt work factor for new encryptions (log2 N).
        log_n: u8,
    },
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keyring::X25519 { identity, source } => {
                write!(f, "Keyring::X25519({} from {source})", identity.to_public())
            }
            Keyring::Passphrase { source, .. } => write!(f, "Keyring::Passphrase(from {source})"),
        }
    }
}

/// How the secrets blob is stored inside the state document: the names of the secrets
/// in clear (so `state show` can list them without a key), the rest age-encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedSecrets {
    /// `age-x25519` or `age-scrypt`.
    pub scheme: String,
    /// For `age-x25519`: the public key (recipient) the blob was encrypted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Which secrets the blob holds (names only).
    #[serde(default)]
    pub names: Vec<String>,
    /// ASCII-armored age file.
    pub ciphertext: String,
}

fn parse_identity(text: &str, source: &str) -> Result<age::x25519::Identity, StateError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| StateError::Key(format!("{source} holds no age key")))?;
    age::x25519::Identity::from_str(line).map_err(|e| {
        StateError::Key(format!(
            "{source} is not an age X25519 secret key (AGE-SECRET-KEY-1...): {e}"
        ))
    })
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Keyring {
    /// Find the key: explicit settings from the cluster file first, then the default
    /// environment variables. `Ok(None)` when nothing is configured.
    pub fn resolve(spec: &EncryptionSpec, base_dir: &Path) -> Result<Option<Keyring>, StateError> {
        if let Some(file) = &spec.key_file {
            let home = std::env::var_os("HOME");
            let path = match (file.strip_prefix("~"), home) {
                (Ok(rest), Some(home)) => Path::new(&home).join(rest),
                _ if file.is_absolute() => file.clone(),
                _ => base_dir.join(file),
            };
            return Self::from_key_file(&path, "spec.state.encryption.keyFile").map(Some);
        }
        if let Some(var) = &spec.key_env {
            let value = env_var(var).ok_or_else(|| {
                StateError::Key(format!(
                    "spec.state.encryption.keyEnv names {var}, which is not set"
                ))
            })?;
            let source = format!("${var}");
            let identity = parse_identity(&value, &source)?;
            return Ok(Some(Keyring::X25519 { identity, source }));
        }
        if let Some(var) = &spec.passphrase_env {
            let value = env_var(var).ok_or_else(|| {
                StateError::Key(format!(
                    "spec.state.encryption.passphraseEnv names {var}, which is not set"
                ))
            })?;
            return Ok(Some(Keyring::Passphrase {
                passphrase: SecretString::from(value),
                source: format!("${var}"),
                log_n: SCRYPT_LOG_N,
            }));
        }
        if let Some(path) = env_var(ENV_KEY_FILE) {
            return Self::from_key_file(Path::new(&path), &format!("${ENV_KEY_FILE}")).map(Some);
        }
        if let Some(value) = env_var(ENV_KEY) {
            let source = format!("${ENV_KEY}");
            let identity = parse_identity(&value, &source)?;
            return Ok(Some(Keyring::X25519 { identity, source }));
        }
        if let Some(value) = env_var(ENV_PASSPHRASE) {
            return Ok(Some(Keyring::Passphrase {
                passphrase: SecretString::from(value),
                source: format!("${ENV_PASSPHRASE}"),
                log_n: SCRYPT_LOG_N,
            }));
        }
        Ok(None)
    }

    pub fn from_key_file(path: &Path, setting: &str) -> Result<Keyring, StateError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            StateError::Key(format!(
                "cannot read the state key file {} ({setting}): {e}",
                path.display()
            ))
        })?;
        let source = format!("{} ({setting})", path.display());
        let identity = parse_identity(&text, &source)?;
        Ok(Keyring::X25519 { identity, source })
    }

    /// A fresh X25519 key and its text (`AGE-SECRET-KEY-1...`), for tests and `init`.
    pub fn generate() -> (Keyring, String) {
        let identity = age::x25519::Identity::generate();
        let text = identity.to_string().expose_secret().to_string();
        (
            Keyring::X25519 {
                identity,
                source: "a generated key".into(),
            },
            text,
        )
    }

    pub fn from_passphrase(passphrase: &str, source: &str) -> Keyring {
        Keyring::Passphrase {
            passphrase: SecretString::from(passphrase.to_string()),
            source: source.to_string(),
            log_n: SCRYPT_LOG_N,
        }
    }

    /// Use another scrypt work factor (log2 N, 1..=22) for new encryptions; reading
    /// takes the factor from the file. Only for tests: unoptimized debug builds run
    /// scrypt ~50 times slower than release builds.
    pub fn with_work_factor(mut self, new_log_n: u8) -> Keyring {
        if let Keyring::Passphrase { log_n, .. } = &mut self {
            *log_n = new_log_n.clamp(1, 22);
        }
        self
    }

    pub fn source(&self) -> &str {
        match self {
            Keyring::X25519 { source, .. } | Keyring::Passphrase { source, .. } => source,
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            Keyring::X25519 { .. } => SCHEME_X25519,
            Keyring::Passphrase { .. } => SCHEME_SCRYPT,
        }
    }

    /// The public key, for X25519.
    pub fn recipient(&self) -> Option<String> {
        match self {
            Keyring::X25519 { identity, .. } => Some(identity.to_public().to_string()),
            Keyring::Passphrase { .. } => None,
        }
    }

    pub fn seal(&self, names: Vec<String>, plaintext: &[u8]) -> Result<SealedSecrets, StateError> {
        let encryptor = match self {
            Keyring::X25519 { identity, .. } => {
                let recipient = identity.to_public();
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(|e| StateError::Key(format!("cannot encrypt the secrets: {e}")))?
            }
            Keyring::Passphrase {
                passphrase, log_n, ..
            } => {
                let mut r = age::scrypt::Recipient::new(passphrase.clone());
                r.set_work_factor(*log_n);
                age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                    .map_err(|e| StateError::Key(format!("cannot encrypt the secrets: {e}")))?
            }
        };
        let io = |e: std::io::Error| StateError::Key(format!("cannot encrypt the secrets: {e}"));
        let mut out = Vec::new();
        let armored =
            age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
                .map_err(io)?;
        let mut w = encryptor.wrap_output(armored).map_err(io)?;
        w.write_all(plaintext).map_err(io)?;
        w.finish().and_then(|a| a.finish()).map_err(io)?;
        Ok(SealedSecrets {
            scheme: self.scheme().to_string(),
            recipient: self.recipient(),
            names,
            ciphertext: String::from_utf8(out).expect("armored age output is ASCII"),
        })
    }

    fn encryptor(&self) -> Result<age::Encryptor, StateError> {
        let r: Box<dyn age::Recipient> = match self {
            Keyring::X25519 { identity, .. } => Box::new(identity.to_public()),
            Keyring::Passphrase {
                passphrase, log_n, ..
            } => {
                let mut r = age::scrypt::Recipient::new(passphrase.clone());
                r.set_work_factor(*log_n);
                Box::new(r)
            }
        };
        age::Encryptor::with_recipients(std::iter::once(r.as_ref()))
            .map_err(|e| StateError::Key(format!("cannot encrypt: {e}")))
    }

    /// Encrypt a blob (binary age format), e.g. an etcd snapshot.
    pub fn encrypt_blob(&self, data: &[u8]) -> Result<Vec<u8>, StateError> {
        let io = |e: std::io::Error| StateError::Key(format!("cannot encrypt: {e}"));
        let mut out = Vec::with_capacity(data.len() + 256);
        let mut w = self.encryptor()?.wrap_output(&mut out).map_err(io)?;
        w.write_all(data).map_err(io)?;
        w.finish().map_err(io)?;
        Ok(out)
    }

    /// Decrypt a blob from [`Self::encrypt_blob`]. `Err(Ok(..))`: wrong key;
    /// `Err(Err(detail))`: the blob is damaged.
    pub fn decrypt_blob(&self, data: &[u8]) -> Result<Vec<u8>, Result<StateError, String>> {
        let decryptor = age::Decryptor::new_buffered(data).map_err(|e| Err(e.to_string()))?;
        let scrypt_id;
        let id: &dyn age::Identity = match self {
            Keyring::X25519 { identity, .. } => identity,
            Keyring::Passphrase { passphrase, .. } => {
                let mut i = age::scrypt::Identity::new(passphrase.clone());
                i.set_max_work_factor(22);
                scrypt_id = i;
                &scrypt_id
            }
        };
        let mut r = decryptor
            .decrypt(std::iter::once(id))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys
                | age::DecryptError::DecryptionFailed
                | age::DecryptError::KeyDecryptionFailed => Ok(StateError::WrongKey(format!(
                    "the key from {} does not decrypt it",
                    self.source()
                ))),
                other => Err(other.to_string()),
            })?;
        let mut plain = Vec::new();
        r.read_to_end(&mut plain).map_err(|e| Err(e.to_string()))?;
        Ok(plain)
    }

    pub fn open(&self, sealed: &SealedSecrets) -> Result<Vec<u8>, StateError> {
        if sealed.scheme != self.scheme() {
            let have = match self {
                Keyring::X25519 { .. } => "an X25519 key",
                Keyring::Passphrase { .. } => "a passphrase",
            };
            let need = match sealed.scheme.as_str() {
                SCHEME_X25519 => "an age X25519 key",
                SCHEME_SCRYPT => "a passphrase",
                other => other,
            };
            return Err(StateError::WrongKey(format!(
                "the secrets are encrypted with {need}, but {have} was given ({})",
                self.source()
            )));
        }
        if let (Some(want), Some(have)) = (&sealed.recipient, self.recipient()) {
            if *want != have {
                return Err(StateError::WrongKey(format!(
                    "the secrets are encrypted for {want}, but the key from {} is {have}",
                    self.source()
                )));
            }
        }
        let reader = age::armor::ArmoredReader::new(sealed.ciphertext.as_bytes());
        let decryptor = age::Decryptor::new(reader).map_err(|e| {
            StateError::WrongKey(format!("the encrypted secrets are unreadable: {e}"))
        })?;
        let wrong = |e: age::DecryptError| match e {
            age::DecryptError::NoMatchingKeys
            | age::DecryptError::DecryptionFailed
            | age::DecryptError::KeyDecryptionFailed => StateError::WrongKey(format!(
                "the key from {} does not decrypt the state's secrets",
                self.source()
            )),
            other => StateError::WrongKey(format!("cannot decrypt the state's secrets: {other}")),
        };
        let mut plain = Vec::new();
        match self {
            Keyring::X25519 { identity, .. } => {
                let mut r = decryptor
                    .decrypt(std::iter::once(identity as &dyn age::Identity))
                    .map_err(wrong)?;
                r.read_to_end(&mut plain).map_err(|e| {
                    StateError::WrongKey(format!("cannot decrypt the state's secrets: {e}"))
                })?;
            }
            Keyring::Passphrase { passphrase, .. } => {
                let mut id = age::scrypt::Identity::new(passphrase.clone());
                id.set_max_work_factor(22);
                let mut r = decryptor
                    .decrypt(std::iter::once(&id as &dyn age::Identity))
                    .map_err(wrong)?;
                r.read_to_end(&mut plain).map_err(|e| {
                    StateError::WrongKey(format!("cannot decrypt the state's secrets: {e}"))
                })?;
            }
        }
        Ok(plain)
    }
}

/// How a state document is authenticated: an HMAC-SHA256 over the canonical document,
/// with a key only the holder of the state key can derive (HKDF-SHA256 over the age
/// X25519 secret key, or scrypt over the passphrase). The age recipient is public, so
/// encryption alone proves nothing about who wrote a document; this tag does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateAuth {
    /// `hmac-sha256`.
    pub alg: String,
    /// `hkdf-sha256` (X25519 key) or `scrypt` (passphrase).
    pub kdf: String,
    /// scrypt work factor (log2 N) the key was derived with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_n: Option<u8>,
    /// Hex HMAC-SHA256 of `kubeforge.dev/state/v1\0` + the compact serialisation of `state`.
    pub mac: String,
}

pub const MAC_ALG: &str = "hmac-sha256";
pub const KDF_HKDF: &str = "hkdf-sha256";
pub const KDF_SCRYPT: &str = "scrypt";
const MAC_DOMAIN: &[u8] = b"kubeforge.dev/state/v1\0";

/// The bytes a state MAC covers.
pub(crate) fn mac_message(canonical_state: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(MAC_DOMAIN.len() + canonical_state.len());
    m.extend_from_slice(MAC_DOMAIN);
    m.extend_from_slice(canonical_state);
    m
}

pub(crate) fn hmac_hex(key: &[u8; 32], message: &[u8]) -> String {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(message);
    hex::encode(m.finalize().into_bytes())
}

/// Constant-time check of a hex MAC.
pub(crate) fn hmac_verify(key: &[u8; 32], message: &[u8], mac_hex: &str) -> bool {
    use hmac::Mac;
    let Ok(tag) = hex::decode(mac_hex) else {
        return false;
    };
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(message);
    m.verify_slice(&tag).is_ok()
}

/// Encrypt a blob to one X25519 public key (binary age format): what a node that
/// ships snapshots does with the state's recipient, without its secret key.
pub fn encrypt_to(recipient: &age::x25519::Recipient, data: &[u8]) -> Result<Vec<u8>, StateError> {
    let io = |e: std::io::Error| StateError::Key(format!("cannot encrypt: {e}"));
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|e| StateError::Key(format!("cannot encrypt: {e}")))?;
    let mut out = Vec::with_capacity(data.len() + 256);
    let mut w = encryptor.wrap_output(&mut out).map_err(io)?;
    w.write_all(data).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(out)
}

impl Keyring {
    /// The key-derivation this keyring authenticates with.
    pub fn mac_kdf(&self) -> &'static str {
        match self {
            Keyring::X25519 { .. } => KDF_HKDF,
            Keyring::Passphrase { .. } => KDF_SCRYPT,
        }
    }

    /// The scrypt work factor new MACs are derived with (passphrase only).
    pub fn mac_log_n(&self) -> Option<u8> {
        match self {
            Keyring::X25519 { .. } => None,
            Keyring::Passphrase { log_n, .. } => Some(*log_n),
        }
    }

    /// Derive the 32-byte state MAC key. `salt` ties it to one state lineage; `log_n`
    /// (passphrase only) is the scrypt work factor.
    pub(crate) fn mac_key(&self, salt: &str, log_n: Option<u8>) -> Result<[u8; 32], StateError> {
        let salt = format!("kubeforge.dev/state/mac/v1:{salt}");
        let mut out = [0u8; 32];
        match self {
            Keyring::X25519 { identity, .. } => {
                let secret = identity.to_string();
                let hk = hkdf::Hkdf::<sha2::Sha256>::new(
                    Some(salt.as_bytes()),
                    secret.expose_secret().as_bytes(),
                );
                hk.expand(b"state document mac", &mut out).map_err(|e| {
                    StateError::Key(format!("cannot derive the state MAC key: {e}"))
                })?;
            }
            Keyring::Passphrase {
                passphrase,
                log_n: own,
                ..
            } => {
                let n = log_n.unwrap_or(*own).clamp(1, 22);
                let params = scrypt::Params::new(n, 8, 1, 32).map_err(|e| {
                    StateError::Key(format!("cannot derive the state MAC key: {e}"))
                })?;
                scrypt::scrypt(
                    passphrase.expose_secret().as_bytes(),
                    salt.as_bytes(),
                    &params,
                    &mut out,
                )
                .map_err(|e| StateError::Key(format!("cannot derive the state MAC key: {e}")))?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_from_spec() {
        let dir = std::env::temp_dir().join(format!("kf-crypto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k, text) = Keyring::generate();
        std::fs::write(dir.join("state.key"), format!("# comment\n{text}\n")).unwrap();
        let spec = EncryptionSpec {
            key_file: Some("state.key".into()),
            ..Default::default()
        };
        let found = Keyring::resolve(&spec, &dir).unwrap().unwrap();
        assert_eq!(found.recipient(), k.recipient());
        assert!(found
            .source()
            .ends_with("state.key (spec.state.encryption.keyFile)"));

        // Variables named in the spec must be set.
        let spec = EncryptionSpec {
            key_env: Some("KF_TEST_UNSET_KEY_VAR_93".into()),
            ..Default::default()
        };
        let err = Keyring::resolve(&spec, &dir).unwrap_err().to_string();
        assert!(
            err.contains(
                "spec.state.encryption.keyEnv names KF_TEST_UNSET_KEY_VAR_93, which is not set"
            ),
            "{err}"
        );
        std::env::set_var("KF_TEST_PASS_VAR_93", "pw");
        let spec = EncryptionSpec {
            passphrase_env: Some("KF_TEST_PASS_VAR_93".into()),
            ..Default::default()
        };
        let p = Keyring::resolve(&spec, &dir).unwrap().unwrap();
        assert_eq!(p.source(), "$KF_TEST_PASS_VAR_93");
        assert!(p.recipient().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn seal_open_and_wrong_keys() {
        let (a, _) = Keyring::generate();
        let (b, _) = Keyring::generate();
        let sealed = a
            .seal(vec!["adminKubeconfig".into()], b"top secret")
            .unwrap();
        assert!(!sealed.ciphertext.contains("top secret"));
        assert_eq!(a.open(&sealed).unwrap(), b"top secret");
        assert!(matches!(b.open(&sealed), Err(StateError::WrongKey(_))));
        // A tampered recipient field cannot make the wrong key work either.
        let mut forged = sealed.clone();
        forged.recipient = b.recipient();
        let err = b.open(&forged).unwrap_err().to_string();
        assert!(err.contains("does not decrypt"), "{err}");
        // Passphrase, with a small work factor (the default is SCRYPT_LOG_N).
        let p = Keyring::from_passphrase("pw", "test").with_work_factor(8);
        let sealed = p.seal(vec![], b"x").unwrap();
        assert_eq!(sealed.scheme, SCHEME_SCRYPT);
        assert_eq!(p.open(&sealed).unwrap(), b"x");
        let wrong = Keyring::from_passphrase("nope", "test");
        assert!(wrong
            .open(&sealed)
            .unwrap_err()
            .to_string()
            .contains("does not decrypt"));
    }
}
