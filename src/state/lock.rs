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
    /// Where the holder runs, to tell a holder that provably died on this host
    /// (same hostname, boot and pid namespace; its pid gone or reused) from one
    /// running elsewhere. Absent in locks written by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HolderHost>,
}

/// The host identity of a lock holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HolderHost {
    pub hostname: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `/proc/self/ns/pid` (e.g. `pid:[4026531836]`).
    pub pid_namespace: String,
    /// Start time of the holder process (field 22 of `/proc/<pid>/stat`), so a pid
    /// reused by another process is not taken for the holder.
    pub pid_start: u64,
}

fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the
    // last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process's host identity (`None` where /proc does not tell it).
pub fn this_host() -> Option<HolderHost> {
    Some(HolderHost {
        hostname: gethostname::gethostname().to_string_lossy().to_string(),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()?
            .trim()
            .to_string(),
        pid_namespace: std::fs::read_link("/proc/self/ns/pid")
            .ok()?
            .to_string_lossy()
            .to_string(),
        pid_start: proc_start_time(std::process::id())?,
    })
}

/// Why the holder of `info` is provably dead, if it ran on this host (same hostname,
/// boot and pid namespace) and its process is gone or its pid now belongs to another
/// process. `None` when it may be alive or runs elsewhere.
pub fn holder_gone(info: &LockInfo) -> Option<String> {
    let theirs = info.host.as_ref()?;
    let ours = this_host()?;
    if theirs.hostname != ours.hostname
        || theirs.boot_id != ours.boot_id
        || theirs.pid_namespace != ours.pid_namespace
    {
        return None;
    }
    match proc_start_time(info.pid) {
        None if !std::path::Path::new(&format!("/proc/{}", info.pid)).exists() => Some(format!(
            "pid {} no longer exists on this host ({})",
            info.pid, ours.hostname
        )),
        None => None,
        Some(start) if start != theirs.pid_start => Some(format!(
            "pid {} on this host ({}) is now another process",
            info.pid, ours.hostname
        )),
        Some(_) => None,
    }
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
    /// Take over a lock whose holder provably died on this host ([`holder_gone`])
    /// instead of failing (`--break-stale-lock`).
    pub break_stale_lock: bool,
}

impl LockOptions {
    pub fn new(command: impl Into<String>) -> Self {
        LockOptions {
            command: command.into(),
            lease: DEFAULT_LEASE,
            refresh_every: None,
            break_stale_lock: false,
        }
    }
}

fn lease_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(60))
}

pub(crate) fn parse_lock(body: &[u8]) -> Result<LockInfo, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// What a released lock object holds: the lock is free. Releasing and unlocking
/// replace the lock with a tombstone by compare-and-swap on the version they read
/// (object stores have no conditional delete), so they can never remove a newer
/// holder's lock; taking the lock replaces a tombstone the same way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tombstone {
    /// Id of the lock this tombstone replaced.
    released: String,
    /// Random, so that no two tombstones have the same bytes (a file:// ETag is the
    /// content's sha256: a version must never come back).
    nonce: String,
    at: DateTime<Utc>,
}

fn tombstone(released: &str) -> Bytes {
    let t = Tombstone {
        released: released.to_string(),
        nonce: format!("{:016x}", rand::random::<u64>()),
        at: Utc::now(),
    };
    let mut v = serde_json::to_vec_pretty(&t).expect("tombstone serializes");
    v.push(b'\n');
    Bytes::from(v)
}

/// The lock object as read.
pub(crate) enum LockObject {
    Absent,
    /// Released (a tombstone): free, replaced by compare-and-swap on `version`.
    Free {
        version: ObjectVersion,
    },
    Held(LockInfo, ObjectVersion),
    Unreadable(String, ObjectVersion),
}

pub(crate) async fn read_object(backend: &dyn StateBackend) -> Result<LockObject, StateError> {
    match backend.get(LOCK_KEY).await {
        Ok(None) => Ok(LockObject::Absent),
        Ok(Some((body, version))) => match parse_lock(&body) {
            Ok(info) => Ok(LockObject::Held(info, version)),
            Err(detail) => match serde_json::from_slice::<Tombstone>(&body) {
                Ok(_) => Ok(LockObject::Free { version }),
                Err(_) => Ok(LockObject::Unreadable(detail, version)),
            },
        },
        Err(e) => Err(backend_err(backend, e)),
    }
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

/// Read the lock, if it is held.
pub(crate) async fn read_lock(
    backend: &dyn StateBackend,
) -> Result<Option<(LockInfo, ObjectVersion)>, StateError> {
    match read_object(backend).await? {
        LockObject::Absent | LockObject::Free { .. } => Ok(None),
        LockObject::Held(info, version) => Ok(Some((info, version))),
        LockObject::Unreadable(detail, _) => Err(StateError::LockUnreadable {
            url: backend.describe(),
            detail,
        }),
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
        host: this_host(),
    };
    match backend
        .put(LOCK_KEY, encode_lock(&info), WriteMode::Create)
        .await
    {
        Ok(version) => Ok(start_guard(backend, info, version, &opts)),
        Err(BackendError::AlreadyExists) => {
            // Someone holds it (or held it and died), or it was released (a
            // tombstone). A live or merely expired lock is never taken over here.
            match read_object(backend.as_ref()).await? {
                // Our own create went through but its answer was lost and the retry
                // found it: it is ours.
                LockObject::Held(held, version) if held.id == info.id => {
                    Ok(start_guard(backend, info, version, &opts))
                }
                LockObject::Held(held, version) => match holder_gone(&held) {
                    Some(why) if opts.break_stale_lock => {
                        tracing::warn!(
                            "breaking the stale state lock of {}: {why}",
                            held.describe()
                        );
                        take_over(backend, info, version, &opts).await
                    }
                    _ => Err(held_error(backend.as_ref(), held)),
                },
                LockObject::Free { version, .. } => take_over(backend, info, version, &opts).await,
                // Released between our attempt and our read: report it as contention
                // instead of retrying, so exactly one of a crowd of racers wins.
                LockObject::Absent => Err(StateError::LockContended {
                    url: backend.describe(),
                }),
                LockObject::Unreadable(detail, _) => Err(StateError::LockUnreadable {
                    url: backend.describe(),
                    detail,
                }),
            }
        }
        Err(e) => Err(backend_err(backend.as_ref(), e)),
    }
}

/// Replace the lock object read at `version` (a tombstone, or a provably dead
/// holder's lock) with ours, by compare-and-swap: one of many racers wins.
async fn take_over(
    backend: Arc<dyn StateBackend>,
    info: LockInfo,
    version: ObjectVersion,
    opts: &LockOptions,
) -> Result<LockGuard, StateError> {
    match backend
        .put(LOCK_KEY, encode_lock(&info), WriteMode::Update(version))
        .await
    {
        Ok(v) => Ok(start_guard(backend, info, v, opts)),
        Err(BackendError::Precondition) | Err(BackendError::NotFound) => {
            match read_object(backend.as_ref()).await? {
                // Our write went through, its answer was lost.
                LockObject::Held(held, v) if held.id == info.id => {
                    Ok(start_guard(backend, info, v, opts))
                }
                LockObject::Held(held, _) => Err(held_error(backend.as_ref(), held)),
                _ => Err(StateError::LockContended {
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
    if let Some(detail) = holder_gone(&held) {
        return StateError::LockHolderGone {
            url: backend.describe(),
            holder: held.describe(),
            detail,
        };
    }
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

    /// Stop refreshing and release the lock, if it is still ours: a compare-and-swap
    /// of the version we wrote last to a tombstone, so a newer holder's lock (ours was
    /// broken and retaken) is never removed.
    pub async fn release(mut self) -> Result<(), StateError> {
        self.stop_refresh().await;
        let (id, version) = {
            let s = self.shared.lock().expect("lock state");
            (s.info.id.clone(), s.version.clone())
        };
        release_if_ours(self.backend.as_ref(), &id, version).await
    }
}

async fn release_if_ours(
    backend: &dyn StateBackend,
    id: &str,
    mut version: ObjectVersion,
) -> Result<(), StateError> {
    for _ in 0..3 {
        match backend
            .put(LOCK_KEY, tombstone(id), WriteMode::Update(version.clone()))
            .await
        {
            Ok(_) => return Ok(()),
            Err(BackendError::Precondition) | Err(BackendError::NotFound) => {}
            Err(e) => return Err(backend_err(backend, e)),
        }
        match read_object(backend).await? {
            // A refresh of ours landed with its answer lost: release that version.
            LockObject::Held(held, v) if held.id == id && v != version => version = v,
            LockObject::Held(held, _) if held.id != id => {
                tracing::warn!(
                    "not releasing the state lock: it now belongs to {}",
                    held.describe()
                );
                return Ok(());
            }
            LockObject::Held(..) => break,
            // Released (by us, the answer lost; or broken by someone), or gone.
            LockObject::Free { .. } | LockObject::Absent => return Ok(()),
            LockObject::Unreadable(..) => break,
        }
    }
    tracing::warn!("could not release the state lock (it kept changing); its lease will expire");
    Ok(())
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
        let held = self
            .shared
            .lock()
            .map(|s| (s.info.id.clone(), s.version.clone()))
            .ok();
        if let (Ok(handle), Some((id, version))) = (tokio::runtime::Handle::try_current(), held) {
            tracing::warn!("state lock dropped without release; releasing in the background");
            handle.spawn(async move {
                if let Err(e) = release_if_ours(backend.as_ref(), &id, version).await {
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
    /// The lease was still live when it was broken (only with `force`, or for a
    /// holder that provably died on this host).
    pub was_live: bool,
    /// Why the holder is known to be dead (it ran on this host and its process is
    /// gone), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_gone: Option<String>,
}

/// Remove the lock. Without `force` only an expired lease, or the lock of a holder
/// that provably died on this host, is removed. Returns what was broken, or `None`
/// when there was no lock. The removal is a compare-and-swap of the version read to a
/// tombstone: if the lock changed in between (a new holder), nothing is removed.
pub(crate) async fn unlock(
    backend: &dyn StateBackend,
    force: bool,
) -> Result<Option<Unlocked>, StateError> {
    // A live holder refreshes its lock (a new version) while a forced unlock is under
    // way: read again and break the lock as it is now, a few times.
    let mut attempt = 0;
    loop {
        match unlock_once(backend, force).await {
            Err(StateError::LockContended { .. }) if force && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

async fn unlock_once(
    backend: &dyn StateBackend,
    force: bool,
) -> Result<Option<Unlocked>, StateError> {
    let contended = || StateError::LockContended {
        url: backend.describe(),
    };
    let (info, version) = match read_object(backend).await? {
        LockObject::Absent | LockObject::Free { .. } => return Ok(None),
        LockObject::Held(info, version) => (info, version),
        LockObject::Unreadable(detail, version) if force => {
            match backend
                .put(LOCK_KEY, tombstone(""), WriteMode::Update(version))
                .await
            {
                Ok(_) => {}
                Err(BackendError::Precondition) | Err(BackendError::NotFound) => {
                    return Err(contended())
                }
                Err(e) => return Err(backend_err(backend, e)),
            }
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
                    host: None,
                },
                was_live: false,
                holder_gone: None,
            }));
        }
        LockObject::Unreadable(detail, _) => {
            return Err(StateError::LockUnreadable {
                url: backend.describe(),
                detail,
            })
        }
    };
    let live = !info.is_expired(Utc::now());
    let gone = holder_gone(&info);
    if live && !force && gone.is_none() {
        return Err(StateError::Locked {
            url: backend.describe(),
            holder: info.describe(),
            expires: info.expires,
        });
    }
    match backend
        .put(LOCK_KEY, tombstone(&info.id), WriteMode::Update(version))
        .await
    {
        Ok(_) => {}
        Err(BackendError::Precondition) | Err(BackendError::NotFound) => return Err(contended()),
        Err(e) => return Err(backend_err(backend, e)),
    }
    Ok(Some(Unlocked {
        lock: info,
        was_live: live,
        holder_gone: gone,
    }))
}
