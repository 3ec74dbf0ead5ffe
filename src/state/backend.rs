//! Where the state objects live: a tiny key/value interface with the three write modes
//! the state store needs (create-if-absent, compare-and-swap, overwrite), implemented
//! over `object_store` (s3://, gs://, az://, memory://) and over a local directory
//! (file://) with our own compare-and-swap, because object_store's `LocalFileSystem`
//! has no conditional update.

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The version of an object as the store reports it (ETag and/or version id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectVersion {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// How a put treats an existing object.
#[derive(Debug, Clone)]
pub enum WriteMode {
    /// Fail with [`BackendError::AlreadyExists`] if the object exists.
    Create,
    /// Fail with [`BackendError::Precondition`] unless the object exists at this version.
    Update(ObjectVersion),
    /// Unconditional (only used for history entries and tests).
    Overwrite,
}

/// One object listed under a prefix.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Key relative to the store's prefix, e.g. `history/7.json`.
    pub key: String,
    pub size: u64,
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object already exists")]
    AlreadyExists,
    #[error("object changed or vanished since it was read (precondition failed)")]
    Precondition,
    #[error("object not found")]
    NotFound,
    /// The store cannot do a conditional write (create-if-absent, compare-and-swap).
    #[error("{0}")]
    NoConditionalWrites(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The key/value operations the state store is built on. Keys are relative to the
/// store's prefix (`state.json`, `lock`, `history/3.json`).
#[async_trait]
pub trait StateBackend: Send + Sync + fmt::Debug {
    /// Human-readable location (URL) for messages.
    fn describe(&self) -> String;
    async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>, BackendError>;
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        mode: WriteMode,
    ) -> Result<ObjectVersion, BackendError>;
    /// Deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), BackendError>;
    /// Objects whose key starts with `dir/` (one level, no recursion needed).
    async fn list(&self, dir: &str) -> Result<Vec<Listed>, BackendError>;
    /// Every object under the store's prefix, at any depth (`kubeforge clusters` finds
    /// the clusters kept under one prefix with it). Object stores list recursively.
    async fn list_tree(&self) -> Result<Vec<Listed>, BackendError> {
        self.list("").await
    }
}

// ---------------------------------------------------------------------------------------
// object_store

/// A backend over any `object_store` implementation, under a key prefix.
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
}

impl fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("url", &self.url)
            .finish()
    }
}

impl ObjectStoreBackend {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: impl Into<String>) -> Self {
        let prefix = ObjPath::from_iter(prefix.split('/').filter(|p| !p.is_empty()));
        ObjectStoreBackend {
            store,
            prefix,
            url: url.into(),
        }
    }

    fn path(&self, key: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            p = p.join(part);
        }
        p
    }
}

fn map_os_err(e: object_store::Error) -> BackendError {
    match e {
        object_store::Error::AlreadyExists { .. } => BackendError::AlreadyExists,
        object_store::Error::Precondition { .. } => BackendError::Precondition,
        object_store::Error::NotFound { .. } => BackendError::NotFound,
        e @ (object_store::Error::NotImplemented { .. }
        | object_store::Error::NotSupported { .. }) => {
            BackendError::NoConditionalWrites(Box::new(e))
        }
        other => BackendError::Unavailable(Box::new(other)),
    }
}

#[async_trait]
impl StateBackend for ObjectStoreBackend {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>, BackendError> {
        let result = match self.store.get(&self.path(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(map_os_err(e)),
        };
        let version = ObjectVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let body = result.bytes().await.map_err(map_os_err)?;
        Ok(Some((body, version)))
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        mode: WriteMode,
    ) -> Result<ObjectVersion, BackendError> {
        let mode = match mode {
            WriteMode::Create => PutMode::Create,
            WriteMode::Overwrite => PutMode::Overwrite,
            WriteMode::Update(v) => PutMode::Update(UpdateVersion {
                e_tag: v.e_tag,
                version: v.version,
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let r = self
            .store
            .put_opts(&self.path(key), PutPayload::from(body), opts)
            .await
            .map_err(map_os_err)?;
        Ok(ObjectVersion {
            e_tag: r.e_tag,
            version: r.version,
        })
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_os_err(e)),
        }
    }

    async fn list(&self, dir: &str) -> Result<Vec<Listed>, BackendError> {
        let base = self.path(dir);
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(map_os_err)?;
        let mut out = Vec::new();
        for m in metas {
            let Some(rel) = m.location.prefix_match(&self.prefix) else {
                continue;
            };
            let key = rel.map(|p| p.as_ref().to_string()).collect::<Vec<_>>();
            out.push(Listed {
                key: key.join("/"),
                size: m.size,
                last_modified: Some(m.last_modified),
            });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// local directory

/// A backend over a local directory. Reads are plain file reads (writes are atomic
/// renames, so a reader never sees half a file); every write takes an exclusive
/// `flock` on `<dir>/.kubeforge-cas.lock` so create-if-absent and compare-and-swap are
/// atomic across processes on the same machine. The ETag is the sha256 of the content.
#[derive(Debug)]
pub struct FileBackend {
    root: PathBuf,
    url: String,
}

impl FileBackend {
    pub fn new(root: PathBuf) -> Self {
        let url = format!("file://{}", root.display());
        FileBackend { root, url }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn file_etag(body: &[u8]) -> ObjectVersion {
    let digest = Sha256::digest(body);
    ObjectVersion {
        e_tag: Some(hex::encode(&digest[..16])),
        version: None,
    }
}

fn io_unavailable(what: String, e: std::io::Error) -> BackendError {
    BackendError::Unavailable(Box::new(IoContext { what, source: e }))
}

#[derive(Debug, thiserror::Error)]
#[error("{what}")]
struct IoContext {
    what: String,
    #[source]
    source: std::io::Error,
}

/// Exclusive advisory lock on a file, released on drop (and by the kernel if the
/// process dies).
struct Flock(std::fs::File);

impl Flock {
    fn acquire(path: &Path) -> std::io::Result<Flock> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)?;
        loop {
            // SAFETY: flock on a valid, owned file descriptor.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Flock(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: unlocking our own descriptor; closing it would also release the lock.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

impl FileBackend {
    fn target(&self, key: &str) -> PathBuf {
        let mut p = self.root.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            p.push(part);
        }
        p
    }

    fn ensure_dir(dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }

    fn put_blocking(
        root: &Path,
        target: &Path,
        body: &[u8],
        mode: WriteMode,
    ) -> Result<ObjectVersion, BackendError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = target.parent().unwrap_or(root).to_path_buf();
        Self::ensure_dir(&dir)
            .map_err(|e| io_unavailable(format!("cannot create {}", dir.display()), e))?;
        // Stage the new content next to the target, durable before it becomes visible.
        let tmp = dir.join(format!(
            ".tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let staged = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(body)?;
            f.sync_all()
        })();
        if let Err(e) = staged {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_unavailable(format!("cannot write {}", tmp.display()), e));
        }
        let result = (|| {
            let _guard = Flock::acquire(&root.join(".kubeforge-cas.lock"))
                .map_err(|e| io_unavailable(format!("cannot lock {}", root.display()), e))?;
            match &mode {
                WriteMode::Create => match std::fs::hard_link(&tmp, target) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(BackendError::AlreadyExists)
                    }
                    Err(e) => Err(io_unavailable(
                        format!("cannot create {}", target.display()),
                        e,
                    )),
                },
                WriteMode::Update(expected) => {
                    let current = match std::fs::read(target) {
                        Ok(b) => b,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(BackendError::Precondition)
                        }
                        Err(e) => {
                            return Err(io_unavailable(
                                format!("cannot read {}", target.display()),
                                e,
                            ))
                        }
                    };
                    if file_etag(&current).e_tag != expected.e_tag {
                        return Err(BackendError::Precondition);
                    }
                    std::fs::rename(&tmp, target).map_err(|e| {
                        io_unavailable(format!("cannot replace {}", target.display()), e)
                    })
                }
                WriteMode::Overwrite => std::fs::rename(&tmp, target)
                    .map_err(|e| io_unavailable(format!("cannot replace {}", target.display()), e)),
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        result?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(file_etag(body))
    }
}

#[async_trait]
impl StateBackend for FileBackend {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>, BackendError> {
        let target = self.target(key);
        match tokio::fs::read(&target).await {
            Ok(body) => {
                let v = file_etag(&body);
                Ok(Some((Bytes::from(body), v)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_unavailable(
                format!("cannot read {}", target.display()),
                e,
            )),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        mode: WriteMode,
    ) -> Result<ObjectVersion, BackendError> {
        let root = self.root.clone();
        let target = self.target(key);
        tokio::task::spawn_blocking(move || Self::put_blocking(&root, &target, &body, mode))
            .await
            .map_err(|e| BackendError::Unavailable(Box::new(e)))?
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let root = self.root.clone();
        let target = self.target(key);
        tokio::task::spawn_blocking(move || {
            if !root.exists() {
                return Ok(());
            }
            let _guard = Flock::acquire(&root.join(".kubeforge-cas.lock"))
                .map_err(|e| io_unavailable(format!("cannot lock {}", root.display()), e))?;
            match std::fs::remove_file(&target) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_unavailable(
                    format!("cannot remove {}", target.display()),
                    e,
                )),
            }
        })
        .await
        .map_err(|e| BackendError::Unavailable(Box::new(e)))?
    }

    async fn list(&self, dir: &str) -> Result<Vec<Listed>, BackendError> {
        let path = self.target(dir);
        let mut out = Vec::new();
        let mut rd = match tokio::fs::read_dir(&path).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_unavailable(format!("cannot list {}", path.display()), e)),
        };
        while let Some(entry) = rd
            .next_entry()
            .await
            .map_err(|e| io_unavailable(format!("cannot list {}", path.display()), e))?
        {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let meta = match entry.metadata().await {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            out.push(Listed {
                key: format!("{}/{}", dir.trim_end_matches('/'), name),
                size: meta.len(),
                last_modified: meta.modified().ok().map(chrono::DateTime::from),
            });
        }
        Ok(out)
    }

    async fn list_tree(&self) -> Result<Vec<Listed>, BackendError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || walk_files(&root))
            .await
            .map_err(|e| BackendError::Unavailable(Box::new(e)))?
    }
}

/// Every file under `root` (dot files and directories skipped), keys relative to it.
fn walk_files(root: &Path) -> Result<Vec<Listed>, BackendError> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_unavailable(format!("cannot list {}", dir.display()), e)),
        };
        for entry in rd {
            let entry =
                entry.map_err(|e| io_unavailable(format!("cannot list {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            // Not following symlinks: a link loop cannot make this run forever.
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                dirs.push((entry.path(), key));
            } else if meta.is_file() {
                out.push(Listed {
                    key,
                    size: meta.len(),
                    last_modified: meta.modified().ok().map(chrono::DateTime::from),
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// opening from a URL

/// Connection options for remote stores (see [`super::StoreOptions`]).
pub(crate) fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(10),
    }
}

/// HTTP client options of every object store; `ca_bundle`: a PEM file of extra CAs.
pub(crate) fn client_options(
    allow_http: bool,
    ca_bundle: Option<&std::path::Path>,
) -> Result<object_store::ClientOptions, String> {
    let mut o = object_store::ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(30));
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path).map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
        let certs = object_store::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "CA bundle {}: no PEM certificate in it",
                path.display()
            ));
        }
        for c in certs {
            o = o.with_root_certificate(c);
        }
    }
    Ok(o)
}
