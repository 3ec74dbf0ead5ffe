//! Where artifacts come from: the upstream release site, an http(s) mirror or a local
//! directory mirror. A mirror has upstream's release layout below its root (so a mirror
//! URL is a drop-in for `https://dl.k8s.io/release`) plus the pre-loaded images:
//!
//! ```text
//! <root>/v1.20.2/bin/linux/amd64/kubeadm          <root>/v1.20.2/bin/linux/amd64/kubeadm.sha256
//! <root>/images/v1.20.2/pause-3.2.tar             <root>/images/v1.20.2/pause-3.2.tar.sha256
//! ```
//! Every `.sha256` file holds the hex digest (optionally followed by a file name, as
//! `sha256sum` writes it).

use super::ArtifactsError;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The official release site: binaries under `<base>/<version>/bin/linux/<arch>/`, each
/// with a published `<binary>.sha256`.
pub const UPSTREAM_RELEASE: &str = "https://dl.k8s.io/release";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// The release site; images are pulled by containerd from the registry on each host.
    Upstream { base: String },
    /// An http(s) mirror root with binaries and image tarballs.
    Http { base: String },
    /// A local directory with the same layout (air-gapped operator machines).
    Dir { root: PathBuf },
}

/// One file's place in a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Url(String),
    Path(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Url(u) => f.write_str(u),
            Location::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Source {
    pub fn upstream() -> Source {
        Source::Upstream {
            base: UPSTREAM_RELEASE.to_string(),
        }
    }

    /// `artifacts.mirror` as written: `http://` / `https://` URLs are http mirrors;
    /// `file:///abs`, absolute paths and relative paths (against `base_dir`, the cluster
    /// file's directory) are directory mirrors.
    pub fn parse_mirror(value: &str, base_dir: &Path) -> Result<Source, ArtifactsError> {
        let v = value.trim();
        let bad = |reason: &str| ArtifactsError::BadMirror {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if v.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(rest) = v
            .strip_prefix("http://")
            .or_else(|| v.strip_prefix("https://"))
        {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(bad("no host in the URL"));
            }
            return Ok(Source::Http {
                base: v.trim_end_matches('/').to_string(),
            });
        }
        if let Some(path) = v.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "file:// URLs need an absolute path (file:///srv/mirror)",
                ));
            }
            return Ok(Source::Dir {
                root: PathBuf::from(path),
            });
        }
        if v.contains("://") {
            return Err(bad(
                "unsupported scheme: use http://, https://, file:// or a directory",
            ));
        }
        let p = Path::new(v);
        Ok(Source::Dir {
            root: if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            },
        })
    }

    /// The source a cluster file selects: its mirror, or upstream.
    pub fn from_spec(mirror: Option<&str>, base_dir: &Path) -> Result<Source, ArtifactsError> {
        match mirror {
            Some(m) => Source::parse_mirror(m, base_dir),
            None => Ok(Source::upstream()),
        }
    }

    /// Where `rel` (a catalogue path such as `v1.20.2/bin/linux/amd64/kubeadm`) lives.
    pub fn location(&self, rel: &str) -> Location {
        let rel = rel.trim_start_matches('/');
        match self {
            // cri-tools publishes on its GitHub release page, not under dl.k8s.io.
            Source::Upstream { .. } if rel.starts_with("cri-tools/") => {
                let rest = &rel["cri-tools/".len()..];
                Location::Url(format!(
                    "https://github.com/kubernetes-sigs/cri-tools/releases/download/{rest}"
                ))
            }
            Source::Upstream { base } | Source::Http { base } => {
                Location::Url(format!("{}/{rel}", base.trim_end_matches('/')))
            }
            Source::Dir { root } => Location::Path(root.join(rel)),
        }
    }

    /// Where the checksum of `rel` lives: the same place + `.sha256`.
    pub fn checksum_location(&self, rel: &str) -> Location {
        self.location(&format!("{}.sha256", rel.trim_start_matches('/')))
    }

    /// Whether image tarballs come from this source (mirrors) or hosts pull them from
    /// the registry (upstream).
    pub fn provides_images(&self) -> bool {
        !matches!(self, Source::Upstream { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Upstream { base } => format!("upstream {base}"),
            Source::Http { base } => format!("mirror {base}"),
            Source::Dir { root } => format!("mirror {}", root.display()),
        }
    }
}

/// Parse a `.sha256` file: the first whitespace-separated token, 64 hex digits.
pub fn parse_checksum(text: &str, file: &str) -> Result<String, ArtifactsError> {
    let token = text.split_whitespace().next().unwrap_or("");
    if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(token.to_ascii_lowercase())
    } else {
        Err(ArtifactsError::BadChecksumFile {
            file: file.to_string(),
            found: text.chars().take(80).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_follow_the_release_layout() {
        let s = Source::upstream();
        assert_eq!(
            s.location("v1.20.2/bin/linux/amd64/kubeadm").to_string(),
            "https://dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubeadm"
        );
        assert_eq!(
            s.checksum_location("v1.20.2/bin/linux/amd64/kubeadm")
                .to_string(),
            "https://dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubeadm.sha256"
        );
        assert!(!s.provides_images());
    }

    #[test]
    fn mirrors_parse_from_the_spec_value() {
        let base = Path::new("/etc/clusters");
        assert_eq!(
            Source::parse_mirror("http://127.0.0.1:8080/k8s/", base).unwrap(),
            Source::Http {
                base: "http://127.0.0.1:8080/k8s".into()
            }
        );
        assert_eq!(
            Source::parse_mirror("https://mirror.example.com", base)
                .unwrap()
                .location("images/v1.20.2/pause-3.2.tar"),
            Location::Url("https://mirror.example.com/images/v1.20.2/pause-3.2.tar".into())
        );
        assert_eq!(
            Source::parse_mirror("file:///srv/k8s", base).unwrap(),
            Source::Dir {
                root: "/srv/k8s".into()
            }
        );
        assert_eq!(
            Source::parse_mirror("mirror", base).unwrap(),
            Source::Dir {
                root: "/etc/clusters/mirror".into()
            }
        );
        assert_eq!(
            Source::parse_mirror("/srv/k8s", base)
                .unwrap()
                .checksum_location("v1.20.2/bin/linux/amd64/kubelet"),
            Location::Path("/srv/k8s/v1.20.2/bin/linux/amd64/kubelet.sha256".into())
        );
        for bad in ["", "ftp://x/y", "http://", "file://relative"] {
            assert!(Source::parse_mirror(bad, base).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Source::from_spec(None, base).unwrap(), Source::upstream());
    }

    #[test]
    fn checksum_files() {
        let hex = "a".repeat(64);
        assert_eq!(parse_checksum(&format!("{hex}\n"), "f").unwrap(), hex);
        assert_eq!(
            parse_checksum(&format!("{}  kubeadm\n", "AB".repeat(32)), "f").unwrap(),
            "ab".repeat(32)
        );
        let e = parse_checksum("<html>not found</html>", "x.sha256").unwrap_err();
        assert!(e.to_string().contains("x.sha256"), "{e}");
        assert!(parse_checksum(&"g".repeat(64), "f").is_err());
    }
}
