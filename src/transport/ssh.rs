//! The russh implementation of [`Transport`]: one connection per host, reused for every
//! command and transfer of a run, many channels in parallel on it.

use super::hostkeys::{check_and_pin, fingerprint, HostKeyCheck, HostKeyStore};
use super::shell::quote;
use super::{
    ConnectFailure, ExecOutput, Transport, TransportError, UploadOutcome, UploadSource,
    UploadTarget,
};
use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Mutex, Semaphore};

/// How to authenticate.
#[derive(Clone)]
pub enum SshAuth {
    /// A private key loaded once (see [`SshAuth::key_file`]).
    Key(Arc<PrivateKey>),
    /// The identities the agent at `$SSH_AUTH_SOCK` holds, in order; only the one
    /// whose fingerprint (`SHA256:...`) or comment is given, when one is.
    Agent(Option<String>),
}

impl std::fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SshAuth::Key(k) => write!(f, "Key({})", k.public_key().fingerprint(Default::default())),
            SshAuth::Agent(only) => write!(f, "Agent({only:?})"),
        }
    }
}

impl SshAuth {
    /// Load an unencrypted OpenSSH/PEM private key file.
    pub fn key_file(path: impl AsRef<Path>) -> Result<SshAuth, TransportError> {
        let path = path.as_ref();
        russh::keys::load_secret_key(path, None)
            .map(|k| SshAuth::Key(Arc::new(k)))
            .map_err(|source| TransportError::KeyFile {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// Retries of the connection step.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retryable failures (refused, reset, timeout, handshake cut short) are retried
    /// until this much time has passed since the first attempt.
    pub window: Duration,
    /// A rejected key is retried only within this window (fresh machines get their
    /// authorized_keys a moment after sshd starts). Zero: the first rejection is final.
    pub auth_window: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            window: Duration::from_secs(60),
            auth_window: Duration::ZERO,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(3),
        }
    }
}

/// A jump host: connections to targets are tunnelled through it (direct-tcpip).
#[derive(Debug, Clone)]
pub struct BastionConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// `None`: the same authentication as the targets.
    pub auth: Option<SshAuth>,
    /// Jump hosts on the way to this one, in order (their own `via` is not used): the
    /// first is connected to directly, each next one through the one before.
    pub via: Vec<BastionConfig>,
}

/// Default limit of an ordinary remote command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Default limit of a long remote command or a file transfer.
pub const DEFAULT_LONG_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// After its limit, the remote side stops a command itself this much later (SIGTERM),
/// and kills it 5 s after that, so nothing is left running once we gave up on it.
const REMOTE_GRACE_SECS: u64 = 1;

/// Where each host remembers the sha256 of the files kubeforge put there, keyed by the
/// file's size, mtime, ctime (nanoseconds) and inode: an unchanged file is not read
/// again to learn it is unchanged (a 100 MiB binary costs ~0.3 s of a core to hash).
/// Any write, chmod, chown, rename or replacement changes the ctime or the inode, and
/// ctime cannot be set from user space, so a stale entry is never taken for the file.
pub const DIGEST_DIR: &str = "/var/lib/kubeforge/digests";

/// The digest cache entry of a remote path: `<dir>/<sha256 of the path>`.
fn digest_entry(dir: &str, path: &str) -> String {
    format!("{dir}/{}", hex::encode(Sha256::digest(path.as_bytes())))
}

/// Shell: print the file's digest id (`size:mtime:ctime:inode`) of `$p`.
const STAT_ID: &str = "stat -c '%s:%.9Y:%.9Z:%i'";

/// Commands that may legitimately take minutes: kubeadm (init, join, upgrade pull
/// images and wait for the control plane), container image imports, package
/// installs, etcd snapshots, kubectl waits and drains.
pub fn is_long_command(command: &str) -> bool {
    const LONG: [&str; 12] = [
        "kubeadm ",
        "kubeforge-kubeadm-",
        "images import",
        "images pull",
        "apt-get ",
        "dnf ",
        "yum ",
        "etcdctl snapshot",
        "/v3/maintenance/snapshot",
        "admin.conf drain ",
        "kubectl wait",
        "kubectl rollout",
    ];
    LONG.iter().any(|k| command.contains(k))
}

/// Make the remote side bound `wire` too (coreutils/busybox `timeout`): SIGTERM a
/// moment after `limit`, SIGKILL 5 s later, to the whole process group.
fn bounded(wire: &str, limit: Duration) -> String {
    let secs = limit.as_secs_f64().ceil() as u64 + REMOTE_GRACE_SECS;
    format!("timeout -k 5 {secs} sh -c {}", quote(wire))
}

#[derive(Debug, Clone)]
pub struct SshConfig {
    pub user: String,
    pub port: u16,
    pub auth: SshAuth,
    /// Limit for TCP connect plus SSH handshake plus authentication, per attempt.
    pub connect_timeout: Duration,
    /// Limit for one ordinary command (`None`: no limit). Default
    /// [`DEFAULT_COMMAND_TIMEOUT`]; `spec.ssh.commandTimeoutSeconds`.
    pub command_timeout: Option<Duration>,
    /// Limit for the long kinds of command ([`is_long_command`]: kubeadm, image
    /// imports, package installs, etcd snapshots) and for file transfers (`None`: no
    /// limit). Default [`DEFAULT_LONG_COMMAND_TIMEOUT`];
    /// `spec.ssh.longCommandTimeoutSeconds`.
    pub long_command_timeout: Option<Duration>,
    /// Keepalive probes every this often; the connection is dropped after 3 unanswered.
    pub keepalive_interval: Option<Duration>,
    pub retry: RetryPolicy,
    pub bastion: Option<BastionConfig>,
    /// Hosts whose changed host key is re-pinned on purpose (`--accept-new-host-key`).
    pub accept_new_host_keys: BTreeSet<String>,
    /// Channels open at once per connection (sshd's MaxSessions defaults to 10).
    pub max_channels: usize,
    /// Per-host user, port and key (by the address the pool is asked for), where an
    /// inventory gives them (`ansible_user`, `ansible_port`,
    /// `ansible_ssh_private_key_file`).
    pub per_host: BTreeMap<String, HostOverride>,
}

/// What one host does differently from the cluster's SSH settings.
#[derive(Debug, Clone, Default)]
pub struct HostOverride {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub auth: Option<SshAuth>,
}

impl SshConfig {
    /// The settings for `host`: the cluster's, with the host's own where it has them.
    pub fn for_host(&self, host: &str) -> std::borrow::Cow<'_, SshConfig> {
        match self.per_host.get(host) {
            None => std::borrow::Cow::Borrowed(self),
            Some(o) => {
                let mut c = self.clone();
                if let Some(u) = &o.user {
                    c.user = u.clone();
                }
                if let Some(p) = o.port {
                    c.port = p;
                }
                if let Some(a) = &o.auth {
                    c.auth = a.clone();
                }
                std::borrow::Cow::Owned(c)
            }
        }
    }
}

impl SshConfig {
    pub fn new(user: impl Into<String>, auth: SshAuth) -> Self {
        SshConfig {
            user: user.into(),
            port: 22,
            auth,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Some(DEFAULT_COMMAND_TIMEOUT),
            long_command_timeout: Some(DEFAULT_LONG_COMMAND_TIMEOUT),
            keepalive_interval: Some(Duration::from_secs(10)),
            retry: RetryPolicy::default(),
            bastion: None,
            accept_new_host_keys: BTreeSet::new(),
            max_channels: 8,
            per_host: BTreeMap::new(),
        }
    }

    fn russh_config(&self) -> Arc<client::Config> {
        Arc::new(client::Config {
            keepalive_interval: self.keepalive_interval,
            keepalive_max: KEEPALIVE_MAX,
            // Keepalives alone miss a peer that died while we were sending: the session
            // loop sits in a socket write the kernel cannot finish (TCP retries for ~15
            // minutes) and never gets to send the next keepalive. Bounding every write
            // and every silence (a live server answers each keepalive, so an idle or
            // silent command never reaches it) closes that connection instead.
            inactivity_timeout: self
                .keepalive_interval
                .map(|i| i * (KEEPALIVE_MAX as u32 + 2)),
            nodelay: true,
            window_size: 8 * 1024 * 1024,
            ..Default::default()
        })
    }
}

/// Unanswered keepalives before the connection counts as lost.
const KEEPALIVE_MAX: usize = 3;

/// Why the handshake was aborted by [`PinningHandler`].
#[derive(Debug)]
pub enum HandlerError {
    Russh(russh::Error),
    HostKeyChanged { pinned: String, offered: String },
    HostCertificate,
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Russh(e)
    }
}

/// Checks the server's host key against the store during the handshake.
pub struct PinningHandler {
    host: String,
    store: Arc<dyn HostKeyStore>,
    accept_new: bool,
}

impl client::Handler for PinningHandler {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => return Err(HandlerError::HostCertificate),
        };
        match check_and_pin(self.store.as_ref(), &self.host, key, self.accept_new) {
            HostKeyCheck::Known => Ok(true),
            HostKeyCheck::PinnedNew => {
                tracing::info!(host = %self.host, fingerprint = %key.fingerprint(Default::default()), "pinned new host key (first use)");
                Ok(true)
            }
            HostKeyCheck::Repinned { previous } => {
                tracing::warn!(host = %self.host, previous = %fingerprint(&previous), now = %key.fingerprint(Default::default()), "re-pinned changed host key on request");
                Ok(true)
            }
            HostKeyCheck::Changed { pinned, offered } => {
                Err(HandlerError::HostKeyChanged { pinned, offered })
            }
        }
    }
}

/// One failed attempt, classified.
enum Attempt {
    Retry(ConnectFailure),
    AuthRejected,
    Fatal(TransportError),
}

/// How a session reaches its host.
enum Link {
    /// Its own connection.
    Direct(Handle<PinningHandler>),
    /// Channels of the connection the connection keeper holds ([`super::mux`]); its own
    /// connection, made on the first channel the keeper cannot give, after that.
    Kept(Box<Kept>),
}

struct Kept {
    mux: Arc<super::mux::MuxClient>,
    host_key: String,
    cfg: SshConfig,
    store: Arc<dyn HostKeyStore>,
    own: tokio::sync::OnceCell<Handle<PinningHandler>>,
}

/// A TCP connection carried by SSH (see [`SshSession::direct_tcpip`]).
pub trait TunnelStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> TunnelStream for T {}

/// An authenticated connection to one host.
pub struct SshSession {
    host: String,
    user: String,
    link: Link,
    channels: Semaphore,
    command_timeout: Option<Duration>,
    long_command_timeout: Option<Duration>,
    /// Keeps the tunnel's carrier connection alive.
    _bastion: Option<Arc<SshSession>>,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession")
            .field("host", &self.host)
            .field("user", &self.user)
            .finish()
    }
}

/// Bytes read from an upload's source per hand-over to the channel.
const STDIN_CHUNK: usize = 512 * 1024;

/// Raw result of one channel.
struct RawOutput {
    exit_code: u32,
    signal: Option<String>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// What a channel says of its command: from russh, or relayed by the connection keeper
/// (the bytes as each gives them, not copied on the way).
pub(super) enum Said {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
    Status(u32),
    Signal(String),
    Other,
}

impl From<ChannelMsg> for Said {
    fn from(msg: ChannelMsg) -> Self {
        match msg {
            ChannelMsg::Data { data } => Said::Stdout(data),
            ChannelMsg::ExtendedData { data, ext: 1 } => Said::Stderr(data),
            ChannelMsg::ExitStatus { exit_status } => Said::Status(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => Said::Signal(format!("{signal_name:?}")),
            _ => Said::Other,
        }
    }
}

/// Feed a command's input while collecting what its channel says, until the channel
/// ends: how feeding ended (None: the channel ended first), the output, and whether an
/// exit status or signal came. The channel's end decides: a write waiting for window
/// space is never woken when the connection dies under it, so once the channel has
/// ended (command done, or connection gone) the rest of the input is dropped, not
/// waited for.
async fn feed_and_collect<E>(
    feed: impl std::future::Future<Output = Result<(), E>>,
    said: impl futures::Stream<Item = Said>,
) -> (Option<Result<(), E>>, RawOutput, bool) {
    use futures::StreamExt;
    let collect = async {
        let mut out = RawOutput {
            exit_code: 255,
            signal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        let mut got_status = false;
        tokio::pin!(said);
        while let Some(s) = said.next().await {
            match s {
                Said::Stdout(d) => out.stdout.extend_from_slice(&d),
                Said::Stderr(d) => out.stderr.extend_from_slice(&d),
                Said::Status(code) => {
                    out.exit_code = code;
                    got_status = true;
                }
                Said::Signal(name) => {
                    out.signal = Some(name);
                    got_status = true;
                }
                Said::Other => {}
            }
        }
        (out, got_status)
    };
    tokio::pin!(feed, collect);
    let (fed, (out, got_status)) = tokio::select! {
        fed = &mut feed => (Some(fed), collect.await),
        collected = &mut collect => (None, collected),
    };
    (fed, out, got_status)
}

impl SshSession {
    /// Connect and authenticate, retrying retryable failures per `cfg.retry`.
    pub async fn connect(
        host: &str,
        cfg: &SshConfig,
        store: Arc<dyn HostKeyStore>,
        bastion: Option<Arc<SshSession>>,
    ) -> Result<SshSession, TransportError> {
        let handle = Self::connect_handle(host, cfg, store, bastion.as_deref()).await?;
        Ok(SshSession {
            host: host.to_string(),
            user: cfg.user.clone(),
            link: Link::Direct(handle),
            channels: Semaphore::new(cfg.max_channels.max(1)),
            command_timeout: cfg.command_timeout,
            long_command_timeout: cfg.long_command_timeout,
            _bastion: bastion,
        })
    }

    /// A session on the connection the keeper holds for `host` (attached already).
    fn kept(
        host: &str,
        cfg: &SshConfig,
        store: Arc<dyn HostKeyStore>,
        mux: Arc<super::mux::MuxClient>,
        host_key: String,
    ) -> SshSession {
        SshSession {
            host: host.to_string(),
            user: cfg.user.clone(),
            link: Link::Kept(Box::new(Kept {
                mux,
                host_key,
                cfg: cfg.clone(),
                store,
                own: Default::default(),
            })),
            channels: Semaphore::new(cfg.max_channels.max(1)),
            command_timeout: cfg.command_timeout,
            long_command_timeout: cfg.long_command_timeout,
            _bastion: None,
        }
    }

    async fn connect_handle(
        host: &str,
        cfg: &SshConfig,
        store: Arc<dyn HostKeyStore>,
        bastion: Option<&SshSession>,
    ) -> Result<Handle<PinningHandler>, TransportError> {
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut backoff = cfg.retry.initial_backoff;
        loop {
            attempts += 1;
            let outcome = tokio::time::timeout(
                cfg.connect_timeout,
                Self::attempt(host, cfg, store.clone(), bastion),
            )
            .await
            .unwrap_or(Err(Attempt::Retry(ConnectFailure::Timeout(
                cfg.connect_timeout,
            ))));
            let attempt = match outcome {
                Ok(handle) => return Ok(handle),
                Err(a) => a,
            };
            let elapsed = start.elapsed();
            match attempt {
                Attempt::Fatal(e) => return Err(e),
                Attempt::AuthRejected => {
                    if elapsed + backoff > cfg.retry.auth_window {
                        return Err(TransportError::Auth {
                            host: host.into(),
                            user: cfg.user.clone(),
                            attempts,
                            elapsed,
                        });
                    }
                    tracing::debug!(
                        host,
                        attempts,
                        "authentication rejected; retrying (fresh machine?)"
                    );
                }
                Attempt::Retry(source) => {
                    if elapsed + backoff > cfg.retry.window {
                        return Err(TransportError::Connect {
                            host: host.into(),
                            port: cfg.port,
                            attempts,
                            elapsed,
                            source,
                        });
                    }
                    tracing::debug!(host, attempts, error = %source, "connect failed; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cfg.retry.max_backoff);
        }
    }

    async fn attempt(
        host: &str,
        cfg: &SshConfig,
        store: Arc<dyn HostKeyStore>,
        bastion: Option<&SshSession>,
    ) -> Result<Handle<PinningHandler>, Attempt> {
        let handler = PinningHandler {
            host: host.to_string(),
            store,
            accept_new: cfg.accept_new_host_keys.contains(host),
        };
        let rcfg = cfg.russh_config();
        let connected = match bastion {
            None => {
                let tcp = tokio::net::TcpStream::connect((host, cfg.port))
                    .await
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::InvalidInput {
                            Attempt::Fatal(TransportError::Connect {
                                host: host.into(),
                                port: cfg.port,
                                attempts: 1,
                                elapsed: Duration::ZERO,
                                source: ConnectFailure::Tcp(e),
                            })
                        } else {
                            Attempt::Retry(ConnectFailure::Tcp(e))
                        }
                    })?;
                let _ = tcp.set_nodelay(true);
                client::connect_stream(rcfg, tcp, handler).await
            }
            Some(b) => {
                let channel = b
                    .handle()
                    .ok_or_else(|| {
                        Attempt::Fatal(TransportError::Bastion {
                            bastion: b.host.clone(),
                            source: Box::new(TransportError::ConnectionLost {
                                host: b.host.clone(),
                                command: "(tunnel)".into(),
                                source: None,
                            }),
                        })
                    })?
                    .channel_open_direct_tcpip(host, u32::from(cfg.port), "127.0.0.1", 0)
                    .await
                    .map_err(|e| Attempt::Retry(ConnectFailure::Tunnel(Box::new(e))))?;
                client::connect_stream(rcfg, channel.into_stream(), handler).await
            }
        };
        let mut handle = connected.map_err(|e| match e {
            HandlerError::HostKeyChanged { pinned, offered } => {
                Attempt::Fatal(TransportError::HostKeyChanged {
                    host: host.into(),
                    pinned_fingerprint: fingerprint(&pinned),
                    offered_fingerprint: fingerprint(&offered),
                })
            }
            HandlerError::HostCertificate => {
                Attempt::Fatal(TransportError::HostCertificate { host: host.into() })
            }
            HandlerError::Russh(e) => Attempt::Retry(ConnectFailure::Handshake(Box::new(e))),
        })?;
        let ok = authenticate(&mut handle, &cfg.user, &cfg.auth).await?;
        if ok {
            Ok(handle)
        } else {
            Err(Attempt::AuthRejected)
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether the connection is gone (the pool then reconnects).
    pub fn is_closed(&self) -> bool {
        match &self.link {
            Link::Direct(h) => h.is_closed(),
            Link::Kept(k) => k.own.get().is_some_and(|h| h.is_closed()),
        }
    }

    /// The session's own connection, when it has one.
    fn handle(&self) -> Option<&Handle<PinningHandler>> {
        match &self.link {
            Link::Direct(h) => Some(h),
            Link::Kept(k) => k.own.get(),
        }
    }

    /// The session's own connection, made now when the keeper served it so far.
    async fn own_handle(&self) -> Result<&Handle<PinningHandler>, TransportError> {
        match &self.link {
            Link::Direct(h) => Ok(h),
            Link::Kept(k) => {
                k.own
                    .get_or_try_init(|| {
                        Self::connect_handle(&self.host, &k.cfg, k.store.clone(), None)
                    })
                    .await
            }
        }
    }

    /// Whether the peer answers a ping within `limit`.
    pub(super) async fn ping(&self, limit: Duration) -> bool {
        let Some(h) = self.handle() else {
            return false;
        };
        matches!(tokio::time::timeout(limit, h.send_ping()).await, Ok(Ok(())))
    }

    /// A new session channel of the session's own connection, with its place among the
    /// channels open at once (for the connection keeper, which relays it).
    pub(super) async fn open_channel(
        &self,
    ) -> Result<
        (
            tokio::sync::SemaphorePermit<'_>,
            russh::Channel<client::Msg>,
        ),
        TransportError,
    > {
        let permit = self
            .channels
            .acquire()
            .await
            .map_err(|_| TransportError::ConnectionLost {
                host: self.host.clone(),
                command: "(channel)".into(),
                source: None,
            })?;
        let handle = self.own_handle().await?;
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| TransportError::Channel {
                host: self.host.clone(),
                source: Box::new(e),
            })?;
        Ok((permit, channel))
    }

    fn privileged(&self, command: &str) -> String {
        if self.user == "root" {
            command.to_string()
        } else {
            format!("sudo -n -- sh -c {}", quote(command))
        }
    }

    /// The time limit of `command` (ordinary or long, see [`is_long_command`]).
    pub fn limit_for(&self, command: &str) -> Option<Duration> {
        if is_long_command(command) {
            self.long_command_timeout
        } else {
            self.command_timeout
        }
    }

    /// Run `command` as the SSH user, without sudo.
    pub async fn exec_unprivileged(&self, command: &str) -> Result<ExecOutput, TransportError> {
        let raw = self
            .run_with(
                command,
                command,
                None::<tokio::io::Empty>,
                self.limit_for(command),
            )
            .await?;
        Ok(to_output(raw))
    }

    /// Run a privileged command, failing unless it exits 0.
    pub async fn exec_checked(&self, command: &str) -> Result<ExecOutput, TransportError> {
        let out = Transport::exec(self, command).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(TransportError::CommandFailed {
                host: self.host.clone(),
                command: command.into(),
                exit_code: out.exit_code,
                stderr: match &out.signal {
                    Some(sig) => format!("killed by signal {sig}; {}", out.stderr.trim()),
                    None => out.stderr.trim().to_string(),
                },
            })
        }
    }

    /// Run a privileged command with its own time limit (overrides
    /// `SshConfig::command_timeout`; `None`: no limit).
    pub async fn exec_timeout(
        &self,
        command: &str,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, TransportError> {
        let wire = self.privileged(command);
        let raw = self
            .run_with(command, &wire, None::<tokio::io::Empty>, timeout)
            .await?;
        Ok(to_output(raw))
    }

    /// Run `wire` (the exact string sent) on a new channel, feeding `stdin` when given,
    /// with the limit for transfers. `label` names the command in errors.
    async fn run<R: AsyncRead + Unpin + Send>(
        &self,
        label: &str,
        wire: &str,
        stdin: Option<R>,
    ) -> Result<RawOutput, TransportError> {
        self.run_with(label, wire, stdin, self.long_command_timeout)
            .await
    }

    /// With a limit, the command is bounded on both sides: we stop waiting after
    /// `timeout` (the channel is dropped, the connection stays usable), and the remote
    /// `timeout` stops the command itself a moment later, so it does not linger.
    async fn run_with<R: AsyncRead + Unpin + Send>(
        &self,
        label: &str,
        wire: &str,
        stdin: Option<R>,
        timeout: Option<Duration>,
    ) -> Result<RawOutput, TransportError> {
        let wire = match timeout {
            Some(t) => bounded(wire, t),
            None => wire.to_string(),
        };
        let work = self.run_inner(label, &wire, stdin);
        match timeout {
            Some(t) => tokio::time::timeout(t, work).await.unwrap_or_else(|_| {
                Err(TransportError::Timeout {
                    host: self.host.clone(),
                    command: label.into(),
                    after: t,
                })
            }),
            None => work.await,
        }
    }

    async fn run_inner<R: AsyncRead + Unpin + Send>(
        &self,
        label: &str,
        wire: &str,
        stdin: Option<R>,
    ) -> Result<RawOutput, TransportError> {
        let _permit =
            self.channels
                .acquire()
                .await
                .map_err(|_| TransportError::ConnectionLost {
                    host: self.host.clone(),
                    command: label.into(),
                    source: None,
                })?;
        let lost = |source: Option<russh::Error>| TransportError::ConnectionLost {
            host: self.host.clone(),
            command: label.into(),
            source: source.map(Box::new),
        };
        if let Link::Kept(k) = &self.link {
            if k.own.get().is_none() {
                match k.mux.exec(&self.host, &k.host_key, wire).await {
                    Ok(stream) => return self.run_kept(label, stream, stdin).await,
                    Err(why) => {
                        tracing::debug!(host = %self.host, %why, "the connection keeper gave no channel; connecting");
                    }
                }
            }
        }
        let channel = self
            .own_handle()
            .await?
            .channel_open_session()
            .await
            .map_err(|e| match e {
                russh::Error::ChannelOpenFailure(_) => TransportError::Channel {
                    host: self.host.clone(),
                    source: Box::new(e),
                },
                other => lost(Some(other)),
            })?;
        channel.exec(true, wire).await.map_err(|e| lost(Some(e)))?;
        let (read, write) = channel.split();
        let feed = async {
            if let Some(mut input) = stdin {
                // Large reads handed over as owned chunks: russh cuts them into
                // full-size packets (tokio::io::copy would send 8 KiB packets).
                loop {
                    let mut buf = bytes::BytesMut::with_capacity(STDIN_CHUNK);
                    while buf.len() < STDIN_CHUNK {
                        if input.read_buf(&mut buf).await? == 0 {
                            break;
                        }
                    }
                    if buf.is_empty() {
                        break;
                    }
                    let last = buf.len() < STDIN_CHUNK;
                    write.data_bytes(buf.freeze()).await?;
                    if last {
                        break;
                    }
                }
            }
            write.eof().await
        };
        let said = futures::stream::unfold(read, |mut read| async move {
            read.wait().await.map(|msg| (Said::from(msg), read))
        });
        let (fed, out, got_status) = feed_and_collect(feed, said).await;
        if !got_status {
            return Err(lost(fed.and_then(|f| f.err())));
        }
        self.input_ended(fed);
        Ok(out)
    }

    /// Note how feeding a finished command's input ended.
    fn input_ended<E: std::fmt::Display>(&self, fed: Option<Result<(), E>>) {
        match fed {
            Some(Ok(())) => {}
            // The command exited before reading all of its input.
            Some(Err(e)) => tracing::debug!(host = %self.host, error = %e, "stdin not fully sent"),
            None => tracing::debug!(host = %self.host, "command ended before its input was sent"),
        }
    }

    /// The rest of [`SshSession::run_inner`] when the keeper runs the command: the
    /// input sent as frames, the output and the exit read from them.
    async fn run_kept<R: AsyncRead + Unpin + Send>(
        &self,
        label: &str,
        stream: tokio::net::UnixStream,
        stdin: Option<R>,
    ) -> Result<RawOutput, TransportError> {
        use super::mux::{
            read_frame, write_frame, EXIT_SIGNAL, EXIT_STATUS, STDERR, STDIN, STDIN_END, STDOUT,
        };
        let (from_mux, mut to_mux) = stream.into_split();
        let feed = async {
            if let Some(mut input) = stdin {
                let mut buf = vec![0u8; STDIN_CHUNK];
                loop {
                    let n = input.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    write_frame(&mut to_mux, STDIN, &buf[..n]).await?;
                }
            }
            write_frame(&mut to_mux, STDIN_END, b"").await
        };
        let said = futures::stream::unfold(from_mux, |mut from_mux| async move {
            let (kind, data) = read_frame(&mut from_mux).await?;
            let said = match kind {
                STDOUT => Said::Stdout(data.into()),
                STDERR => Said::Stderr(data.into()),
                EXIT_STATUS => match <[u8; 4]>::try_from(&data[..]) {
                    Ok(code) => Said::Status(u32::from_be_bytes(code)),
                    Err(_) => Said::Other,
                },
                EXIT_SIGNAL => Said::Signal(String::from_utf8_lossy(&data).into_owned()),
                _ => Said::Other,
            };
            Some((said, from_mux))
        });
        let (fed, out, got_status) = feed_and_collect(feed, said).await;
        if !got_status {
            return Err(TransportError::ConnectionLost {
                host: self.host.clone(),
                command: label.into(),
                source: None,
            });
        }
        self.input_ended(fed);
        Ok(out)
    }

    /// A TCP connection from the host to `target:port` (SSH `direct-tcpip`, what
    /// `ssh -L` uses), carried over this session. The host's sshd must allow TCP
    /// forwarding (OpenSSH's default).
    pub async fn direct_tcpip(
        &self,
        target: &str,
        port: u16,
    ) -> Result<Box<dyn TunnelStream>, TransportError> {
        if let Link::Kept(k) = &self.link {
            if k.own.get().is_none() {
                match k.mux.tcpip(&self.host, &k.host_key, target, port).await {
                    Ok(stream) => return Ok(Box::new(stream)),
                    Err(why) => {
                        tracing::debug!(host = %self.host, %why, "the connection keeper gave no tunnel; connecting");
                    }
                }
            }
        }
        let channel = self
            .own_handle()
            .await?
            .channel_open_direct_tcpip(target, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|e| TransportError::Channel {
                host: self.host.clone(),
                source: Box::new(e),
            })?;
        Ok(Box::new(channel.into_stream()))
    }

    /// Close the session's own connection politely (the keeper's stays open).
    pub async fn close(&self) {
        let Some(handle) = self.handle() else {
            return;
        };
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

async fn authenticate(
    handle: &mut Handle<PinningHandler>,
    user: &str,
    auth: &SshAuth,
) -> Result<bool, Attempt> {
    let handshake = |e: russh::Error| Attempt::Retry(ConnectFailure::Handshake(Box::new(e)));
    match auth {
        SshAuth::Key(key) => {
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(handshake)?
                .flatten();
            let res = handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), hash))
                .await
                .map_err(handshake)?;
            Ok(res.success())
        }
        SshAuth::Agent(only) => {
            let mut agent = AgentClient::connect_env()
                .await
                .map_err(|e| Attempt::Fatal(TransportError::Agent(e)))?;
            let ids = agent
                .request_identities()
                .await
                .map_err(|e| Attempt::Fatal(TransportError::Agent(e)))?;
            let all: Vec<(russh::keys::PublicKey, String)> = ids
                .into_iter()
                .filter_map(|id| match id {
                    AgentIdentity::PublicKey { key, comment } => Some((key, comment)),
                    _ => None,
                })
                .collect();
            if all.is_empty() {
                return Err(Attempt::Fatal(TransportError::AgentEmpty));
            }
            let fp = |k: &russh::keys::PublicKey| {
                k.fingerprint(russh::keys::HashAlg::Sha256).to_string()
            };
            let keys: Vec<russh::keys::PublicKey> = match only {
                None => all.into_iter().map(|(k, _)| k).collect(),
                Some(want) => {
                    let (hit, miss): (Vec<_>, Vec<_>) = all
                        .into_iter()
                        .partition(|(k, c)| fp(k) == *want || c == want);
                    if hit.is_empty() {
                        return Err(Attempt::Fatal(TransportError::AgentNoKey {
                            wanted: want.clone(),
                            held: miss
                                .iter()
                                .map(|(k, c)| format!("{} {c}", fp(k)))
                                .collect::<Vec<_>>()
                                .join(", "),
                        }));
                    }
                    hit.into_iter().map(|(k, _)| k).collect()
                }
            };
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(handshake)?
                .flatten();
            for key in keys {
                match handle
                    .authenticate_publickey_with(user, key, hash, &mut agent)
                    .await
                {
                    Ok(r) if r.success() => return Ok(true),
                    Ok(_) => continue,
                    Err(e) => tracing::debug!(error = %e, "agent could not sign"),
                }
            }
            Ok(false)
        }
    }
}

fn to_output(raw: RawOutput) -> ExecOutput {
    ExecOutput {
        exit_code: raw.exit_code,
        signal: raw.signal,
        stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&raw.stderr).into_owned(),
    }
}

type DigestKey = (PathBuf, Option<std::time::SystemTime>, u64);

/// Digests of local files already hashed in this process (a file pushed to many hosts
/// is read once for its checksum, not once per host).
fn digest_cache(
) -> &'static std::sync::Mutex<HashMap<DigestKey, Arc<tokio::sync::OnceCell<String>>>> {
    static CACHE: std::sync::OnceLock<
        std::sync::Mutex<HashMap<DigestKey, Arc<tokio::sync::OnceCell<String>>>>,
    > = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// sha256 (hex) and size of an upload source, streaming files.
async fn digest(source: &UploadSource) -> Result<(String, u64), TransportError> {
    match source {
        UploadSource::Bytes(b) => Ok((hex::encode(Sha256::digest(b)), b.len() as u64)),
        UploadSource::File(path) => {
            let meta =
                tokio::fs::metadata(path)
                    .await
                    .map_err(|source| TransportError::LocalFile {
                        path: path.clone(),
                        source,
                    })?;
            let key = (path.clone(), meta.modified().ok(), meta.len());
            let cell = digest_cache()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default()
                .clone();
            let sha = cell
                .get_or_try_init(|| async { hash_file(path).await.map(|(sha, _)| sha) })
                .await?;
            Ok((sha.clone(), meta.len()))
        }
    }
}

async fn hash_file(path: &PathBuf) -> Result<(String, u64), TransportError> {
    let local = |source| TransportError::LocalFile {
        path: path.clone(),
        source,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(local)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await.map_err(local)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Marks the sections of a batched probe and the answers of batched checks.
const PROBE_MARK: &str = "@@kubeforge-probe";
const CHECK_MARK: &str = "@@kubeforge-check";

/// The probe output of each of `n` items of a batched probe, in order.
fn probe_sections(stdout: &str, n: usize) -> Vec<String> {
    let mut out = vec![String::new(); n];
    let mut current: Option<usize> = None;
    for line in stdout.lines() {
        if let Some(i) = line
            .strip_prefix(PROBE_MARK)
            .and_then(|r| r.trim().parse::<usize>().ok())
        {
            current = (i < n).then_some(i);
            continue;
        }
        if let Some(i) = current {
            out[i].push_str(line);
            out[i].push('\n');
        }
    }
    out
}

impl SshSession {
    /// Given what the probe saw at the target (`size mode owner` and, for the same size,
    /// the sha256), leave it, fix mode/owner, or send the content.
    async fn finish_upload(
        &self,
        source: UploadSource,
        target: &UploadTarget,
        sha: String,
        size: u64,
        probe: &str,
    ) -> Result<UploadOutcome, TransportError> {
        let path = quote(&target.path);
        let mode = format!("{:o}", target.mode);
        let upload_err = |detail: String| TransportError::Upload {
            host: self.host.clone(),
            path: target.path.clone(),
            detail,
        };
        let mut lines = probe.lines();
        let meta = lines.next().unwrap_or_default();
        if lines.next() == Some(sha.as_str()) {
            let meta = meta
                .split_once(' ')
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            let (have_mode, have_owner) = meta.split_once(' ').unwrap_or((meta, ""));
            let mode_ok = have_mode == mode;
            let owner_ok = match &target.owner {
                None => true,
                Some(o) if o.contains(':') => have_owner == o,
                Some(o) => have_owner.split(':').next() == Some(o.as_str()),
            };
            if mode_ok && owner_ok {
                return Ok(UploadOutcome {
                    sent: false,
                    metadata_fixed: false,
                    bytes: 0,
                    sha256: sha,
                });
            }
            let mut fix = format!("chmod {mode} {path}");
            if let Some(o) = &target.owner {
                fix.push_str(&format!(" && chown {} {path}", quote(o)));
            }
            self.exec_checked(&fix).await?;
            return Ok(UploadOutcome {
                sent: false,
                metadata_fixed: true,
                bytes: 0,
                sha256: sha,
            });
        }

        // Send to a temp file next to the target, verify, then rename over it.
        let script = upload_script(target, size, &sha, DIGEST_DIR);
        let wire = self.privileged(&script);
        let label = format!("upload {}", target.path);
        let raw = match &source {
            UploadSource::Bytes(b) => self.run(&label, &wire, Some(&b[..])).await?,
            UploadSource::File(p) => {
                let f =
                    tokio::fs::File::open(p)
                        .await
                        .map_err(|source| TransportError::LocalFile {
                            path: p.clone(),
                            source,
                        })?;
                let reader = tokio::io::BufReader::with_capacity(256 * 1024, f);
                self.run(&label, &wire, Some(reader)).await?
            }
        };
        if raw.exit_code != 0 || raw.signal.is_some() {
            return Err(upload_err(format!(
                "exit code {}: {}",
                raw.exit_code,
                String::from_utf8_lossy(&raw.stderr).trim()
            )));
        }
        Ok(UploadOutcome {
            sent: true,
            metadata_fixed: false,
            bytes: size,
            sha256: sha,
        })
    }
}

#[async_trait::async_trait]
impl Transport for SshSession {
    fn host(&self) -> &str {
        &self.host
    }

    async fn exec(&self, command: &str) -> Result<ExecOutput, TransportError> {
        let wire = self.privileged(command);
        let raw = self
            .run_with(
                command,
                &wire,
                None::<tokio::io::Empty>,
                self.limit_for(command),
            )
            .await?;
        Ok(to_output(raw))
    }

    async fn upload(
        &self,
        source: UploadSource,
        target: &UploadTarget,
    ) -> Result<UploadOutcome, TransportError> {
        let (sha, size) = digest(&source).await?;
        // 1. What is there now?
        let now = Transport::exec(self, &probe_script(&target.path, size, DIGEST_DIR)).await?;
        if !now.success() {
            return Err(TransportError::Upload {
                host: self.host.clone(),
                path: target.path.clone(),
                detail: format!("cannot inspect the remote file: {}", now.stderr.trim()),
            });
        }
        self.finish_upload(source, target, sha, size, &now.stdout)
            .await
    }

    /// One round trip asks about every target; only what differs is then fixed or sent.
    async fn upload_all(
        &self,
        items: Vec<(UploadSource, UploadTarget)>,
    ) -> Result<Vec<UploadOutcome>, TransportError> {
        if items.len() < 2 {
            let mut out = Vec::new();
            for (source, target) in items {
                out.push(self.upload(source, &target).await?);
            }
            return Ok(out);
        }
        let mut digests = Vec::new();
        let mut script = String::new();
        for (i, (source, target)) in items.iter().enumerate() {
            let (sha, size) = digest(source).await?;
            script.push_str(&format!(
                "echo '{PROBE_MARK} {i}'; {}; ",
                probe_script(&target.path, size, DIGEST_DIR)
            ));
            digests.push((sha, size));
        }
        script.push_str("true");
        let now = Transport::exec(self, &script).await?;
        if !now.success() {
            return Err(TransportError::Upload {
                host: self.host.clone(),
                path: items[0].1.path.clone(),
                detail: format!("cannot inspect the remote files: {}", now.stderr.trim()),
            });
        }
        let sections = probe_sections(&now.stdout, items.len());
        let mut out = Vec::new();
        for (((source, target), (sha, size)), probe) in items.into_iter().zip(digests).zip(sections)
        {
            out.push(
                self.finish_upload(source, &target, sha, size, &probe)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Run side-effect-free checks in one round trip: whether each exits 0.
    async fn checks(&self, commands: &[String]) -> Result<Vec<bool>, TransportError> {
        if commands.len() < 2 {
            let mut out = Vec::new();
            for c in commands {
                out.push(Transport::exec(self, c).await?.success());
            }
            return Ok(out);
        }
        let now = Transport::exec(self, &checks_script(commands)).await?;
        parse_checks(&self.host, &now, commands.len())
    }

    async fn download(&self, path: &str) -> Result<Vec<u8>, TransportError> {
        let command = format!("cat -- {}", quote(path));
        let wire = self.privileged(&command);
        let raw = self.run(&command, &wire, None::<tokio::io::Empty>).await?;
        if raw.exit_code != 0 {
            return Err(TransportError::CommandFailed {
                host: self.host.clone(),
                command,
                exit_code: raw.exit_code,
                stderr: String::from_utf8_lossy(&raw.stderr).trim().to_string(),
            });
        }
        Ok(raw.stdout)
    }
}

type Slot = Arc<Mutex<Option<Arc<SshSession>>>>;

/// One connection per host for a whole run, opened on first use and reopened when it
/// was lost. Cheap to share (`Arc<SshPool>`).
pub struct SshPool {
    cfg: SshConfig,
    store: Arc<dyn HostKeyStore>,
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    bastion: Mutex<Option<Arc<SshSession>>>,
    mux: Option<Arc<super::mux::MuxClient>>,
}

impl SshPool {
    pub fn new(cfg: SshConfig, store: Arc<dyn HostKeyStore>) -> Self {
        SshPool {
            cfg,
            store,
            slots: std::sync::Mutex::new(HashMap::new()),
            bastion: Mutex::new(None),
            mux: None,
        }
    }

    /// Take connections from the connection keeper (kept `persist` after their last
    /// use, [`super::mux`]) where it can serve them; zero: every run connects itself.
    pub fn keep_connections(mut self, persist: Duration) -> Self {
        self.mux = super::mux::MuxClient::new(&self.cfg, persist).map(Arc::new);
        self
    }

    /// The keeper's session for `host`, when it serves this host: its key is pinned, the
    /// run does not re-pin it, and the keeper holds (or now made) a live connection
    /// with that key.
    async fn kept_session(&self, host: &str) -> Option<SshSession> {
        let mux = self.mux.as_ref()?;
        if self.cfg.bastion.is_some() || self.cfg.accept_new_host_keys.contains(host) {
            return None;
        }
        let key = self.store.pinned(host)?;
        match mux.attach(host, &key).await {
            Ok(()) => {
                let cfg = self.cfg.for_host(host);
                Some(SshSession::kept(
                    host,
                    &cfg,
                    self.store.clone(),
                    mux.clone(),
                    key,
                ))
            }
            Err(why) => {
                tracing::debug!(host, %why, "not through the connection keeper");
                None
            }
        }
    }

    pub fn config(&self) -> &SshConfig {
        &self.cfg
    }

    async fn bastion(&self) -> Result<Option<Arc<SshSession>>, TransportError> {
        let Some(b) = &self.cfg.bastion else {
            return Ok(None);
        };
        let mut slot = self.bastion.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(Some(s.clone()));
        }
        // Hop by hop: each session keeps the one it goes through alive.
        let mut through: Option<Arc<SshSession>> = None;
        for hop in b.via.iter().chain(std::iter::once(b)) {
            let mut cfg = self.cfg.clone();
            cfg.user = hop.user.clone();
            cfg.port = hop.port;
            cfg.bastion = None;
            cfg.per_host.clear();
            if let Some(auth) = &hop.auth {
                cfg.auth = auth.clone();
            }
            let s = SshSession::connect(&hop.host, &cfg, self.store.clone(), through.take())
                .await
                .map_err(|e| TransportError::Bastion {
                    bastion: hop.host.clone(),
                    source: Box::new(e),
                })?;
            through = Some(Arc::new(s));
        }
        *slot = through.clone();
        Ok(through)
    }

    /// The connection to `host`, opening it when needed.
    pub async fn session(&self, host: &str) -> Result<Arc<SshSession>, TransportError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(host.to_string()).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(s) = guard.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        if let Some(s) = self.kept_session(host).await {
            let s = Arc::new(s);
            *guard = Some(s.clone());
            return Ok(s);
        }
        let bastion = self.bastion().await?;
        let cfg = self.cfg.for_host(host);
        let s = Arc::new(SshSession::connect(host, &cfg, self.store.clone(), bastion).await?);
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Drop the cached connection to `host` (e.g. after a reboot).
    pub fn forget(&self, host: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(host);
    }

    /// Close every connection.
    pub async fn close_all(&self) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for slot in slots {
            if let Some(s) = slot.lock().await.take() {
                s.close().await;
            }
        }
        if let Some(b) = self.bastion.lock().await.take() {
            b.close().await;
        }
    }
}

/// A new random ed25519 key pair (e.g. the cluster's SSH key, or a test's).
pub fn generate_ed25519_key() -> PrivateKey {
    let seed: [u8; 32] = rand::random();
    PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
        &seed,
    ))
}

/// The OpenSSH private key file text of `key` (unencrypted), and its public key line.
pub fn encode_key(key: &PrivateKey) -> Result<(String, String), russh::keys::ssh_key::Error> {
    let private = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)?
        .to_string();
    let public = key.public_key().to_openssh()?;
    Ok((private, public))
}

/// The remote side of an upload: stdin into a temp file next to the target, size
/// check (a cut connection leaves a short file), mode/owner, then an atomic rename.
/// `mv -T` refuses to move into a directory that sits at the target path.
/// What is at `path` now, in one round trip: `size mode owner:group` and, when the size
/// is `size`, its sha256, from the digest cache when the file's id still matches the
/// entry, else hashed (and the entry written).
/// A script that runs side-effect-free `commands` one after another and prints, for
/// each, a line with its exit code (read by [`parse_checks`]); it always exits 0.
pub fn checks_script(commands: &[String]) -> String {
    let mut script = String::new();
    for c in commands {
        script.push_str(&format!(
            "( {c} ) </dev/null >/dev/null 2>&1; echo \"{CHECK_MARK} $?\"; "
        ));
    }
    script.push_str("true");
    script
}

/// Whether each of `n` checks of [`checks_script`] exited 0, from its output (other
/// lines in it are ignored).
pub fn parse_checks(host: &str, out: &ExecOutput, n: usize) -> Result<Vec<bool>, TransportError> {
    let codes: Vec<bool> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix(CHECK_MARK))
        .map(|c| c.trim() == "0")
        .collect();
    if codes.len() != n {
        return Err(TransportError::Upload {
            host: host.to_string(),
            path: "(checks)".into(),
            detail: format!(
                "{} of {n} checks answered: {}",
                codes.len(),
                out.stderr.trim()
            ),
        });
    }
    Ok(codes)
}

fn probe_script(path: &str, size: u64, cache_dir: &str) -> String {
    let p = quote(path);
    let entry = quote(&digest_entry(cache_dir, path));
    let dir = quote(cache_dir);
    format!(
        "if [ -f {p} ]; then set -- $(stat -c '%s %a %U:%G' {p}); echo \"$1 $2 $3\"; \
         if [ \"$1\" = {size} ]; then id=$({STAT_ID} {p}); cid=; csha=; \
         [ -r {entry} ] && read -r cid csha < {entry}; \
         if [ -n \"$csha\" ] && [ \"$cid\" = \"$id\" ]; then echo \"$csha\"; \
         else h=$(sha256sum {p} | cut -d' ' -f1); echo \"$h\"; \
         {{ mkdir -p -m 700 {dir} && echo \"$id $h\" > {entry}.$$ && mv -f {entry}.$$ {entry}; }} 2>/dev/null || true; fi; fi; fi"
    )
}

/// Receive `size` bytes on stdin into a temp file next to the target, check the size,
/// set mode and owner, rename over the target, then record its digest (`sha256`, what
/// was sent) in the cache so the next probe does not read it back.
fn upload_script(target: &UploadTarget, size: u64, sha256: &str, cache_dir: &str) -> String {
    let path = quote(&target.path);
    let mode = format!("{:o}", target.mode);
    let chown = match &target.owner {
        Some(o) => format!("chown {} \"$t\"", quote(o)),
        None => ":".into(),
    };
    let entry = quote(&digest_entry(cache_dir, &target.path));
    let dir = quote(cache_dir);
    format!(
        "set -e; p={path}; d=$(dirname \"$p\"); mkdir -p \"$d\"; \
         t=$(mktemp \"$d/.kubeforge-upload.XXXXXX\"); trap 'rm -f \"$t\"' EXIT; \
         cat > \"$t\"; s=$(stat -c %s \"$t\"); \
         if [ \"$s\" != {size} ]; then echo \"incomplete: $s of {size} bytes arrived\" >&2; exit 97; fi; \
         chmod {mode} \"$t\"; {chown}; mv -fT \"$t\" \"$p\"; trap - EXIT; \
         {{ mkdir -p -m 700 {dir} && echo \"$({STAT_ID} \"$p\") {sha256}\" > {entry}.$$ && mv -f {entry}.$$ {entry}; }} 2>/dev/null || true"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn run_script(script: &str, input: &[u8]) -> std::process::Output {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn upload_script_renames_only_complete_content_and_leaves_no_temp_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = cache_dir.path().join("digests").display().to_string();
        let target_path = dir.path().join("sub dir/it's.conf");
        let target = UploadTarget::new(target_path.to_str().unwrap(), 0o640);
        // Short input (connection cut): error, nothing renamed, no temp file left.
        let out = run_script(&upload_script(&target, 10, SHA_X, &cache), b"12345");
        assert_eq!(out.status.code(), Some(97));
        assert!(String::from_utf8_lossy(&out.stderr).contains("incomplete: 5 of 10"));
        assert!(!target_path.exists());
        assert_eq!(
            std::fs::read_dir(target_path.parent().unwrap())
                .unwrap()
                .count(),
            0
        );
        // Complete input: renamed into place with the mode.
        let out = run_script(&upload_script(&target, 10, SHA_X, &cache), b"0123456789");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read(&target_path).unwrap(), b"0123456789");
        let mode = std::fs::metadata(&target_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read_dir(target_path.parent().unwrap())
                .unwrap()
                .count(),
            1
        );
        // A directory at the target is refused, and cleaned up after.
        let d = dir.path().join("adir");
        std::fs::create_dir_all(d.join("x")).unwrap();
        let t = UploadTarget::new(d.to_str().unwrap(), 0o644);
        let out = run_script(&upload_script(&t, 1, SHA_X, &cache), b"x");
        assert!(!out.status.success());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    const SHA_X: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn sha_hex(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn the_probe_trusts_the_digest_cache_only_while_the_file_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("digests").display().to_string();
        let path = dir.path().join("bin/kubelet");
        let p = path.to_str().unwrap();
        let probe = |size: u64| {
            let out = run_script(&probe_script(p, size, &cache), b"");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        assert_eq!(probe(10), "", "no file: nothing");
        // Uploaded: the entry records what was sent (a marker digest, so the probe
        // shows whether it read the cache or the file).
        let target = UploadTarget::new(p, 0o755);
        let out = run_script(&upload_script(&target, 10, SHA_X, &cache), b"0123456789");
        assert!(out.status.success(), "{out:?}");
        let lines = probe(10);
        let mut l = lines.lines();
        assert!(l.next().unwrap().starts_with("10 755 "), "{lines}");
        assert_eq!(l.next(), Some(SHA_X), "read from the cache: {lines}");
        // Another size: only the metadata, nothing hashed.
        assert_eq!(probe(11).lines().count(), 1);
        // Changed in place with the same size, then its mtime put back: the ctime
        // moved, so the file is hashed again and the entry replaced.
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"abcdefghij").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(before)
            .unwrap();
        let real = sha_hex(b"abcdefghij");
        assert_eq!(probe(10).lines().nth(1), Some(real.as_str()));
        // ... and that entry is used from now on (same answer, no rehash needed).
        let entry = digest_entry(&cache, p);
        let text = std::fs::read_to_string(&entry).unwrap();
        assert!(text.trim_end().ends_with(&real), "{text}");
        assert_eq!(probe(10).lines().nth(1), Some(real.as_str()));
        // A cache that cannot be written (a file where its directory should be) does
        // not fail the probe.
        let blocked = dir.path().join("blocked").display().to_string();
        std::fs::write(&blocked, b"").unwrap();
        let out = run_script(&probe_script(p, 10, &blocked), b"");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().nth(1),
            Some(real.as_str())
        );
    }
}
