//! The state lock: one object created with create-if-absent, refreshed with
//! compare-and-swap on its own ETag, deleted on release.

use super::backend::{BackendError, ObjectVersion, StateBackend, WriteMode};
use super::StateError;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const LOCK_KEY: &str = "lock";

/// Default lease: a holder that stops refreshing loses the lock after this long.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// What the lock object records about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockInfo {
    /// Random id of this acquisition (tells our lock from a later holder's).
    pub id: String,
    /// `user@host`.
    pub holder: String,
    pub pid: u32,
    pub command: String,
    pub started: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

impl LockInfo {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires
    }

    /// One line for messages: `alice@laptop (pid 42, "kubeforge apply") since 2026-...`.
    pub fn describe(&self) -> String {
        format!(
            "{} (pid {}, `{}`) since {}",
            self.holder,
            self.pid,
            self.command,
            self.started
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

pub fn current_holder() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = gethostname::gethostname().to_string_lossy().to_string();
    format!("{user}@{host}")
}

/// Options for [`super::StateStore::lock_with`].
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// The command line recorded in the lock (shown to whoever finds it held).
    pub command: String,
    pub lease: Duration,
    /// How often the lease is extended (default: a third of the lease).
    pub refresh_every: Option<Duration>,
}

impl LockOptions {
    pub fn new(command: impl Into<String>) -> Self {
        LockOptions {
            command: command.into(),
            lease: DEFAULT_LEASE,
            refresh_every: None,
        }
    }
}

fn lease_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(60))
}

pub(crate) fn parse_lock(body: &[u8]) -> Result<LockInfo, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn encode_lock(info: &LockInfo) -> Bytes {
    let mut v = serde_json::to_vec_pretty(info).expect("lock serializes");
    v.push(b'\n');
    Bytes::from(v)
}

pub(crate) fn backend_err(backend: &dyn StateBackend, e: BackendError) -> StateError {
    match e {
        BackendError::Unavailable(source) => StateError::Unavailable {
            url: backend.describe(),
            source,
        },
        BackendError::NoConditionalWrites(source) => StateError::NoConditionalWrites {
            url: backend.describe(),
            source,
        },
        other => StateError::Unavailable {
            url: backend.describe(),
            source: Box::new(other),
        },
    }
}

/// Read the lock object, if any.
pub(crate) async fn read_lock(
    backend: &dyn StateBackend,
) -> Result<Option<(LockInfo, ObjectVersion)>, StateError> {
    match backend.get(LOCK_KEY).await {
        Ok(None) => Ok(None),
        Ok(Some((body, version))) => match parse_lock(&body) {
            Ok(info) => Ok(Some((info, version))),
            Err(detail) => Err(StateError::LockUnreadable {
                url: backend.describe(),
                detail,
            }),
        },
        Err(e) => Err(backend_err(backend, e)),
    }
}

struct Shared {
    info: LockInfo,
    version: ObjectVersion,
    lost: Option<String>,
}

/// Holds the state lock. The lease is extended in the background until
/// [`LockGuard::release`] is awaited. Dropping the guard without releasing stops the
/// refresh and makes a best-effort release on the current runtime; a process killed
/// with SIGKILL leaves the lock behind until its lease expires and someone runs
/// `kubeforge state unlock`.
pub struct LockGuard {
    backend: Arc<dyn StateBackend>,
    shared: Arc<Mutex<Shared>>,
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.lock().expect("lock state");
        f.debug_struct("LockGuard")
            .field("info", &s.info)
            .field("lost", &s.lost)
            .finish()
    }
}

pub(crate) async fn acquire(
    backend: Arc<dyn StateBackend>,
    opts: LockOptions,
) -> Result<LockGuard, StateError> {
    let now = Utc::now();
    let info = LockInfo {
        id: format!("{:016x}", rand::random::<u64>()),
        holder: current_holder(),
        pid: std::process::id(),
        command: opts.command.clone(),
        started: now,
        refreshed: now,
        expires: now + lease_chrono(opts.lease),
    };
    match backend
        .put(LOCK_KEY, encode_lock(&info), WriteMode::Create)
        .await
    {
        Ok(version) => Ok(start_guard(backend, info, version, &opts)),
        Err(BackendError::AlreadyExists) => {
            // Someone holds it (or held it and died). Never take it over here.
            match read_lock(backend.as_ref()).await? {
                // Our own create went through but its answer was lost and the retry
                // found it: it is ours.
                Some((held, version)) if held.id == info.id => {
                    Ok(start_guard(backend, info, version, &opts))
                }
                Some((held, _)) => Err(held_error(backend.as_ref(), held)),
                // Released between our attempt and our read: report it as contention
                // instead of retrying, so exactly one of a crowd of racers wins.
                None => Err(StateError::LockContended {
                    url: backend.describe(),
                }),
            }
        }
        Err(e) => Err(backend_err(backend.as_ref(), e)),
    }
}

fn start_guard(
    backend: Arc<dyn StateBackend>,
    info: LockInfo,
    version: ObjectVersion,
    opts: &LockOptions,
) -> LockGuard {
    let shared = Arc::new(Mutex::new(Shared {
        info,
        version,
        lost: None,
    }));
    let (tx, rx) = watch::channel(false);
    let every = opts
        .refresh_every
        .unwrap_or(opts.lease / 3)
        .max(Duration::from_millis(100));
    let task = tokio::spawn(refresh_loop(
        backend.clone(),
        shared.clone(),
        rx,
        every,
        opts.lease,
    ));
    LockGuard {
        backend,
        shared,
        stop: Some(tx),
        task: Some(task),
    }
}

pub(crate) fn held_error(backend: &dyn StateBackend, held: LockInfo) -> StateError {
    let now = Utc::now();
    if held.is_expired(now) {
        StateError::LockExpired {
            url: backend.describe(),
            holder: held.describe(),
            expired: held.expires,
        }
    } else {
        StateError::Locked {
            url: backend.describe(),
            holder: held.describe(),
            expires: held.expires,
        }
    }
}

async fn refresh_loop(
    backend: Arc<dyn StateBackend>,
    shared: Arc<Mutex<Shared>>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
    lease: Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let (mut info, version) = {
            let s = shared.lock().expect("lock state");
            (s.info.clone(), s.version.clone())
        };
        let now = Utc::now();
        info.refreshed = now;
        info.expires = now + lease_chrono(lease);
        let put = backend.put(LOCK_KEY, encode_lock(&info), WriteMode::Update(version));
        let result = tokio::select! {
            r = put => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(v) => {
                let mut s = shared.lock().expect("lock state");
                s.info = info;
                s.version = v;
            }
            Err(BackendError::Precondition) | Err(BackendError::NotFound) => {
                // Our refresh may have gone through with its answer lost.
                if let Ok(Some((held, v))) = read_lock(backend.as_ref()).await {
                    if held == info {
                        let mut s = shared.lock().expect("lock state");
                        s.info = info;
                        s.version = v;
                        continue;
                    }
                }
                let mut s = shared.lock().expect("lock state");
                tracing::error!("the state lock was removed or taken over by someone else");
                s.lost = Some("the lock was removed or replaced by someone else".into());
                return;
            }
            Err(e) => {
                // Transient: keep trying; the lease covers a few missed refreshes.
                tracing::warn!("cannot refresh the state lock: {e}");
                let mut s = shared.lock().expect("lock state");
                if Utc::now() >= s.info.expires {
                    s.lost = Some(format!("the lease expired while refreshing failed: {e}"));
                }
            }
        }
    }
}

impl LockGuard {
    /// The lock as last written (holder, lease expiry).
    pub fn info(&self) -> LockInfo {
        self.shared.lock().expect("lock state").info.clone()
    }

    /// `Err` when the lock was lost (removed with `unlock --force`, or its lease ran out
    /// while the store was unreachable). Check it between phases.
    pub fn check(&self) -> Result<(), StateError> {
        let s = self.shared.lock().expect("lock state");
        match &s.lost {
            None => Ok(()),
            Some(why) => Err(StateError::LockLost {
                url: self.backend.describe(),
                detail: why.clone(),
            }),
        }
    }

    async fn stop_refresh(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stop refreshing and delete the lock, if it is still ours.
    pub async fn release(mut self) -> Result<(), StateError> {
        self.stop_refresh().await;
        let id = self.shared.lock().expect("lock state").info.id.clone();
        release_if_ours(self.backend.as_ref(), &id).await
    }
}

async fn release_if_ours(backend: &dyn StateBackend, id: &str) -> Result<(), StateError> {
    match read_lock(backend).await {
        Ok(Some((held, _))) if held.id == id => backend
            .delete(LOCK_KEY)
            .await
            .map_err(|e| backend_err(backend, e)),
        Ok(Some((held, _))) => {
            tracing::warn!(
                "not releasing the state lock: it now belongs to {}",
                held.describe()
            );
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(tx) = self.stop.take() else {
            return; // released
        };
        let _ = tx.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let backend = self.backend.clone();
        let id = self.shared.lock().map(|s| s.info.id.clone()).ok();
        if let (Ok(handle), Some(id)) = (tokio::runtime::Handle::try_current(), id) {
            tracing::warn!("state lock dropped without release; releasing in the background");
            handle.spawn(async move {
                if let Err(e) = release_if_ours(backend.as_ref(), &id).await {
                    tracing::warn!("cannot release the state lock: {e}");
                }
            });
        }
    }
}

/// What `unlock` removed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unlocked {
    pub lock: LockInfo,
    /// The lease was still live when it was broken (only with `force`).
    pub was_live: bool,
}

/// Remove the lock. Without `force` only an expired lease is removed. Returns what was
/// broken, or `None` when there was no lock.
pub(crate) async fn unlock(
    backend: &dyn StateBackend,
    force: bool,
) -> Result<Option<Unlocked>, StateError> {
    let (info, _version) = match backend.get(LOCK_KEY).await {
        Ok(None) => return Ok(None),
        Ok(Some((body, version))) => match parse_lock(&body) {
            Ok(info) => (info, version),
            Err(detail) if force => {
                backend
                    .delete(LOCK_KEY)
                    .await
                    .map_err(|e| backend_err(backend, e))?;
                tracing::warn!("removed an unreadable lock object: {detail}");
                let now = Utc::now();
                return Ok(Some(Unlocked {
                    lock: LockInfo {
                        id: String::new(),
                        holder: "unknown (unreadable lock object)".into(),
                        pid: 0,
                        command: String::new(),
                        started: now,
                        refreshed: now,
                        expires: now,
                    },
                    was_live: false,
                }));
            }
            Err(detail) => {
                return Err(StateError::LockUnreadable {
                    url: backend.describe(),
                    detail,
                })
            }
        },
        Err(e) => return Err(backend_err(backend, e)),
    };
    let live = !info.is_expired(Utc::now());
    if live && !force {
        return Err(StateError::Locked {
            url: backend.describe(),
            holder: info.describe(),
            expires: info.expires,
        });
    }
    backend
        .delete(LOCK_KEY)
        .await
        .map_err(|e| backend_err(backend, e))?;
    Ok(Some(Unlocked {
        lock: info,
        was_live: live,
    }))
}
