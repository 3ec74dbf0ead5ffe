//! AWS credentials the way the AWS CLI and Terraform's S3 backend find them, for every
//! AWS-speaking part of kubeforge (the EC2 provider, S3 state stores, Terraform states
//! in S3): the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), else a named profile (the cluster file's, `$AWS_PROFILE`, or
//! `default`) in the shared credentials file (`$AWS_SHARED_CREDENTIALS_FILE` or
//! `~/.aws/credentials`) and then the config file (`$AWS_CONFIG_FILE` or
//! `~/.aws/config`, `[profile NAME]` sections), which also gives the profile's region.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Keys found; `Debug` shows neither the secret nor the token, and only the start of the
/// key id.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they came from (`environment`, `profile dev in /root/.aws/credentials`).
    pub source: String,
}

impl std::fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.access_key_id.chars().take(4).collect();
        f.debug_struct("AwsKeys")
            .field("access_key_id", &format!("{shown}…"))
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("source", &self.source)
            .finish()
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

fn home_file(var: &str, rel: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(rel)))
}

/// The shared credentials file looked at (`$AWS_SHARED_CREDENTIALS_FILE` or
/// `~/.aws/credentials`).
pub fn credentials_file() -> Option<PathBuf> {
    home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")
}

/// The profile asked for: the cluster file's, else `$AWS_PROFILE`; `None` = `default`
/// without anyone asking.
fn profile_asked(profile: Option<&str>) -> Option<String> {
    profile.map(str::to_string).or_else(|| env("AWS_PROFILE"))
}

/// Find keys. `Ok(None)`: nothing configured and no profile asked for (the caller may
/// leave it to its SDK's other sources, or refuse). A profile asked for by name that is
/// not found, or half a key pair, is an error naming where it looked.
pub fn load(profile: Option<&str>) -> Result<Option<AwsKeys>, String> {
    if let Some(id) = env("AWS_ACCESS_KEY_ID") {
        let secret = env("AWS_SECRET_ACCESS_KEY")
            .ok_or("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")?;
        // A profile named in the cluster file wins over the environment, as in the
        // AWS CLI's `--profile`.
        if profile.is_none() {
            return Ok(Some(AwsKeys {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env("AWS_SESSION_TOKEN"),
                source: "environment".into(),
            }));
        }
    }
    let asked = profile_asked(profile);
    let name = asked.clone().unwrap_or_else(|| "default".into());
    let files = [
        credentials_file(),
        home_file("AWS_CONFIG_FILE", ".aws/config"),
    ];
    for file in files.iter().flatten() {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let s = ini_section(&text, &name);
        match (s.get("aws_access_key_id"), s.get("aws_secret_access_key")) {
            (Some(id), Some(secret)) => {
                return Ok(Some(AwsKeys {
                    access_key_id: id.clone(),
                    secret_access_key: secret.clone(),
                    session_token: s.get("aws_session_token").cloned(),
                    source: format!("profile {name} in {}", file.display()),
                }))
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(format!(
                    "profile {name} in {} has only half a key pair (aws_access_key_id and aws_secret_access_key)",
                    file.display()
                ))
            }
            (None, None) => {}
        }
    }
    match asked {
        Some(name) => Err(format!(
            "profile `{name}` has no keys in {} (aws_access_key_id, aws_secret_access_key)",
            files
                .iter()
                .flatten()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )),
        None => Ok(None),
    }
}

/// The region of the profile in the config file (`region = ...`), if any.
pub fn profile_region(profile: Option<&str>) -> Option<String> {
    let name = profile_asked(profile).unwrap_or_else(|| "default".into());
    let file = home_file("AWS_CONFIG_FILE", ".aws/config")?;
    let text = std::fs::read_to_string(file).ok()?;
    ini_section(&text, &name).get("region").cloned()
}

/// The `key = value` pairs of `[name]` (or `[profile name]`) in an INI file.
pub fn ini_section(text: &str, name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.starts_with(';') || l.is_empty() {
            continue;
        }
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let h = h.trim();
            inside = h == name || h.strip_prefix("profile ").map(str::trim) == Some(name);
            continue;
        }
        if inside {
            if let Some((k, v)) = l.split_once('=') {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_from_ini() {
        let ini = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n[profile dev]\naws_access_key_id=C\naws_secret_access_key=D\n";
        assert_eq!(
            ini_section(ini, "default")
                .get("aws_access_key_id")
                .map(String::as_str),
            Some("A")
        );
        assert_eq!(
            ini_section(ini, "dev")
                .get("aws_secret_access_key")
                .map(String::as_str),
            Some("D")
        );
    }

    #[test]
    fn keys_never_print() {
        let k = AwsKeys {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "topsecret".into(),
            session_token: Some("tok".into()),
            source: "environment".into(),
        };
        let d = format!("{k:?}");
        assert!(
            !d.contains("topsecret") && !d.contains("\"tok\"") && !d.contains("AKIAEXAMPLE"),
            "{d}"
        );
    }
}
