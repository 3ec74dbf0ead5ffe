//! Connections kept between runs: what OpenSSH's `ControlMaster`/`ControlPersist` does.
//!
//! A run's pool ([`super::SshPool`]) asks a background `kubeforge ssh-mux` process for a
//! host's connection before it makes one itself. That process (started on first use,
//! detached, one per SSH configuration) keeps each host's authenticated connection open
//! until it has served nothing for `spec.ssh.persistSeconds`, so the next run within that
//! time opens channels on it instead of paying for sshd's start, the key exchange, the
//! authentication and the PAM session again.
//!
//! What keeps it safe:
//! - Its socket lives in a directory only the user can enter (`$XDG_RUNTIME_DIR/kubeforge`
//!   or `/tmp/kubeforge-<uid>`, mode 0700, owned by the user, not a link; anything else
//!   and no mux is used), and every connection to it is checked to come from the same
//!   user (`SO_PEERCRED`), as OpenSSH's control sockets.
//! - The private key reaches it on a pipe (its stdin), never on a command line or disk.
//! - Every request names the host key the client has pinned for the host. The mux only
//!   serves a connection made with that exact key (a new connection accepts that key and
//!   no other); on any mismatch the client connects itself and reports as before.
//! - It never pins a key, never goes through a bastion, and never serves a host the run
//!   re-pins (`--accept-new-host-key`): those runs connect themselves.
//! - Until a command is sent, any failure of the mux means the client connects itself;
//!   once it was sent, a lost mux is a lost connection (the command is not run twice).
//!
//! The wire: frames of `[type: u8][length: u32 BE][payload]` on one unix stream per
//! request. A request is one frame (`A` attach, `E` exec, `T` TCP forward) with JSON;
//! the answer `K` (ready) or `U` (unavailable, with why). Then, for an exec: `I` stdin
//! data and `Z` its end from the client; `O` stdout, `R` stderr, `X` exit status (u32
//! BE), `S` exit signal from the mux, which closes the stream when the channel ends. A
//! TCP forward carries raw bytes after `K`.

use super::hostkeys::MemoryHostKeyStore;
use super::ssh::{HostOverride, Said, SshAuth, SshConfig, SshSession};
use russh::keys::PrivateKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Bumped whenever the wire or the configuration handed over changes: a mux of another
/// version has another socket.
const PROTOCOL: u32 = 1;
/// Largest frame accepted (a stdin chunk is 512 KiB).
const MAX_FRAME: usize = 4 << 20;
/// How long the mux waits for a channel on a connection it holds before it answers
/// "unavailable" (a dead peer never answers).
const CHANNEL_OPEN_LIMIT: Duration = Duration::from_secs(3);
/// How long an attach waits for a held connection's answer to a ping.
const PING_LIMIT: Duration = Duration::from_secs(2);
/// The longest the mux tries to make a new connection (it tries once; the client,
/// when it fails, connects itself with its retries).
const MUX_CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// After a host failed it (a machine gone, rebooting), the mux leaves connecting to it
/// to the runs this long: a run does not wait for the mux's attempt and then its own.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

pub(super) const ATTACH: u8 = b'A';
pub(super) const EXEC: u8 = b'E';
pub(super) const TCPIP: u8 = b'T';
pub(super) const READY: u8 = b'K';
pub(super) const UNAVAILABLE: u8 = b'U';
pub(super) const STDIN: u8 = b'I';
pub(super) const STDIN_END: u8 = b'Z';
pub(super) const STDOUT: u8 = b'O';
pub(super) const STDERR: u8 = b'R';
pub(super) const EXIT_STATUS: u8 = b'X';
pub(super) const EXIT_SIGNAL: u8 = b'S';

pub(super) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// The next frame; `None` at the end of the stream (or a cut or oversized frame).
pub(super) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    Some((head[0], payload))
}

/// How to authenticate, as handed to the mux.
#[derive(Serialize, Deserialize)]
enum WireAuth {
    /// The private key, OpenSSH format.
    Key(String),
    Agent(Option<String>),
}

impl WireAuth {
    fn of(auth: &SshAuth) -> Option<WireAuth> {
        Some(match auth {
            SshAuth::Key(k) => WireAuth::Key(
                k.to_openssh(russh::keys::ssh_key::LineEnding::LF)
                    .ok()?
                    .to_string(),
            ),
            SshAuth::Agent(only) => WireAuth::Agent(only.clone()),
        })
    }

    fn auth(&self) -> Result<SshAuth, String> {
        Ok(match self {
            WireAuth::Key(text) => SshAuth::Key(Arc::new(
                PrivateKey::from_openssh(text).map_err(|e| format!("private key: {e}"))?,
            )),
            WireAuth::Agent(only) => SshAuth::Agent(only.clone()),
        })
    }
}

/// Who the configuration authenticates as, without the secret: what names the socket.
fn identity(auth: &SshAuth) -> String {
    match auth {
        SshAuth::Key(k) => k.public_key().fingerprint(Default::default()).to_string(),
        SshAuth::Agent(only) => format!(
            "agent {} {:?}",
            std::env::var("SSH_AUTH_SOCK").unwrap_or_default(),
            only
        ),
    }
}

/// A host's own user, port and authentication.
type WireOverride = (Option<String>, Option<u16>, Option<WireAuth>);

/// The SSH settings the mux connects with (the run's, less what it never does).
#[derive(Serialize, Deserialize)]
struct MuxConfig {
    protocol: u32,
    user: String,
    port: u16,
    auth: WireAuth,
    per_host: BTreeMap<String, WireOverride>,
    connect_timeout_ms: u64,
    keepalive_ms: Option<u64>,
    max_channels: usize,
    idle_ms: u64,
}

impl MuxConfig {
    /// What `cfg` hands to a mux keeping connections `idle`; None when a key cannot be
    /// written out.
    fn of(cfg: &SshConfig, idle: Duration) -> Option<MuxConfig> {
        Some(MuxConfig {
            protocol: PROTOCOL,
            user: cfg.user.clone(),
            port: cfg.port,
            auth: WireAuth::of(&cfg.auth)?,
            per_host: cfg
                .per_host
                .iter()
                .map(|(h, o)| {
                    let auth = match &o.auth {
                        Some(a) => Some(WireAuth::of(a)?),
                        None => None,
                    };
                    Some((h.clone(), (o.user.clone(), o.port, auth)))
                })
                .collect::<Option<_>>()?,
            connect_timeout_ms: cfg.connect_timeout.as_millis() as u64,
            keepalive_ms: cfg.keepalive_interval.map(|d| d.as_millis() as u64),
            max_channels: cfg.max_channels,
            idle_ms: idle.as_millis() as u64,
        })
    }

    fn ssh_config(&self) -> Result<SshConfig, String> {
        let mut cfg = SshConfig::new(self.user.clone(), self.auth.auth()?);
        cfg.port = self.port;
        cfg.connect_timeout = Duration::from_millis(self.connect_timeout_ms).min(MUX_CONNECT_LIMIT);
        cfg.keepalive_interval = self.keepalive_ms.map(Duration::from_millis);
        cfg.max_channels = self.max_channels;
        cfg.retry.window = Duration::ZERO;
        cfg.retry.auth_window = Duration::ZERO;
        // The mux runs no command itself: the client bounds each one.
        cfg.command_timeout = None;
        cfg.long_command_timeout = None;
        for (host, (user, port, auth)) in &self.per_host {
            cfg.per_host.insert(
                host.clone(),
                HostOverride {
                    user: user.clone(),
                    port: *port,
                    auth: auth.as_ref().map(WireAuth::auth).transpose()?,
                },
            );
        }
        Ok(cfg)
    }
}

/// The directory of the control sockets: `$XDG_RUNTIME_DIR/kubeforge`, else
/// `/tmp/kubeforge-<uid>`.
fn socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() && Path::new(&d).is_dir() => {
            PathBuf::from(d).join("kubeforge")
        }
        _ => std::env::temp_dir().join(format!("kubeforge-{}", euid())),
    }
}

/// Create `dir` 0700 when missing, then make sure it is a directory of this user that
/// only this user can enter (not a link, nobody else's).
fn private_dir(dir: &Path) -> Result<(), String> {
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(format!("{}: {e}", dir.display()));
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != euid() || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{}: not a directory only this user can enter",
            dir.display()
        ));
    }
    Ok(())
}

/// This process's effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Take `file`'s exclusive lock without waiting; false when another process holds it.
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows open for the whole call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A run's way to the mux of its SSH configuration.
pub struct MuxClient {
    socket: PathBuf,
    /// What the mux this client starts connects with (handed over only then).
    cfg: SshConfig,
    idle: Duration,
    started: tokio::sync::OnceCell<bool>,
}

impl std::fmt::Debug for MuxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxClient")
            .field("socket", &self.socket)
            .finish()
    }
}

impl MuxClient {
    /// The mux for `cfg`, keeping connections `idle` after their last use; `None` when
    /// there is nothing to keep (`idle` zero, a bastion). Nothing is touched until a
    /// connection is asked for.
    pub fn new(cfg: &SshConfig, idle: Duration) -> Option<MuxClient> {
        if idle.is_zero() || cfg.bastion.is_some() {
            return None;
        }
        let mut name = Sha256::new();
        name.update(format!(
            "{PROTOCOL} {} {} {} {} {} {:?} {:?} {} {}\n",
            env!("CARGO_PKG_VERSION"),
            euid(),
            cfg.user,
            cfg.port,
            identity(&cfg.auth),
            cfg.keepalive_interval.map(|d| d.as_millis()),
            cfg.connect_timeout.as_millis(),
            cfg.max_channels,
            idle.as_millis(),
        ));
        for (h, o) in &cfg.per_host {
            name.update(format!(
                "{h} {:?} {:?} {:?}\n",
                o.user,
                o.port,
                o.auth.as_ref().map(identity)
            ));
        }
        let socket = socket_dir().join(format!("{}.sock", &hex::encode(name.finalize())[..24]));
        Some(MuxClient {
            socket,
            cfg: cfg.clone(),
            idle,
            started: Default::default(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether a mux answers, starting one (once per process) when none does.
    async fn ready(&self) -> bool {
        *self
            .started
            .get_or_init(|| async {
                let dir = self.socket.parent().unwrap_or(Path::new("/"));
                if let Err(e) = private_dir(dir) {
                    tracing::warn!("not keeping connections: the control socket's directory {e}");
                    return false;
                }
                if UnixStream::connect(&self.socket).await.is_ok() {
                    return true;
                }
                if let Err(e) = self.spawn().await {
                    tracing::debug!(error = %e, "could not start the connection keeper");
                    return false;
                }
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until {
                    if UnixStream::connect(&self.socket).await.is_ok() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tracing::debug!("the connection keeper did not come up");
                false
            })
            .await
    }

    async fn spawn(&self) -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        // Only the kubeforge binary serves `ssh-mux` (a program linking the library,
        // e.g. a test, would take the arguments for its own).
        let named = exe
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("kubeforge"));
        if !named {
            return Err(std::io::Error::other(format!(
                "{} is not the kubeforge binary",
                exe.display()
            )));
        }
        let config = MuxConfig::of(&self.cfg, self.idle)
            .and_then(|mc| serde_json::to_vec(&mc).ok())
            .ok_or_else(|| std::io::Error::other("the SSH key cannot be handed over"))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("ssh-mux")
            .arg("--socket")
            .arg(&self.socket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group: Ctrl-C on the run does not stop it.
            .process_group(0)
            // Nothing of the run's environment (state passphrases, cloud tokens) but
            // the agent it may authenticate with; no hold on the run's directory.
            .env_clear()
            .current_dir("/");
        if let Some(agent) = std::env::var_os("SSH_AUTH_SOCK") {
            cmd.env("SSH_AUTH_SOCK", agent);
        }
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(&config)?;
        }
        // Not waited for: it outlives this process (and is reaped by init).
        drop(child);
        Ok(())
    }

    /// Send a request; the stream once the mux answered ready, else why not.
    async fn request(&self, kind: u8, body: &Request<'_>) -> Result<UnixStream, String> {
        if !self.ready().await {
            return Err("no connection keeper".into());
        }
        let mut s = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("control socket: {e}"))?;
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        write_frame(&mut s, kind, &body)
            .await
            .map_err(|e| format!("control socket: {e}"))?;
        let limit = MUX_CONNECT_LIMIT + PING_LIMIT + CHANNEL_OPEN_LIMIT;
        match tokio::time::timeout(limit, read_frame(&mut s)).await {
            Ok(Some((READY, _))) => Ok(s),
            Ok(Some((UNAVAILABLE, why))) => Err(String::from_utf8_lossy(&why).into_owned()),
            Ok(_) => Err("the connection keeper closed the request".into()),
            Err(_) => Err("the connection keeper did not answer".into()),
        }
    }

    /// Make sure the mux holds a live connection to `host` made with `host_key`.
    pub async fn attach(&self, host: &str, host_key: &str) -> Result<(), String> {
        self.request(
            ATTACH,
            &Request {
                host,
                host_key,
                ..Default::default()
            },
        )
        .await
        .map(drop)
    }

    /// A channel running `wire` on `host` (after [`MuxClient::attach`]).
    pub async fn exec(&self, host: &str, host_key: &str, wire: &str) -> Result<UnixStream, String> {
        self.request(
            EXEC,
            &Request {
                host,
                host_key,
                wire,
                ..Default::default()
            },
        )
        .await
    }

    /// A TCP connection from `host` to `target:port`.
    pub async fn tcpip(
        &self,
        host: &str,
        host_key: &str,
        target: &str,
        port: u16,
    ) -> Result<UnixStream, String> {
        self.request(
            TCPIP,
            &Request {
                host,
                host_key,
                target,
                port,
                ..Default::default()
            },
        )
        .await
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Request<'a> {
    host: &'a str,
    host_key: &'a str,
    #[serde(default)]
    wire: &'a str,
    #[serde(default)]
    target: &'a str,
    #[serde(default)]
    port: u16,
}

#[derive(Deserialize)]
struct OwnedRequest {
    host: String,
    host_key: String,
    #[serde(default)]
    wire: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    port: u16,
}

type Held = Arc<tokio::sync::Mutex<Option<(Arc<SshSession>, String)>>>;

struct Server {
    cfg: SshConfig,
    hosts: std::sync::Mutex<HashMap<String, Held>>,
    /// When connecting to a host (or a held connection's ping) last failed.
    failures: std::sync::Mutex<HashMap<String, Instant>>,
    active: AtomicUsize,
    last: std::sync::Mutex<Instant>,
}

/// Counts a request as active while it lives.
struct Active<'a>(&'a Server);

impl<'a> Active<'a> {
    fn new(s: &'a Server) -> Self {
        s.active.fetch_add(1, Ordering::SeqCst);
        Active(s)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    /// The held connection to `host` made with `host_key`, made now when there is none
    /// (or it is gone, or made with another key). `ping`: check a held one answers.
    async fn session(
        &self,
        host: &str,
        host_key: &str,
        ping: bool,
    ) -> Result<Arc<SshSession>, String> {
        let slot = self
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        if let Some((s, key)) = held.as_ref() {
            if key == host_key && !s.is_closed() {
                if !ping || s.ping(PING_LIMIT).await {
                    return Ok(s.clone());
                }
                // A peer that went silent (a machine removed) is likely gone: the run
                // connects itself, with its own retries and errors.
                if let Some((old, _)) = held.take() {
                    old.close().await;
                }
                self.failed(host);
                return Err("the kept connection did not answer".into());
            }
        }
        if let Some((old, _)) = held.take() {
            old.close().await;
        }
        if let Some(at) = self.failures_at(host) {
            if at.elapsed() < RETRY_AFTER_FAILURE {
                return Err("connecting failed moments ago".into());
            }
        }
        let mut keys = BTreeMap::new();
        keys.insert(host.to_string(), host_key.to_string());
        let store = Arc::new(MemoryHostKeyStore::from_map(keys));
        let s = match SshSession::connect(host, &self.cfg.for_host(host), store, None).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.failed(host);
                return Err(crate::error::render_chain(&e));
            }
        };
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(host);
        *held = Some((s.clone(), host_key.to_string()));
        Ok(s)
    }

    fn failed(&self, host: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string(), Instant::now());
    }

    fn failures_at(&self, host: &str) -> Option<Instant> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .copied()
    }

    async fn handle(&self, mut conn: UnixStream) {
        let _active = Active::new(self);
        let Some((kind, body)) = read_frame(&mut conn).await else {
            return;
        };
        let Ok(req) = serde_json::from_slice::<OwnedRequest>(&body) else {
            let _ = write_frame(&mut conn, UNAVAILABLE, b"unreadable request").await;
            return;
        };
        let session = match self.session(&req.host, &req.host_key, kind == ATTACH).await {
            Ok(s) => s,
            Err(e) => {
                let _ = write_frame(&mut conn, UNAVAILABLE, e.as_bytes()).await;
                return;
            }
        };
        match kind {
            ATTACH => {
                let _ = write_frame(&mut conn, READY, b"").await;
            }
            EXEC => serve_exec(&session, conn, &req.wire).await,
            TCPIP => {
                let opened = tokio::time::timeout(
                    CHANNEL_OPEN_LIMIT,
                    session.direct_tcpip(&req.target, req.port),
                )
                .await;
                match opened {
                    Ok(Ok(mut remote)) => {
                        if write_frame(&mut conn, READY, b"").await.is_ok() {
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut remote).await;
                        }
                    }
                    Ok(Err(e)) => {
                        let why = crate::error::render_chain(&e);
                        let _ = write_frame(&mut conn, UNAVAILABLE, why.as_bytes()).await;
                    }
                    Err(_) => {
                        let _ = write_frame(&mut conn, UNAVAILABLE, b"no channel in time").await;
                    }
                }
            }
            _ => {
                let _ = write_frame(&mut conn, UNAVAILABLE, b"unknown request").await;
            }
        }
    }
}

/// Run `wire` on a new channel of `session`, relaying stdin, output and the exit.
async fn serve_exec(session: &SshSession, mut conn: UnixStream, wire: &str) {
    let opened = tokio::time::timeout(CHANNEL_OPEN_LIMIT, session.open_channel()).await;
    let (_permit, channel) = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let why = crate::error::render_chain(&e);
            let _ = write_frame(&mut conn, UNAVAILABLE, why.as_bytes()).await;
            return;
        }
        Err(_) => {
            let _ = write_frame(&mut conn, UNAVAILABLE, b"no channel in time").await;
            return;
        }
    };
    // Ready before the command is sent: after this the client never runs it elsewhere.
    if write_frame(&mut conn, READY, b"").await.is_err() {
        let _ = channel.close().await;
        return;
    }
    if channel.exec(true, wire).await.is_err() {
        // The stream ends without an exit: the client reports a lost connection.
        return;
    }
    let (mut from_client, mut to_client) = conn.into_split();
    let (mut read, write) = channel.split();
    // Ok(()) once stdin ended; Err when the client went away (it gave up: the channel is
    // closed, so the remote command sees its end).
    let feed = async {
        loop {
            match read_frame(&mut from_client).await {
                Some((STDIN, data)) => {
                    if write.data_bytes(bytes::Bytes::from(data)).await.is_err() {
                        return Ok(());
                    }
                }
                Some((STDIN_END, _)) => {
                    let _ = write.eof().await;
                    return Ok(());
                }
                _ => return Err(()),
            }
        }
    };
    let relay = async {
        while let Some(msg) = read.wait().await {
            let sent = match Said::from(msg) {
                Said::Stdout(data) => write_frame(&mut to_client, STDOUT, &data).await,
                Said::Stderr(data) => write_frame(&mut to_client, STDERR, &data).await,
                Said::Status(code) => {
                    write_frame(&mut to_client, EXIT_STATUS, &code.to_be_bytes()).await
                }
                Said::Signal(name) => {
                    write_frame(&mut to_client, EXIT_SIGNAL, name.as_bytes()).await
                }
                Said::Other => Ok(()),
            };
            if sent.is_err() {
                return false;
            }
        }
        true
    };
    tokio::pin!(feed, relay);
    tokio::select! {
        fed = &mut feed => match fed {
            Ok(()) => {
                if !relay.await {
                    let _ = write.close().await;
                }
            }
            Err(()) => {
                let _ = write.close().await;
            }
        },
        done = &mut relay => {
            if !done {
                let _ = write.close().await;
            }
        }
    }
}

/// `kubeforge ssh-mux --socket PATH`: the configuration on stdin, then serve until idle.
pub async fn serve(socket: &Path) -> Result<(), String> {
    let mut input = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut input)
        .await
        .map_err(|e| format!("reading the configuration: {e}"))?;
    let mc: MuxConfig =
        serde_json::from_slice(&input).map_err(|e| format!("the configuration: {e}"))?;
    if mc.protocol != PROTOCOL {
        return Err(format!("protocol {} (this is {PROTOCOL})", mc.protocol));
    }
    let cfg = mc.ssh_config()?;
    let idle = Duration::from_millis(mc.idle_ms);
    let dir = socket
        .parent()
        .ok_or_else(|| "the socket has no directory".to_string())?;
    private_dir(dir)?;
    // One mux per socket: whoever holds the lock serves, a second one leaves.
    let lock_path = socket.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    if !try_lock(&lock) {
        return Ok(());
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        tokio::net::UnixListener::bind(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600));
    let uid = euid();
    let server = Arc::new(Server {
        cfg,
        hosts: Default::default(),
        failures: Default::default(),
        active: AtomicUsize::new(0),
        last: std::sync::Mutex::new(Instant::now()),
    });
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else {
                    // Out of descriptors, say: a moment, not a busy loop.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                match conn.peer_cred() {
                    Ok(c) if c.uid() == uid => {}
                    _ => continue,
                }
                let server = server.clone();
                tokio::spawn(async move { server.handle(conn).await });
            }
            _ = tick.tick() => {
                let idle_for = server.last.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                if server.active.load(Ordering::SeqCst) == 0 && idle_for >= idle {
                    break;
                }
            }
        }
    }
    // Unlink while still holding the lock: a new mux cannot have bound it yet.
    let _ = std::fs::remove_file(socket);
    let held: Vec<Held> = server
        .hosts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, h)| h)
        .collect();
    for h in held {
        if let Some((s, _)) = h.lock().await.take() {
            s.close().await;
        }
    }
    drop(lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_back_as_written_and_a_cut_one_ends_the_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, STDOUT, b"hello").await.unwrap();
        write_frame(&mut a, EXIT_STATUS, &7u32.to_be_bytes())
            .await
            .unwrap();
        a.write_all(&[STDERR, 0, 0, 0, 9, b'x']).await.unwrap();
        drop(a);
        assert_eq!(read_frame(&mut b).await, Some((STDOUT, b"hello".to_vec())));
        assert_eq!(
            read_frame(&mut b).await,
            Some((EXIT_STATUS, 7u32.to_be_bytes().to_vec()))
        );
        assert_eq!(read_frame(&mut b).await, None);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[STDIN, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
        assert_eq!(read_frame(&mut b).await, None);
    }

    #[test]
    fn the_socket_is_named_by_the_configuration_never_by_the_secret() {
        let key = super::super::ssh::generate_ed25519_key();
        let cfg = SshConfig::new("root", SshAuth::Key(Arc::new(key.clone())));
        let a = MuxClient::new(&cfg, Duration::from_secs(60)).unwrap();
        let b = MuxClient::new(&cfg, Duration::from_secs(60)).unwrap();
        assert_eq!(a.socket(), b.socket());
        let mut other = cfg.clone();
        other.user = "admin".into();
        let c = MuxClient::new(&other, Duration::from_secs(60)).unwrap();
        assert_ne!(a.socket(), c.socket());
        let (private, _) = super::super::ssh::encode_key(&key).unwrap();
        assert!(!a.socket().to_string_lossy().contains(&private));
        private_dir(a.socket().parent().unwrap()).unwrap();
        let meta = std::fs::symlink_metadata(a.socket().parent().unwrap()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        // Nothing kept when asked for nothing, or through a bastion.
        assert!(MuxClient::new(&cfg, Duration::ZERO).is_none());
    }
}
