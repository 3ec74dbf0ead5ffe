//! The secrets that end up in rendered files. They are generated once, kept encrypted in
//! the state store, and replaced by `<redacted>` wherever files are shown.

use rand::Rng;
use std::fmt;

pub const REDACTED: &str = "<redacted>";
/// Shown in join configs until `kubeadm init` has made the cluster CA.
pub const CA_HASH_PENDING: &str = "sha256:<known after kubeadm init>";

#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    /// kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub bootstrap_token: String,
    /// Key that encrypts the control-plane certificates kubeadm uploads (64 hex chars).
    pub certificate_key: String,
    /// `sha256:<hex>` of the cluster CA's public key, once it exists. Not a secret.
    pub ca_cert_hash: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("bootstrap_token", &REDACTED)
            .field("certificate_key", &REDACTED)
            .field("ca_cert_hash", &self.ca_cert_hash)
            .finish()
    }
}

fn random_from(rng: &mut impl Rng, alphabet: &[u8], n: usize) -> String {
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

impl Secrets {
    /// Fresh random secrets (from the OS random source).
    pub fn generate() -> Secrets {
        let mut rng = rand::rng();
        let lower = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let hexdigits = b"0123456789abcdef";
        Secrets {
            bootstrap_token: format!(
                "{}.{}",
                random_from(&mut rng, lower, 6),
                random_from(&mut rng, lower, 16)
            ),
            certificate_key: random_from(&mut rng, hexdigits, 64),
            ca_cert_hash: None,
        }
    }

    pub fn ca_cert_hash_or_pending(&self) -> String {
        self.ca_cert_hash
            .clone()
            .unwrap_or_else(|| CA_HASH_PENDING.to_string())
    }

    /// `text` with every secret value replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in [&self.bootstrap_token, &self.certificate_key] {
            if !secret.is_empty() {
                out = out.replace(secret.as_str(), REDACTED);
            }
            // The token's id half is public, its secret half is not: redact the secret
            // half on its own too (it can appear alone, e.g. in logs of kubeadm).
            if let Some((_, secret_part)) = secret.split_once('.') {
                out = out.replace(secret_part, REDACTED);
            }
        }
        out
    }
}

impl crate::transport::remote::Redact for Secrets {
    fn redact(&self, text: &str) -> String {
        Secrets::redact(self, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_kubeadm_formats() {
        let s = Secrets::generate();
        let (id, secret) = s.bootstrap_token.split_once('.').unwrap();
        assert_eq!(id.len(), 6);
        assert_eq!(secret.len(), 16);
        assert!(s
            .bootstrap_token
            .chars()
            .all(|c| c == '.' || c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(s.certificate_key.len(), 64);
        assert_ne!(s, Secrets::generate(), "two generations differ");
    }

    #[test]
    fn redaction_removes_every_secret() {
        let s = Secrets::generate();
        let text = format!(
            "token: {}\nkey: {}\nalone: {}\n",
            s.bootstrap_token,
            s.certificate_key,
            s.bootstrap_token.split_once('.').unwrap().1
        );
        let r = s.redact(&text);
        assert!(!r.contains(&s.bootstrap_token));
        assert!(!r.contains(&s.certificate_key));
        assert!(!r.contains(s.bootstrap_token.split_once('.').unwrap().1));
        assert_eq!(r.matches(REDACTED).count(), 3);
        assert!(!format!("{s:?}").contains(&s.certificate_key));
    }
}
