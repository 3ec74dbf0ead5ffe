//! A session: everything a command that works on a cluster holds while it runs — the
//! cluster file, the state store and (for commands that change anything) its lock,
//! refreshed while the session lasts and released on every exit path including Ctrl-C;
//! the state handle; the SSH pool with the pinned host keys (keys learned on any path
//! are recorded when the session closes); the provider; and one SSH tunnel to the API.
//! Commands open one with [`with_session`] and never write their own lock sequence.

use crate::error::Error;
use crate::output::OutputFormat;
use crate::phase;
use crate::phase::exec::Runtime;
use crate::render::Secrets;
use crate::spec::{self, LoadedCluster};
use crate::state::{LockGuard, StateDocument, StateError, StateHandle, StateStore};
use crate::transport::{MemoryHostKeyStore, ProgressMode, SshAuth, SshConfig, SshPool};
use std::future::Future;
use std::io::IsTerminal;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How a command uses its session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Take the state lock (every command that changes the cluster or its state).
    pub lock: bool,
    /// Generate the cluster's own secrets when missing (bootstrap token, certificate
    /// key, the docker provider's SSH key): needs the lock and a state key.
    pub ensure_secrets: bool,
    /// Open the machine provider (contacts the docker engine; clouds only when called).
    pub provider: bool,
    /// One connection attempt per host (plans report a host that does not answer, they
    /// do not wait for it to boot).
    pub single_attempt: bool,
    /// Hosts (addresses) whose changed host key is accepted on purpose.
    pub accept_new_host_keys: Vec<String>,
    pub concurrency: usize,
    pub output: OutputFormat,
    pub verbose: bool,
    /// Work with this Kubernetes version instead of the cluster file's (`upgrade --to`).
    pub kubernetes_version: Option<String>,
}

impl SessionOptions {
    /// A read-only session: no lock, one attempt per host.
    pub fn read_only(output: OutputFormat) -> Self {
        SessionOptions {
            lock: false,
            ensure_secrets: false,
            provider: false,
            single_attempt: true,
            accept_new_host_keys: Vec::new(),
            concurrency: 10,
            output,
            verbose: false,
            kubernetes_version: None,
        }
    }

    /// A session that changes the cluster: the state lock is held throughout.
    pub fn locked(output: OutputFormat) -> Self {
        SessionOptions {
            lock: true,
            single_attempt: false,
            ..Self::read_only(output)
        }
    }
}

/// See the module documentation.
pub struct Session {
    pub cluster: LoadedCluster,
    pub state: StateHandle,
    pub opts: SessionOptions,
    /// SSH to the hosts; `Err` when the cluster has no login key yet (a fresh state).
    ssh: Result<Runtime, String>,
    pub provider: Option<Box<dyn crate::provider::Provider>>,
    lock: Option<Arc<LockGuard>>,
}

type BodyFuture<'s, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + 's>>;

/// Open a session on the cluster file `file`, run `body` with it, close it (host keys
/// recorded, journal flushed, connections closed) and release the lock, whatever
/// happened, Ctrl-C included.
pub async fn with_session<T>(
    file: &Path,
    opts: SessionOptions,
    body: impl for<'s> FnOnce(&'s Session) -> BodyFuture<'s, T>,
) -> Result<T, Error> {
    let cluster = spec::load_file(file)?;
    crate::ops::validate::print_warnings(&cluster.warnings, opts.output);
    let store = open_store(&cluster)?;
    run(cluster, store, None, opts, body).await
}

/// [`with_session`] for a read-only command that loaded the cluster file and read the
/// state already (to choose what to do): the session starts from them instead of
/// reading both again (~5 ms of every `plan`). Without a lock, a state read a moment
/// earlier is as current as one read now. A session with `opts.lock` reads it again.
pub async fn with_loaded_session<T>(
    cluster: LoadedCluster,
    store: StateStore,
    state: (StateDocument, crate::state::Version),
    opts: SessionOptions,
    body: impl for<'s> FnOnce(&'s Session) -> BodyFuture<'s, T>,
) -> Result<T, Error> {
    let state = (!opts.lock).then_some(state);
    run(cluster, store, state, opts, body).await
}

async fn run<T>(
    mut cluster: LoadedCluster,
    store: StateStore,
    state: Option<(StateDocument, crate::state::Version)>,
    opts: SessionOptions,
    body: impl for<'s> FnOnce(&'s Session) -> BodyFuture<'s, T>,
) -> Result<T, Error> {
    if let Some(v) = &opts.kubernetes_version {
        cluster.cluster.spec.kubernetes_version = v.clone();
    }
    // The lock stays owned here (the session holds a reference), so that it is released
    // below on every path, Ctrl-C included (the session's future is dropped then).
    let lock = if opts.lock {
        Some(Arc::new(store.lock(&command_line()).await?))
    } else {
        None
    };
    let session_lock = lock.clone();
    let result = crate::state::until_ctrl_c(async move {
        let session = Session::open(cluster, store, state, opts, session_lock).await?;
        let out = body(&session).await;
        let closed = session.close().await;
        let out = out?;
        closed?;
        Ok::<T, Error>(out)
    })
    .await;
    let released = match lock.map(Arc::try_unwrap) {
        Some(Ok(l)) => l.release().await.map_err(Error::from),
        // Still shared: cannot happen once the session is gone; its drop releases it.
        Some(Err(_)) => Ok(()),
        None => Ok(()),
    };
    let v = result??;
    released?;
    Ok(v)
}

impl Session {
    async fn open(
        cluster: LoadedCluster,
        store: StateStore,
        state: Option<(StateDocument, crate::state::Version)>,
        opts: SessionOptions,
        lock: Option<Arc<LockGuard>>,
    ) -> Result<Session, Error> {
        let mut session = Session {
            cluster,
            state: StateHandle::new(
                store.clone(),
                StateDocument::default(),
                crate::state::Version::absent(),
            ),
            opts,
            ssh: Err("not connected".into()),
            provider: None,
            lock,
        };
        session.init(store, state).await?;
        Ok(session)
    }

    async fn init(
        &mut self,
        store: StateStore,
        state: Option<(StateDocument, crate::state::Version)>,
    ) -> Result<(), Error> {
        let cluster = &self.cluster;
        let opts = &self.opts;
        let (doc, version) = match state {
            Some(loaded) => loaded,
            None => store.load_or_new().await?,
        };
        if opts.ensure_secrets && !store.has_key() {
            return Err(Error::Usage(
                "the state will hold secrets (join token, certificate key, kubeconfig): give it an encryption key \
(spec.state.encryption, or KUBEFORGE_STATE_KEY_FILE / KUBEFORGE_STATE_PASSPHRASE; \
`kubeforge state keygen --out FILE` makes one)"
                    .into(),
            ));
        }
        let state = StateHandle::new(store, doc, version);
        if opts.ensure_secrets {
            ensure_secrets(cluster, &state).await?;
        }
        let doc = state.get().await;
        cluster.topology.pod_cidr_pins.pin(
            doc.pod_cidrs
                .iter()
                .filter_map(|(n, c)| Some((n.clone(), c.parse().ok()?))),
        );
        let auth = ssh_auth(cluster, &doc);
        let ssh = match &auth {
            Ok(auth) => {
                let host_keys = Arc::new(MemoryHostKeyStore::from_map(doc.host_keys.clone()));
                let mut cfg = ssh_config(cluster, auth.clone(), &opts.accept_new_host_keys)?;
                if opts.single_attempt {
                    cfg.retry.window = Duration::ZERO;
                    cfg.retry.auth_window = Duration::ZERO;
                }
                Ok(Runtime {
                    pool: Arc::new(SshPool::new(cfg, host_keys.clone()).keep_connections(
                        Duration::from_secs(cluster.cluster.spec.ssh.persist_seconds.into()),
                    )),
                    host_keys,
                    concurrency: opts.concurrency.max(1),
                    progress: if opts.output == OutputFormat::Json
                        || !std::io::stderr().is_terminal()
                    {
                        ProgressMode::Hidden
                    } else {
                        ProgressMode::Auto
                    },
                    verbose: opts.verbose,
                    api: Default::default(),
                    facts: Default::default(),
                    facts_at: Default::default(),
                    ahead: Default::default(),
                })
            }
            Err(e) => Err(crate::error::render_chain(e)
                .trim_start_matches("error: ")
                .to_string()),
        };
        let provider = if opts.provider {
            match &auth {
                Ok(a) => crate::provider::factory::open(cluster, a).await?,
                Err(_) => None,
            }
        } else {
            None
        };
        self.state = state;
        self.ssh = ssh;
        self.provider = provider;
        Ok(())
    }

    /// SSH to the hosts (the pool, pinned keys, facts, the API tunnel).
    pub fn rt(&self) -> Result<&Runtime, Error> {
        self.ssh
            .as_ref()
            .map_err(|e| Error::Usage(format!("cannot reach the hosts: {e}")))
    }

    /// The render secrets of the state (None before the first `apply`).
    pub async fn secrets(&self) -> Option<Secrets> {
        render_secrets(&self.state.get().await)
    }

    /// Stop before changing more when someone broke our lock (`state unlock --force`).
    pub fn check_lock(&self) -> Result<(), Error> {
        match &self.lock {
            Some(l) => Ok(l.check()?),
            None => Ok(()),
        }
    }

    pub fn locked(&self) -> bool {
        self.lock.is_some()
    }

    /// Record host keys learned on this path, flush the journal, close connections.
    async fn close(&self) -> Result<(), Error> {
        let mut first_err: Option<Error> = None;
        if let Ok(rt) = &self.ssh {
            rt.pool.close_all().await;
            if let Err(e) = self.record_pins(rt).await {
                first_err.get_or_insert(e);
            }
        }
        if self.lock.is_some() {
            if let Err(e) = self.state.flush().await {
                first_err.get_or_insert(e.into());
            }
            // Old generations hold old sealed secrets: keep only the newest.
            if self.state.saves().await > 0 {
                if let Err(e) = self
                    .state
                    .store
                    .prune_history(crate::state::retention::HISTORY_KEEP)
                    .await
                {
                    tracing::warn!("old state history was not pruned: {e}");
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Keys pinned on first use during this session go into the state: under the
    /// session's lock, or — for read-only commands — under the lock taken just for
    /// this write (when someone else holds it, the keys are only reported).
    async fn record_pins(&self, rt: &Runtime) -> Result<(), Error> {
        let known = self.state.get().await.host_keys;
        let learned: std::collections::BTreeMap<String, String> = rt
            .host_keys
            .snapshot()
            .into_iter()
            .filter(|(h, k)| known.get(h) != Some(k))
            .collect();
        if learned.is_empty() {
            return Ok(());
        }
        if self.lock.is_some() {
            return Ok(self.state.update(|d| d.host_keys.extend(learned)).await?);
        }
        let store = &self.state.store;
        if !store.has_key() && self.state.get().await.sealed_secrets().is_some() {
            // Without the key the document cannot be re-sealed; keep it read-only.
            return Ok(());
        }
        match store.lock(&command_line()).await {
            Ok(lock) => {
                let saved = async {
                    let (doc, version) = store.load_or_new().await?;
                    let h = StateHandle::new(store.clone(), doc, version);
                    h.update(|d| {
                        for (k, v) in &learned {
                            // Never overwrite a pin another run recorded meanwhile.
                            d.host_keys.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    })
                    .await
                }
                .await;
                let released = lock.release().await;
                saved?;
                released?;
                Ok(())
            }
            Err(StateError::Locked { .. }) => {
                if self.opts.output == OutputFormat::Text {
                    eprintln!(
                        "note: {} new host key(s) seen but not recorded: the state is locked by another run",
                        learned.len()
                    );
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Names of the secrets kept in the state's `extra` map.
pub const SSH_KEY: &str = "ssh-private-key";

/// Open the cluster's state store.
pub fn open_store(c: &LoadedCluster) -> Result<StateStore, Error> {
    Ok(StateStore::open(
        &c.cluster.spec.state,
        c.name(),
        &c.base_dir,
    )?)
}

/// The render secrets of a state document.
pub fn render_secrets(doc: &StateDocument) -> Option<Secrets> {
    Some(Secrets {
        bootstrap_token: doc.secrets.join_tokens.first()?.clone(),
        certificate_key: doc.secrets.certificate_key.clone()?,
        ca_cert_hash: doc.secrets.extra.get(phase::CA_HASH_KEY).cloned(),
    })
}

/// Generate what the cluster needs once: the bootstrap token, the certificate key and,
/// for the docker provider without a key file, the cluster's SSH key.
async fn ensure_secrets(c: &LoadedCluster, state: &StateHandle) -> Result<(), Error> {
    let doc = state.get().await;
    let need_ssh = c.cluster.spec.provider.makes_machines()
        && c.cluster.spec.ssh.key_file.is_none()
        && !c.cluster.spec.ssh.agent
        && !doc.secrets.extra.contains_key(SSH_KEY);
    if render_secrets(&doc).is_some() && !need_ssh {
        return Ok(());
    }
    let fresh = Secrets::generate();
    let ssh = if need_ssh {
        let key = crate::transport::ssh::generate_ed25519_key();
        let (private, _) = crate::transport::ssh::encode_key(&key)
            .map_err(|e| Error::Usage(format!("cannot encode a new SSH key: {e}")))?;
        Some(private)
    } else {
        None
    };
    state
        .update(|doc| {
            if doc.secrets.join_tokens.is_empty() {
                doc.secrets.join_tokens.push(fresh.bootstrap_token.clone());
            }
            if doc.secrets.certificate_key.is_none() {
                doc.secrets.certificate_key = Some(fresh.certificate_key.clone());
            }
            if let Some(k) = ssh {
                doc.secrets.extra.insert(SSH_KEY.into(), k);
            }
        })
        .await?;
    Ok(())
}

/// The agent key `spec.ssh.agentKey` names, as a fingerprint or comment: a public key
/// file (`.pub`, or a path) is read and stands for its fingerprint.
fn agent_key(c: &LoadedCluster) -> Result<Option<String>, Error> {
    let Some(k) = &c.cluster.spec.ssh.agent_key else {
        return Ok(None);
    };
    if k.starts_with("SHA256:") || !(k.ends_with(".pub") || k.contains('/')) {
        return Ok(Some(k.clone()));
    }
    let path = c.path(k);
    let key = russh::keys::load_public_key(&path).map_err(|e| {
        Error::Usage(format!(
            "spec.ssh.agentKey: cannot read the public key {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some(
        key.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
    ))
}

pub fn ssh_auth(c: &LoadedCluster, doc: &StateDocument) -> Result<SshAuth, Error> {
    let ssh = &c.cluster.spec.ssh;
    if let Some(f) = &ssh.key_file {
        return Ok(SshAuth::key_file(c.path(f))?);
    }
    if ssh.agent {
        return Ok(SshAuth::Agent(agent_key(c)?));
    }
    // Static hosts that each have their own key (validation saw to it): the first one's
    // is the default, which no host uses (each has its own in `SshConfig::per_host`).
    if matches!(c.cluster.spec.provider, crate::spec::Provider::Static(_)) {
        if let Some(f) = c
            .topology
            .hosts
            .first()
            .and_then(|h| h.ssh_key_file.as_ref())
        {
            return Ok(SshAuth::key_file(c.path(&f.to_string_lossy()))?);
        }
    }
    let pem =
        doc.secrets.extra.get(SSH_KEY).ok_or_else(|| {
            Error::Usage("no SSH key: set spec.ssh.keyFile or spec.ssh.agent".into())
        })?;
    let key = russh::keys::decode_secret_key(pem, None)
        .map_err(|e| Error::Usage(format!("the SSH key in the state is unreadable: {e}")))?;
    Ok(SshAuth::Key(Arc::new(key)))
}

pub fn ssh_config(c: &LoadedCluster, auth: SshAuth, accept: &[String]) -> Result<SshConfig, Error> {
    let ssh = &c.cluster.spec.ssh;
    let mut cfg = SshConfig::new(ssh.user.clone(), auth.clone());
    cfg.port = ssh.port;
    cfg.connect_timeout = Duration::from_secs(ssh.connect_timeout_seconds.into());
    let (ordinary, long) = ssh.command_timeouts();
    (cfg.command_timeout, cfg.long_command_timeout) = (Some(ordinary), Some(long));
    if c.cluster.spec.provider.makes_machines() {
        // Fresh machines get their authorized key a moment after sshd starts.
        cfg.retry.auth_window = Duration::from_secs(30);
    }
    if c.cluster.spec.provider.is_cloud() {
        // Fresh VMs: sshd answers a while after the instance runs, and cloud-init (or
        // the disk edit) installs the key at first boot.
        cfg.retry.window = Duration::from_secs(300);
        cfg.retry.auth_window = Duration::from_secs(180);
    }
    let hop = |b: &crate::spec::Bastion| -> Result<crate::transport::BastionConfig, Error> {
        let auth = match &b.key_file {
            Some(f) => Some(SshAuth::key_file(c.path(f))?),
            None => None,
        };
        Ok(crate::transport::BastionConfig {
            host: b.host.clone(),
            port: b.port,
            user: b.user.clone().unwrap_or_else(|| ssh.user.clone()),
            auth,
            via: Vec::new(),
        })
    };
    if let Some(b) = &ssh.bastion {
        let mut last = hop(b)?;
        last.via = b.via.iter().map(hop).collect::<Result<_, _>>()?;
        cfg.bastion = Some(last);
    }
    cfg.accept_new_host_keys = accept.iter().cloned().collect();
    // Hosts with their own user, port or key (Ansible's per-host variables).
    for h in &c.topology.hosts {
        let key = match &h.ssh_key_file {
            Some(f) => {
                let path = c.path(&f.to_string_lossy());
                Some(SshAuth::key_file(&path).map_err(|e| {
                    Error::Usage(format!(
                        "host `{}`: SSH key {}: {e}",
                        h.name,
                        path.display()
                    ))
                })?)
            }
            None => None,
        };
        if h.ssh_user != ssh.user || h.ssh_port != ssh.port || key.is_some() {
            cfg.per_host.insert(
                h.address.to_string(),
                crate::transport::HostOverride {
                    user: (h.ssh_user != ssh.user).then(|| h.ssh_user.clone()),
                    port: (h.ssh_port != ssh.port).then_some(h.ssh_port),
                    auth: key,
                },
            );
        }
    }
    Ok(cfg)
}
