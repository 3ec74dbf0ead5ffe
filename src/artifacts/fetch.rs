//! Fetching with sha256 verification into a local cache keyed by digest.
//!
//! For every artifact the published checksum (`<file>.sha256`) is read first; a cached
//! blob `<cache>/sha256/<digest>` is re-hashed and used when it matches; otherwise the
//! file is streamed into a temporary file while hashing, and only a file whose digest
//! equals the published one is moved into the cache. `fetch_all` returns only when every
//! artifact is verified, so a mismatch aborts before anything is installed.

use super::catalogue::Catalogue;
use super::source::{parse_checksum, Location, Source};
use super::ArtifactsError;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What kind of file an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// An executable installed at `remote_path`.
    Binary,
    /// A docker-archive image tarball, uploaded to `remote_path` and imported into
    /// containerd's `k8s.io` namespace.
    Image,
    /// A release `.tar.gz` holding the executable `name`: uploaded under
    /// [`REMOTE_ARCHIVE_DIR`], extracted to `remote_path`.
    Archive,
}

/// A verified file in the local cache, ready to be pushed to hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalArtifact {
    pub name: String,
    pub kind: ArtifactKind,
    /// The cached file (`<cache>/sha256/<digest>`).
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// Where it came from (URL or mirror path).
    pub origin: String,
    /// Where it goes on hosts.
    pub remote_path: String,
    pub mode: u32,
    /// Images: the reference kubeadm expects (`k8s.gcr.io/pause:3.2`).
    pub image_ref: Option<String>,
    /// Images: the reference written inside the tarball (`manifest.json` RepoTags).
    pub archive_ref: Option<String>,
    /// True when the cache already held a verified copy.
    pub cached: bool,
}

/// Where release archives are put on hosts before they are extracted.
pub const REMOTE_ARCHIVE_DIR: &str = "/var/lib/kubeforge/archives";

/// Where image tarballs are put on hosts before `ctr images import`.
pub const REMOTE_IMAGE_DIR: &str = "/var/lib/kubeforge/images";

/// The local cache: `$KUBEFORGE_CACHE`, else `$XDG_CACHE_HOME/kubeforge`, else
/// `~/.cache/kubeforge`; blobs live under `<root>/sha256/<digest>`.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("KUBEFORGE_CACHE").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
            return PathBuf::from(p).join("kubeforge");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache").join("kubeforge")
    }

    pub fn default_location() -> Cache {
        Cache::new(Cache::default_root())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }
}

/// One file to fetch: where it is and how it is installed.
#[derive(Debug, Clone)]
struct Wanted {
    name: String,
    kind: ArtifactKind,
    rel: String,
    remote_path: String,
    mode: u32,
    image_ref: Option<String>,
}

/// Everything `catalogue` needs from `source`: the binaries, and the image tarballs
/// when the source is a mirror (upstream images are pulled by containerd on hosts).
pub fn wanted_files(source: &Source, catalogue: &Catalogue) -> Vec<(String, String)> {
    wanted(source, catalogue)
        .into_iter()
        .map(|w| (w.name, w.rel))
        .collect()
}

fn wanted(source: &Source, catalogue: &Catalogue) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = catalogue
        .binaries
        .iter()
        .map(|b| Wanted {
            name: b.name.clone(),
            kind: if b.archive {
                ArtifactKind::Archive
            } else {
                ArtifactKind::Binary
            },
            rel: b.path.clone(),
            remote_path: b.remote_path.clone(),
            mode: b.mode,
            image_ref: None,
        })
        .collect();
    if source.provides_images() {
        out.extend(catalogue.images.iter().map(|i| {
            let file = i.tarball.rsplit('/').next().unwrap_or(&i.tarball);
            Wanted {
                name: i.name.clone(),
                kind: ArtifactKind::Image,
                rel: i.tarball.clone(),
                remote_path: format!("{REMOTE_IMAGE_DIR}/{file}"),
                mode: 0o644,
                image_ref: Some(i.reference()),
            }
        }));
    }
    out
}

/// Reads files from a source: HTTP through one client, directories from disk.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher::new()
    }
}

impl Fetcher {
    pub fn new() -> Fetcher {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("kubeforge/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client configuration is static");
        Fetcher { client }
    }

    /// A small text file (a checksum).
    async fn read_text(&self, loc: &Location) -> Result<String, ArtifactsError> {
        match loc {
            Location::Url(url) => {
                let resp = self.get(url).await?;
                resp.text().await.map_err(|source| ArtifactsError::Http {
                    url: url.clone(),
                    source,
                })
            }
            Location::Path(p) => {
                tokio::fs::read_to_string(p)
                    .await
                    .map_err(|source| ArtifactsError::Read {
                        path: p.clone(),
                        source,
                    })
            }
        }
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, ArtifactsError> {
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|source| ArtifactsError::Http {
                url: url.to_string(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(ArtifactsError::HttpStatus {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        Ok(resp)
    }

    /// Stream `loc` into `dest` and return (sha256 hex, size).
    async fn copy_hashing(
        &self,
        loc: &Location,
        dest: &Path,
    ) -> Result<(String, u64), ArtifactsError> {
        let write_err = |source| ArtifactsError::Cache {
            path: dest.to_path_buf(),
            source,
        };
        let mut out = tokio::fs::File::create(dest).await.map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        match loc {
            Location::Url(url) => {
                let mut resp = self.get(url).await?;
                while let Some(chunk) =
                    resp.chunk().await.map_err(|source| ArtifactsError::Http {
                        url: url.clone(),
                        source,
                    })?
                {
                    hasher.update(&chunk);
                    size += chunk.len() as u64;
                    out.write_all(&chunk).await.map_err(write_err)?;
                }
            }
            Location::Path(p) => {
                let read_err = |source| ArtifactsError::Read {
                    path: p.clone(),
                    source,
                };
                let mut input = tokio::fs::File::open(p).await.map_err(read_err)?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = input.read(&mut buf).await.map_err(read_err)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    size += n as u64;
                    out.write_all(&buf[..n]).await.map_err(write_err)?;
                }
            }
        }
        out.flush().await.map_err(write_err)?;
        out.sync_all().await.map_err(write_err)?;
        Ok((hex::encode(hasher.finalize()), size))
    }
}

/// sha256 (hex) and size of a local file, streamed.
pub async fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The published sha256 of every file `catalogue` needs from `source`, without
/// downloading the files: `(name, relative path, digest)`. Used when hosts download
/// directly and to print `artifacts list --checksums`.
pub async fn published_checksums(
    source: &Source,
    catalogue: &Catalogue,
) -> Result<Vec<(String, String, String)>, ArtifactsError> {
    let fetcher = Fetcher::new();
    let mut out = Vec::new();
    for w in wanted(source, catalogue) {
        let loc = source.checksum_location(&w.rel);
        let text = fetcher.read_text(&loc).await?;
        out.push((w.name, w.rel, parse_checksum(&text, &loc.to_string())?));
    }
    Ok(out)
}

/// Fetch and verify everything `catalogue` needs from `source` into `cache`, a few
/// files at a time. Returns the artifacts in catalogue order (binaries, then images).
pub async fn fetch_all(
    source: &Source,
    catalogue: &Catalogue,
    cache: &Cache,
) -> Result<Vec<LocalArtifact>, ArtifactsError> {
    let fetcher = Fetcher::new();
    let dir = cache.root.join("sha256");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|source| ArtifactsError::Cache {
            path: dir.clone(),
            source,
        })?;
    // After a failure no new fetch starts, but the ones in flight finish (and clean up
    // after themselves) instead of being dropped halfway; the first error in catalogue
    // order is returned.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Option<Result<LocalArtifact, ArtifactsError>>> =
        futures::stream::iter(wanted(source, catalogue))
            .map(|w| {
                let failed = &failed;
                let fetcher = &fetcher;
                async move {
                    if failed.load(std::sync::atomic::Ordering::SeqCst) {
                        return None;
                    }
                    let r = fetch_one(fetcher, source, cache, w).await;
                    if r.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Some(r)
                }
            })
            .buffered(3)
            .collect()
            .await;
    let mut out = Vec::with_capacity(results.len());
    for r in results.into_iter().flatten() {
        out.push(r?);
    }
    Ok(out)
}

async fn fetch_one(
    fetcher: &Fetcher,
    source: &Source,
    cache: &Cache,
    w: Wanted,
) -> Result<LocalArtifact, ArtifactsError> {
    let sum_loc = source.checksum_location(&w.rel);
    let expected = parse_checksum(&fetcher.read_text(&sum_loc).await?, &sum_loc.to_string())?;
    let loc = source.location(&w.rel);
    let (blob, size, cached) = fetch_pinned(fetcher, &loc, &expected, cache, &w.name).await?;
    let archive_ref = match w.kind {
        ArtifactKind::Image => Some(archive_reference(&blob).await?),
        ArtifactKind::Binary | ArtifactKind::Archive => None,
    };
    Ok(LocalArtifact {
        name: w.name,
        kind: w.kind,
        path: blob,
        sha256: expected,
        size,
        origin: loc.to_string(),
        remote_path: w.remote_path,
        mode: w.mode,
        image_ref: w.image_ref,
        archive_ref,
        cached,
    })
}

/// Fetch `loc` into the cache unless a verified copy is there, and verify it against the
/// `expected` sha256: `(blob path, size, served from the cache)`. A mismatching download
/// is removed and reported; nothing unverified ever lands in the cache.
pub async fn fetch_pinned(
    fetcher: &Fetcher,
    loc: &Location,
    expected: &str,
    cache: &Cache,
    name: &str,
) -> Result<(PathBuf, u64, bool), ArtifactsError> {
    let dir = cache.root.join("sha256");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|source| ArtifactsError::Cache {
            path: dir.clone(),
            source,
        })?;
    let expected = expected.to_string();
    let blob = cache.blob_path(&expected);
    let mut cached = false;
    let mut size = None;
    if let Ok((actual, len)) = sha256_file(&blob).await {
        if actual == expected {
            cached = true;
            size = Some(len);
        } else {
            tracing::warn!(
                "cached {} has sha256 {actual}, expected {expected}: fetching again",
                blob.display()
            );
            let _ = tokio::fs::remove_file(&blob).await;
        }
    }
    let size = match size {
        Some(s) => s,
        None => {
            let file_name = name.replace('/', "_");
            let part = dir.join(format!(
                ".{expected}.{}.{file_name}.part",
                std::process::id(),
            ));
            // Removed on every early return, also when the caller drops this future
            // (another artifact failed first).
            let guard = PartFile(part.clone());
            let (actual, len) = fetcher.copy_hashing(loc, &part).await?;
            if actual != expected {
                return Err(ArtifactsError::ChecksumMismatch {
                    file: loc.to_string(),
                    expected,
                    actual,
                });
            }
            tokio::fs::rename(&part, &blob)
                .await
                .map_err(|source| ArtifactsError::Cache {
                    path: blob.clone(),
                    source,
                })?;
            std::mem::forget(guard);
            tracing::info!("fetched {name} ({len} bytes) from {loc}");
            len
        }
    };
    Ok((blob, size, cached))
}

/// A temporary download, deleted when dropped.
struct PartFile(PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The first `RepoTags` entry of a docker-archive tarball's `manifest.json`.
pub async fn archive_reference(path: &Path) -> Result<String, ArtifactsError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || archive_reference_blocking(&p))
        .await
        .map_err(|e| ArtifactsError::BadImageArchive {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
}

fn archive_reference_blocking(path: &Path) -> Result<String, ArtifactsError> {
    let bad = |reason: String| ArtifactsError::BadImageArchive {
        path: path.to_path_buf(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|source| ArtifactsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(f));
    let entries = archive
        .entries_with_seek()
        .map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry.path().map_err(|e| bad(e.to_string()))?;
        if name.as_os_str() != "manifest.json" {
            continue;
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text).map_err(|e| bad(e.to_string()))?;
        let manifest: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
        return manifest
            .first()
            .and_then(|m| m.get("RepoTags"))
            .and_then(|t| t.get(0))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| bad("manifest.json has no RepoTags".into()));
    }
    Err(bad("no manifest.json".into()))
}
