//! Remote execution and file transfer over SSH (russh), see `docs/transport.md`.
//!
//! - [`ssh::SshPool`] keeps one connection per host for a whole run and opens many
//!   channels on it in parallel; [`ssh::SshSession`] implements [`Transport`].
//! - Host keys are pinned through a [`HostKeyStore`] (trust on first use, a changed key
//!   aborts with both fingerprints).
//! - [`fanout::fan_out`] runs a task on many hosts with bounded concurrency, progress
//!   bars and Ctrl-C cancellation.

pub mod fanout;
pub mod hostkeys;
pub mod local;
pub mod mux;
pub mod remote;
pub mod shell;
pub mod ssh;

use std::path::PathBuf;
use std::time::Duration;

pub use fanout::{fan_out, fan_out_until, FanOutOptions, HostResult, ProgressMode};
pub use hostkeys::{fingerprint, HostKeyStore, MemoryHostKeyStore};
pub use ssh::{
    is_long_command, BastionConfig, HostOverride, RetryPolicy, SshAuth, SshConfig, SshPool,
    SshSession, TunnelStream, DEFAULT_COMMAND_TIMEOUT, DEFAULT_LONG_COMMAND_TIMEOUT,
};

/// What a command returned. A non-zero exit is a value, not an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; 128 + signal number style is not applied: see `signal`.
    pub exit_code: u32,
    /// Set when the command was killed by a signal (then `exit_code` is 255).
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0 && self.signal.is_none()
    }
}

/// What to upload: rendered content or a local file (streamed, never read whole).
#[derive(Debug, Clone)]
pub enum UploadSource {
    Bytes(bytes::Bytes),
    File(PathBuf),
}

impl From<Vec<u8>> for UploadSource {
    fn from(v: Vec<u8>) -> Self {
        UploadSource::Bytes(v.into())
    }
}

impl From<String> for UploadSource {
    fn from(s: String) -> Self {
        UploadSource::Bytes(s.into_bytes().into())
    }
}

impl From<&str> for UploadSource {
    fn from(s: &str) -> Self {
        UploadSource::Bytes(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// Where and how an upload lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    /// Absolute remote path; parent directories are created.
    pub path: String,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
    /// `user:group` (or `user`); `None` leaves the owner of the connecting/sudo user.
    pub owner: Option<String>,
}

impl UploadTarget {
    pub fn new(path: impl Into<String>, mode: u32) -> Self {
        UploadTarget {
            path: path.into(),
            mode,
            owner: None,
        }
    }

    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    /// Whether content was sent (false: the remote sha256 already matched).
    pub sent: bool,
    /// Whether mode or owner had to be corrected on an unchanged file.
    pub metadata_fixed: bool,
    /// Bytes sent (0 when skipped).
    pub bytes: u64,
    /// sha256 (hex) of the content.
    pub sha256: String,
}

/// Run commands and move files on one host. Implemented by [`SshSession`]; phases take
/// `&dyn Transport` so tests can use fakes.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// The host this transport talks to (as given to the pool).
    fn host(&self) -> &str;
    /// Run `command` with root privileges (via `sudo -n` when the SSH user is not root).
    async fn exec(&self, command: &str) -> Result<ExecOutput, TransportError>;
    /// Write `source` to `target` atomically (temp file + rename) with root privileges,
    /// unless the remote file already has the same sha256.
    async fn upload(
        &self,
        source: UploadSource,
        target: &UploadTarget,
    ) -> Result<UploadOutcome, TransportError>;
    /// Read a remote file (small files: it is returned in memory).
    async fn download(&self, path: &str) -> Result<Vec<u8>, TransportError>;
    /// Several uploads, in order. The SSH transport asks the host about all of them in
    /// one round trip and then sends only what differs; this default uploads one by one.
    async fn upload_all(
        &self,
        items: Vec<(UploadSource, UploadTarget)>,
    ) -> Result<Vec<UploadOutcome>, TransportError> {
        let mut out = Vec::new();
        for (source, target) in items {
            out.push(self.upload(source, &target).await?);
        }
        Ok(out)
    }
    /// Whether each of these side-effect-free checks exits 0 (the SSH transport runs
    /// them in one round trip, each in its own subshell); this default runs one by one.
    async fn checks(&self, commands: &[String]) -> Result<Vec<bool>, TransportError> {
        let mut out = Vec::new();
        for c in commands {
            out.push(self.exec(c).await?.success());
        }
        Ok(out)
    }
}

/// Task cancelled by the user (Ctrl-C) before it finished on this host.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach {host}:{port} ({attempts} attempt(s) in {elapsed:.1?})")]
    Connect {
        host: String,
        port: u16,
        attempts: u32,
        elapsed: Duration,
        #[source]
        source: ConnectFailure,
    },
    #[error("authentication as {user} on {host} was rejected ({attempts} attempt(s) in {elapsed:.1?}); the key is not authorized there")]
    Auth {
        host: String,
        user: String,
        attempts: u32,
        elapsed: Duration,
    },
    #[error("the SSH host key of {host} changed: pinned {pinned_fingerprint}, offered {offered_fingerprint}. If the machine was rebuilt on purpose, re-pin it with --accept-new-host-key {host}")]
    HostKeyChanged {
        host: String,
        pinned_fingerprint: String,
        offered_fingerprint: String,
    },
    #[error("{host} offered an SSH certificate as host key; only plain host keys are pinned")]
    HostCertificate { host: String },
    #[error("cannot load the SSH private key {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: russh::keys::Error,
    },
    #[error("ssh-agent has no usable identity")]
    AgentEmpty,
    #[error("ssh-agent holds no key `{wanted}` (spec.ssh.agentKey); it holds: {held}")]
    AgentNoKey { wanted: String, held: String },
    #[error("cannot use ssh-agent")]
    Agent(#[source] russh::keys::Error),
    #[error("`{command}` on {host} did not finish within {after:.1?} and was stopped (the limits are spec.ssh.commandTimeoutSeconds and, for kubeadm, image imports and transfers, spec.ssh.longCommandTimeoutSeconds)")]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },
    #[error("the connection to {host} was lost while running `{command}`")]
    ConnectionLost {
        host: String,
        command: String,
        #[source]
        source: Option<Box<russh::Error>>,
    },
    #[error("cannot open a channel to {host}")]
    Channel {
        host: String,
        #[source]
        source: Box<russh::Error>,
    },
    #[error("`{command}` failed on {host} with exit code {exit_code}: {stderr}")]
    CommandFailed {
        host: String,
        command: String,
        exit_code: u32,
        stderr: String,
    },
    #[error("upload of {path} to {host} failed: {detail}")]
    Upload {
        host: String,
        path: String,
        detail: String,
    },
    #[error("cannot read the local file {path}")]
    LocalFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bastion {bastion} could not be used")]
    Bastion {
        bastion: String,
        #[source]
        source: Box<TransportError>,
    },
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// Why one connection attempt failed (the last attempt's reason is kept).
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("TCP connect failed")]
    Tcp(#[source] std::io::Error),
    #[error("no answer within {0:.1?}")]
    Timeout(Duration),
    #[error("SSH handshake failed")]
    Handshake(#[source] Box<russh::Error>),
    #[error("the bastion could not open a tunnel")]
    Tunnel(#[source] Box<russh::Error>),
}

impl TransportError {
    /// True for failures that may heal by themselves (a booting host, a lost
    /// connection): callers may retry the whole step. Host key changes, rejected keys
    /// and failed commands are never retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Connect { .. }
            | TransportError::Timeout { .. }
            | TransportError::ConnectionLost { .. }
            | TransportError::Channel { .. } => true,
            TransportError::Bastion { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// The host the error is about, when there is one.
    pub fn host(&self) -> Option<&str> {
        match self {
            TransportError::Connect { host, .. }
            | TransportError::Auth { host, .. }
            | TransportError::HostKeyChanged { host, .. }
            | TransportError::HostCertificate { host }
            | TransportError::Timeout { host, .. }
            | TransportError::ConnectionLost { host, .. }
            | TransportError::Channel { host, .. }
            | TransportError::CommandFailed { host, .. }
            | TransportError::Upload { host, .. } => Some(host),
            TransportError::Bastion { bastion, .. } => Some(bastion),
            _ => None,
        }
    }
}
