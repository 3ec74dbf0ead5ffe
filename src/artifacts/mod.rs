//! Kubernetes artifacts: what a version needs, where it comes from, fetching with sha256
//! verification into a local cache, and installing on hosts. See `docs/artifacts.md`.
//!
//! The `prepare-hosts` phase calls, in order:
//! ```text
//! let catalogue = Catalogue::for_version(&version)?            // + with_image_repository / without_images
//! let source    = Source::from_spec(spec.artifacts.mirror.as_deref(), base_dir)?;
//! let files     = fetch_all(&source, &catalogue, &Cache::default_location()).await?;  // all verified
//! for host: install_on(transport, &files).await?               // upload (sha-skip) + ctr import
//! ```

pub mod catalogue;
pub mod fetch;
pub mod install;
pub mod source;

pub use catalogue::{
    Arch, BinaryArtifact, Catalogue, HostRequirement, ImageArtifact, ImageRole, BIN_DIR,
};
pub use fetch::{
    fetch_all, published_checksums, sha256_file, ArtifactKind, Cache, LocalArtifact,
    REMOTE_IMAGE_DIR,
};
pub use install::{
    direct_download_script, direct_downloads, install_direct_on, install_on, DirectDownload,
    InstallReport,
};
pub use source::{Location, Source, UPSTREAM_RELEASE};

use crate::error::ExitKind;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    #[error(
        "kubeforge has no artifact catalogue for Kubernetes {version} (it knows 1.{}-1.{})",
        catalogue::MIN_MINOR,
        catalogue::MAX_MINOR
    )]
    UnsupportedVersion { version: String },
    #[error("unknown image {name:?} ({known})")]
    UnknownImage { name: String, known: String },
    #[error("invalid artifacts.mirror {value:?}: {reason}")]
    BadMirror { value: String, reason: String },
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}; nothing was installed")]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{file} is not a sha256 checksum file (want 64 hex digits, found {found:?})")]
    BadChecksumFile { file: String, found: String },
    #[error("cannot download {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to the artifact cache at {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a docker-archive image tarball: {reason}")]
    BadImageArchive { path: PathBuf, reason: String },
    #[error("cannot install artifacts")]
    Transport(#[source] Box<crate::transport::TransportError>),
    #[error("`{command}` failed on {host} with exit code {exit_code}: {stderr}")]
    Remote {
        host: String,
        command: String,
        exit_code: u32,
        stderr: String,
    },
    #[error("{reference} is not in containerd on {host} after importing {tarball} (the tarball holds {archive_ref:?})")]
    ImageMissingAfterImport {
        host: String,
        reference: String,
        tarball: String,
        archive_ref: String,
    },
}

impl ArtifactsError {
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            ArtifactsError::UnsupportedVersion { .. }
            | ArtifactsError::UnknownImage { .. }
            | ArtifactsError::BadMirror { .. } => ExitKind::Input,
            ArtifactsError::Transport(_) => ExitKind::Ssh,
            ArtifactsError::Remote { .. } | ArtifactsError::ImageMissingAfterImport { .. } => {
                ExitKind::Remote
            }
            _ => ExitKind::Internal,
        }
    }
}
