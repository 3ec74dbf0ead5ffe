//! Putting verified artifacts on a host through a [`Transport`].
//!
//! - [`install_on`]: push cached files (the transport's upload skips a file whose remote
//!   sha256 already matches), then import image tarballs into containerd's `k8s.io`
//!   namespace (`ctr images import`), re-tagging them when `imageRepository` differs from
//!   the registry written in the tarball. Re-running it changes nothing.
//! - [`install_direct_on`]: hosts download binaries themselves (`curl`), verified against
//!   checksums the operator read from the source; all files are downloaded and checked
//!   before any is moved into place.

use super::fetch::{ArtifactKind, LocalArtifact, REMOTE_ARCHIVE_DIR};
use super::source::Source;
use super::ArtifactsError;
use crate::transport::shell::quote;
use crate::transport::{ExecOutput, Transport, UploadSource, UploadTarget};
use serde::Serialize;

/// What an install did on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    pub host: String,
    /// Files whose content was sent.
    pub sent: Vec<String>,
    /// Files already present with the same sha256.
    pub unchanged: Vec<String>,
    /// Image references imported into containerd.
    pub imported: Vec<String>,
    /// Image references that were already present (tarball unchanged).
    pub images_present: Vec<String>,
    pub bytes_sent: u64,
}

async fn run(t: &dyn Transport, command: &str) -> Result<ExecOutput, ArtifactsError> {
    let out = t
        .exec(command)
        .await
        .map_err(|e| ArtifactsError::Transport(Box::new(e)))?;
    if out.success() {
        Ok(out)
    } else {
        Err(ArtifactsError::Remote {
            host: t.host().to_string(),
            command: command.to_string(),
            exit_code: out.exit_code,
            stderr: out.stderr.trim().to_string(),
        })
    }
}

/// `ctr` against containerd's CRI namespace.
const CTR: &str = "ctr -n k8s.io";

/// Whether containerd on the host has `reference`.
pub async fn image_present(t: &dyn Transport, reference: &str) -> Result<bool, ArtifactsError> {
    let out = run(t, &format!("{CTR} images ls -q name=={}", quote(reference))).await?;
    Ok(out.stdout.lines().any(|l| l.trim() == reference))
}

/// Where an artifact is uploaded: an archive next to the others of its kind (its file
/// is taken out after), anything else to its place.
fn upload_target(a: &LocalArtifact) -> (String, u32) {
    match a.kind {
        ArtifactKind::Archive => (format!("{REMOTE_ARCHIVE_DIR}/{}.tar.gz", a.name), 0o644),
        _ => (a.remote_path.clone(), a.mode),
    }
}

/// Push `artifacts` (all already verified by `fetch_all`) to the host behind `t` and
/// import the images. containerd must be running for images.
pub async fn install_on(
    t: &dyn Transport,
    artifacts: &[LocalArtifact],
) -> Result<InstallReport, ArtifactsError> {
    let mut report = InstallReport {
        host: t.host().to_string(),
        ..Default::default()
    };
    let mut sent_images = Vec::new();
    // Every artifact in one round trip: the host says what it has (its digest cache
    // spares re-reading unchanged binaries), then only what differs is sent.
    let items: Vec<(UploadSource, UploadTarget)> = artifacts
        .iter()
        .map(|a| {
            let (upload_to, mode) = upload_target(a);
            (
                UploadSource::File(a.path.clone()),
                UploadTarget::new(upload_to, mode),
            )
        })
        .collect();
    let outcomes = t
        .upload_all(items)
        .await
        .map_err(|e| ArtifactsError::Transport(Box::new(e)))?;
    let mut extracts = Vec::new();
    for (a, outcome) in artifacts.iter().zip(outcomes) {
        if outcome.sha256 != a.sha256 {
            // The cache file changed under us after verification.
            return Err(ArtifactsError::ChecksumMismatch {
                file: a.path.display().to_string(),
                expected: a.sha256.clone(),
                actual: outcome.sha256,
            });
        }
        if outcome.sent {
            report.sent.push(a.remote_path.clone());
            report.bytes_sent += outcome.bytes;
        } else {
            report.unchanged.push(a.remote_path.clone());
        }
        if a.kind == ArtifactKind::Image && outcome.sent {
            sent_images.push(a.remote_path.clone());
        }
        if a.kind == ArtifactKind::Archive {
            let (upload_to, _) = upload_target(a);
            let dest = std::path::Path::new(&a.remote_path);
            let (dir, file) = (
                dest.parent()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "/".into()),
                dest.file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default(),
            );
            extracts.push(format!(
                "{{ {{ [ -x {dest} ] && [ {up}.extracted -nt {up} ]; }} || {{ tar -xzf {up} -C {dir} {file} && chmod {mode:o} {dest} && touch {up}.extracted; }}; }}",
                dest = quote(&a.remote_path),
                up = quote(&upload_to),
                dir = quote(&dir),
                file = quote(&file),
                mode = a.mode,
            ));
        }
    }
    // The archives' files taken out (where not done already), in one command.
    if !extracts.is_empty() {
        run(t, &extracts.join(" && ")).await?;
    }
    // What containerd has, asked once.
    let present: Vec<String> = if artifacts.iter().any(|a| a.kind == ArtifactKind::Image) {
        run(t, &format!("{CTR} images ls -q"))
            .await?
            .stdout
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    } else {
        Vec::new()
    };
    for a in artifacts.iter().filter(|a| a.kind == ArtifactKind::Image) {
        let wanted = a.image_ref.clone().unwrap_or_else(|| a.name.clone());
        let fresh = sent_images.contains(&a.remote_path);
        if !fresh && present.contains(&wanted) {
            report.images_present.push(wanted);
            continue;
        }
        run(t, &format!("{CTR} images import {}", quote(&a.remote_path))).await?;
        if let Some(inside) = a.archive_ref.as_deref().filter(|r| *r != wanted) {
            run(
                t,
                &format!(
                    "{CTR} images tag --force {} {}",
                    quote(inside),
                    quote(&wanted)
                ),
            )
            .await?;
        }
        if !image_present(t, &wanted).await? {
            return Err(ArtifactsError::ImageMissingAfterImport {
                host: t.host().to_string(),
                reference: wanted,
                tarball: a.remote_path.clone(),
                archive_ref: a.archive_ref.clone().unwrap_or_default(),
            });
        }
        report.imported.push(wanted);
    }
    Ok(report)
}

/// A binary a host downloads itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectDownload {
    pub name: String,
    pub url: String,
    pub sha256: String,
    pub remote_path: String,
    pub mode: u32,
}

/// Exit status of the host script when a download does not match its checksum.
pub const MISMATCH_EXIT: u32 = 65;

/// The shell script a host runs to download `files` with curl, check every sha256, and
/// only then install them. A file already in place with the right digest is skipped.
/// On a mismatch it prints `MISMATCH <url> <expected> <actual>` and exits 65, with
/// nothing installed.
pub fn direct_download_script(files: &[DirectDownload]) -> String {
    let mut s = String::from(
        "set -eu\nstage=$(mktemp -d /var/tmp/kubeforge-dl.XXXXXX)\ntrap 'rm -rf \"$stage\"' EXIT\n",
    );
    for (i, f) in files.iter().enumerate() {
        s.push_str(&format!(
            "if [ \"$(sha256sum {dest} 2>/dev/null | cut -d' ' -f1)\" != {sum} ]; then\n  \
             curl -fsSL --retry 3 --connect-timeout 15 -o \"$stage/{i}\" {url}\n  \
             got=$(sha256sum \"$stage/{i}\" | cut -d' ' -f1)\n  \
             if [ \"$got\" != {sum} ]; then echo \"MISMATCH {url} {sum} $got\" >&2; exit {MISMATCH_EXIT}; fi\nfi\n",
            dest = quote(&f.remote_path),
            sum = quote(&f.sha256),
            url = quote(&f.url),
        ));
    }
    for (i, f) in files.iter().enumerate() {
        s.push_str(&format!(
            "if [ -e \"$stage/{i}\" ]; then install -D -m {mode:o} \"$stage/{i}\" {dest}; echo SENT {dest}; fi\n",
            mode = f.mode,
            dest = quote(&f.remote_path),
        ));
    }
    s
}

/// The downloads for `checksums` (from `published_checksums`) out of an http(s) source.
pub fn direct_downloads(
    source: &Source,
    catalogue: &super::Catalogue,
    checksums: &[(String, String, String)],
) -> Result<Vec<DirectDownload>, ArtifactsError> {
    if matches!(source, Source::Dir { .. }) {
        return Err(ArtifactsError::BadMirror {
            value: source.describe(),
            reason: "hosts can only download from an http(s) source; a directory mirror is pushed from the operator machine".into(),
        });
    }
    catalogue
        .binaries
        .iter()
        .map(|b| {
            let sum = checksums
                .iter()
                .find(|(name, rel, _)| *name == b.name && *rel == b.path)
                .map(|(_, _, s)| s.clone())
                .ok_or_else(|| ArtifactsError::UnknownImage {
                    name: b.name.clone(),
                    known: "no checksum was read for it".into(),
                })?;
            Ok(DirectDownload {
                name: b.name.clone(),
                url: source.location(&b.path).to_string(),
                sha256: sum,
                remote_path: b.remote_path.clone(),
                mode: b.mode,
            })
        })
        .collect()
}

/// Run [`direct_download_script`] on the host behind `t`.
pub async fn install_direct_on(
    t: &dyn Transport,
    files: &[DirectDownload],
) -> Result<InstallReport, ArtifactsError> {
    let script = direct_download_script(files);
    let command = format!("sh -c {}", quote(&script));
    let out = t
        .exec(&command)
        .await
        .map_err(|e| ArtifactsError::Transport(Box::new(e)))?;
    if out.exit_code == MISMATCH_EXIT {
        if let Some(line) = out.stderr.lines().find(|l| l.starts_with("MISMATCH ")) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() == 4 {
                return Err(ArtifactsError::ChecksumMismatch {
                    file: format!("{} (downloaded on {})", parts[1], t.host()),
                    expected: parts[2].to_string(),
                    actual: parts[3].to_string(),
                });
            }
        }
    }
    if !out.success() {
        return Err(ArtifactsError::Remote {
            host: t.host().to_string(),
            command: "download the Kubernetes binaries with curl".into(),
            exit_code: out.exit_code,
            stderr: out.stderr.trim().to_string(),
        });
    }
    let sent: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("SENT "))
        .map(|p| p.trim_matches('\'').to_string())
        .collect();
    let unchanged = files
        .iter()
        .map(|f| f.remote_path.clone())
        .filter(|p| !sent.contains(p))
        .collect();
    Ok(InstallReport {
        host: t.host().to_string(),
        sent,
        unchanged,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{TransportError, UploadOutcome};
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// A host in memory: files by path with their sha256, containerd images, a log.
    #[derive(Default)]
    struct FakeHost {
        files: Mutex<std::collections::HashMap<String, String>>,
        images: Mutex<Vec<String>>,
        log: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Transport for FakeHost {
        fn host(&self) -> &str {
            "fake-1"
        }
        async fn exec(&self, command: &str) -> Result<ExecOutput, TransportError> {
            self.log.lock().unwrap().push(command.to_string());
            let mut stdout = String::new();
            if command == "ctr -n k8s.io images ls -q" {
                for i in self.images.lock().unwrap().iter() {
                    stdout.push_str(&format!("{i}\n"));
                }
            } else if let Some(rest) = command.strip_prefix("ctr -n k8s.io images ls -q name==") {
                let r = rest.trim_matches('\'');
                if self.images.lock().unwrap().iter().any(|i| i == r) {
                    stdout = format!("{r}\n");
                }
            } else if let Some(rest) = command.strip_prefix("ctr -n k8s.io images import ") {
                // The fake "archive" holds the reference it carries as its name.
                let _ = rest;
                self.images
                    .lock()
                    .unwrap()
                    .push("k8s.gcr.io/pause:3.2".into());
            } else if let Some(rest) = command.strip_prefix("ctr -n k8s.io images tag --force ") {
                let to = rest.split(' ').nth(1).unwrap().trim_matches('\'');
                self.images.lock().unwrap().push(to.to_string());
            }
            Ok(ExecOutput {
                exit_code: 0,
                signal: None,
                stdout,
                stderr: String::new(),
            })
        }
        async fn upload(
            &self,
            source: UploadSource,
            target: &UploadTarget,
        ) -> Result<UploadOutcome, TransportError> {
            let UploadSource::File(p) = source else {
                panic!("artifacts are uploaded from files")
            };
            let bytes = std::fs::read(&p).unwrap();
            use sha2::Digest;
            let sum = hex::encode(sha2::Sha256::digest(&bytes));
            let mut files = self.files.lock().unwrap();
            let sent = files.get(&target.path) != Some(&sum);
            files.insert(target.path.clone(), sum.clone());
            Ok(UploadOutcome {
                sent,
                metadata_fixed: false,
                bytes: if sent { bytes.len() as u64 } else { 0 },
                sha256: sum,
            })
        }
        async fn download(&self, _path: &str) -> Result<Vec<u8>, TransportError> {
            unimplemented!()
        }
    }

    fn artifact(
        dir: &std::path::Path,
        name: &str,
        kind: ArtifactKind,
        body: &[u8],
    ) -> LocalArtifact {
        use sha2::Digest;
        let path: PathBuf = dir.join(name);
        std::fs::write(&path, body).unwrap();
        LocalArtifact {
            name: name.into(),
            kind,
            sha256: hex::encode(sha2::Sha256::digest(body)),
            size: body.len() as u64,
            path,
            origin: "test".into(),
            remote_path: match kind {
                ArtifactKind::Binary | ArtifactKind::Archive => format!("/usr/local/bin/{name}"),
                ArtifactKind::Image => format!("/var/lib/kubeforge/images/{name}.tar"),
            },
            mode: 0o755,
            image_ref: (kind == ArtifactKind::Image)
                .then(|| "registry.example.com/pause:3.2".to_string()),
            archive_ref: (kind == ArtifactKind::Image).then(|| "k8s.gcr.io/pause:3.2".to_string()),
            cached: false,
        }
    }

    #[tokio::test]
    async fn second_install_sends_and_imports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let arts = vec![
            artifact(
                dir.path(),
                "kubeadm",
                ArtifactKind::Binary,
                b"kubeadm binary",
            ),
            artifact(dir.path(), "pause", ArtifactKind::Image, b"pause tarball"),
        ];
        let host = FakeHost::default();
        let first = install_on(&host, &arts).await.unwrap();
        assert_eq!(
            first.sent,
            [
                "/usr/local/bin/kubeadm",
                "/var/lib/kubeforge/images/pause.tar"
            ]
        );
        // Imported under the tarball's name, then re-tagged for imageRepository.
        assert_eq!(first.imported, ["registry.example.com/pause:3.2"]);
        assert!(host.log.lock().unwrap().iter().any(|c| *c
            == format!(
                "ctr -n k8s.io images tag --force {} {}",
                quote("k8s.gcr.io/pause:3.2"),
                quote("registry.example.com/pause:3.2")
            )));
        host.log.lock().unwrap().clear();
        let second = install_on(&host, &arts).await.unwrap();
        assert!(second.sent.is_empty(), "{second:?}");
        assert_eq!(second.unchanged.len(), 2);
        assert!(second.imported.is_empty());
        assert_eq!(second.images_present, ["registry.example.com/pause:3.2"]);
        let log = host.log.lock().unwrap();
        assert!(log.iter().all(|c| !c.contains("import")), "{log:?}");
    }

    #[test]
    fn direct_script_checks_every_file_before_installing_any() {
        let files = vec![
            DirectDownload {
                name: "kubeadm".into(),
                url: "https://dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubeadm".into(),
                sha256: "a".repeat(64),
                remote_path: "/usr/local/bin/kubeadm".into(),
                mode: 0o755,
            },
            DirectDownload {
                name: "kubelet".into(),
                url: "https://dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubelet".into(),
                sha256: "b".repeat(64),
                remote_path: "/usr/local/bin/kubelet".into(),
                mode: 0o755,
            },
        ];
        let s = direct_download_script(&files);
        let last_check = s.rfind("MISMATCH").unwrap();
        let first_install = s.find("install -D").unwrap();
        assert!(last_check < first_install, "{s}");
        assert!(
            s.contains(&format!(
                "install -D -m 755 \"$stage/1\" {}",
                quote("/usr/local/bin/kubelet")
            )),
            "{s}"
        );
        assert!(
            s.contains(&format!(
                "curl -fsSL --retry 3 --connect-timeout 15 -o \"$stage/0\" {}",
                quote("https://dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubeadm")
            )),
            "{s}"
        );
    }

    #[tokio::test]
    async fn direct_script_runs_for_real_against_local_files() {
        // The script is plain sh: run it locally with file:// URLs (curl reads them),
        // once with good checksums and once with a wrong one.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("kubeadm.src");
        std::fs::write(&src, b"#!/bin/sh\necho kubeadm\n").unwrap();
        use sha2::Digest;
        let good = hex::encode(sha2::Sha256::digest(std::fs::read(&src).unwrap()));
        let dest = dir.path().join("bin/kubeadm");
        let mut files = vec![DirectDownload {
            name: "kubeadm".into(),
            url: format!("file://{}", src.display()),
            sha256: good.clone(),
            remote_path: dest.display().to_string(),
            mode: 0o755,
        }];
        let wrong_dest = dir.path().join("bin/kubelet");
        files.push(DirectDownload {
            name: "kubelet".into(),
            url: format!("file://{}", src.display()),
            sha256: "0".repeat(64),
            remote_path: wrong_dest.display().to_string(),
            mode: 0o755,
        });
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(direct_download_script(&files))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(MISMATCH_EXIT as i32));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "MISMATCH file://{} {} {good}",
                src.display(),
                "0".repeat(64)
            )),
            "{stderr}"
        );
        assert!(
            !dest.exists(),
            "a file was installed although another one mismatched"
        );
        files.pop();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(direct_download_script(&files))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());
        // Second run: already in place, nothing sent.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(direct_download_script(&files))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("SENT"));
    }
}
