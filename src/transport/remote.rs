//! Running commands on a host and what a failure reports: host, command (secrets
//! redacted), exit code, the end of stderr. Used by phases and by `kube`.

use super::{Cancelled, Transport, TransportError};
use std::fmt;

/// Replaces secret values in text before it is shown or logged.
pub trait Redact: Sync {
    fn redact(&self, text: &str) -> String;
}

/// Nothing to redact.
pub struct NoSecrets;
impl Redact for NoSecrets {
    fn redact(&self, text: &str) -> String {
        text.to_string()
    }
}

/// What a failed host reports: enough to act on without reading logs.
#[derive(Debug, Clone)]
pub struct CommandFailure {
    pub host: String,
    pub command: String,
    pub exit_code: u32,
    /// The last lines of stderr (secrets redacted).
    pub stderr_tail: String,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "on {}: `{}` exited with {}",
            self.host, self.command, self.exit_code
        )?;
        if !self.stderr_tail.is_empty() {
            write!(f, "; stderr ends with:\n{}", indent(&self.stderr_tail))?;
        }
        Ok(())
    }
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Command(CommandFailure),
    #[error("on {host}: {source}")]
    Transport {
        host: String,
        #[source]
        source: TransportError,
    },
    #[error("on {host}: {message}")]
    Other { host: String, message: String },
    #[error("cancelled")]
    Cancelled,
}

impl From<Cancelled> for HostError {
    fn from(_: Cancelled) -> Self {
        HostError::Cancelled
    }
}

impl HostError {
    /// The host it happened on.
    pub fn host(&self) -> Option<&str> {
        match self {
            HostError::Command(c) => Some(&c.host),
            HostError::Transport { host, .. } | HostError::Other { host, .. } => Some(host),
            HostError::Cancelled => None,
        }
    }

    pub fn is_transport(&self) -> bool {
        matches!(self, HostError::Transport { .. })
    }
}

/// Keep the last `n` lines of `text`, secrets redacted.
pub fn tail(text: &str, n: usize, secrets: &dyn Redact) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(n);
    secrets.redact(&lines[start..].join("\n"))
}

/// Transport errors that name the command (a timeout, a lost connection) with the
/// secrets it may carry redacted.
fn redacted(e: TransportError, secrets: &dyn Redact) -> TransportError {
    match e {
        TransportError::Timeout {
            host,
            command,
            after,
        } => TransportError::Timeout {
            host,
            command: secrets.redact(&command),
            after,
        },
        TransportError::ConnectionLost {
            host,
            command,
            source,
        } => TransportError::ConnectionLost {
            host,
            command: secrets.redact(&command),
            source,
        },
        other => other,
    }
}

/// Run a shell command on a host; non-zero exit is a `CommandFailure`. The command is
/// bounded in time by the transport (`spec.ssh.commandTimeoutSeconds`, or
/// `longCommandTimeoutSeconds` for kubeadm and the like): a hung command fails with
/// the host, the command (redacted) and the limit.
pub async fn run(
    t: &dyn Transport,
    host: &str,
    command: &str,
    secrets: &dyn Redact,
    verbose: bool,
) -> Result<String, HostError> {
    let out = t
        .exec(command)
        .await
        .map_err(|source| HostError::Transport {
            host: host.to_string(),
            source: redacted(source, secrets),
        })?;
    if verbose {
        for line in out.stdout.lines().chain(out.stderr.lines()) {
            eprintln!("  [{host}] {}", secrets.redact(line));
        }
    }
    tracing::debug!(host, command = %secrets.redact(command), exit = out.exit_code, "ran");
    if !out.success() {
        return Err(HostError::Command(CommandFailure {
            host: host.to_string(),
            command: secrets.redact(command),
            exit_code: out.exit_code,
            stderr_tail: tail(
                if out.stderr.trim().is_empty() {
                    &out.stdout
                } else {
                    &out.stderr
                },
                8,
                secrets,
            ),
        }));
    }
    Ok(out.stdout)
}

/// Read a (small) remote file.
pub async fn download(t: &dyn Transport, host: &str, path: &str) -> Result<Vec<u8>, HostError> {
    t.download(path)
        .await
        .map_err(|source| HostError::Transport {
            host: host.to_string(),
            source,
        })
}

/// Read several (small) remote files in one round trip; one missing or unreadable
/// fails the whole read, naming it. The contents never reach a log.
pub async fn download_all(
    t: &dyn Transport,
    host: &str,
    paths: &[&str],
) -> Result<Vec<Vec<u8>>, HostError> {
    use base64::Engine;
    let quoted: Vec<String> = paths.iter().map(|p| super::shell::quote(p)).collect();
    let command = format!(
        "for p in {}; do base64 -w0 -- \"$p\" || exit 3; echo; done",
        quoted.join(" ")
    );
    let out = t
        .exec(&command)
        .await
        .map_err(|source| HostError::Transport {
            host: host.to_string(),
            source,
        })?;
    let failed = |stderr: String| {
        HostError::Command(CommandFailure {
            host: host.to_string(),
            command: format!("read {}", paths.join(" ")),
            exit_code: out.exit_code,
            stderr_tail: stderr,
        })
    };
    if !out.success() {
        return Err(failed(out.stderr.trim().to_string()));
    }
    let files: Vec<Vec<u8>> = out
        .stdout
        .lines()
        .map(|l| base64::engine::general_purpose::STANDARD.decode(l.trim()))
        .collect::<Result<_, _>>()
        .map_err(|e| failed(format!("unreadable answer: {e}")))?;
    if files.len() != paths.len() {
        return Err(failed(format!(
            "{} of {} files answered",
            files.len(),
            paths.len()
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod timeout_tests {
    use super::*;
    use crate::render::Secrets;
    use crate::transport::{ExecOutput, UploadOutcome, UploadSource, UploadTarget};
    use std::time::Duration;

    /// A host whose every command hangs past its limit.
    struct Hung;

    #[async_trait::async_trait]
    impl Transport for Hung {
        fn host(&self) -> &str {
            "10.0.0.2"
        }
        async fn exec(&self, command: &str) -> Result<ExecOutput, TransportError> {
            Err(TransportError::Timeout {
                host: "10.0.0.2".into(),
                command: command.into(),
                after: Duration::from_secs(600),
            })
        }
        async fn upload(
            &self,
            _: UploadSource,
            _: &UploadTarget,
        ) -> Result<UploadOutcome, TransportError> {
            unreachable!()
        }
        async fn download(&self, _: &str) -> Result<Vec<u8>, TransportError> {
            unreachable!()
        }
    }

    #[tokio::test]
    async fn a_timed_out_command_is_named_with_its_secrets_redacted() {
        let secrets = Secrets::generate();
        let cmd = format!(
            "kubeadm join --token {} 10.0.0.1:6443",
            secrets.bootstrap_token
        );
        let err = run(&Hung, "cp-2", &cmd, &secrets, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains(&secrets.bootstrap_token), "{err}");
        assert!(err.starts_with("on cp-2: `kubeadm join --token "), "{err}");
        assert!(
            err.contains(
                " 10.0.0.1:6443` on 10.0.0.2 did not finish within 600.0s and was stopped"
            ),
            "{err}"
        );
    }
}
