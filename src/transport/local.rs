//! [`Transport`] on this machine itself: what kubeforge runs on a node (`kubeforge node
//! ship-snapshot`, started by the node's snapshot timer as root) uses the same code
//! paths as over SSH (etcd's own verification through `ctr`, file writes), with the
//! commands run by `sh -c` here.

use super::{ExecOutput, Transport, TransportError, UploadOutcome, UploadSource, UploadTarget};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;

pub struct LocalTransport {
    name: String,
}

impl LocalTransport {
    /// `name` is how messages call this machine (its node name).
    pub fn new(name: impl Into<String>) -> Self {
        LocalTransport { name: name.into() }
    }
}

#[async_trait::async_trait]
impl Transport for LocalTransport {
    fn host(&self) -> &str {
        &self.name
    }

    async fn exec(&self, command: &str) -> Result<ExecOutput, TransportError> {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| TransportError::LocalFile {
                path: "/bin/sh".into(),
                source,
            })?;
        let signal = {
            use std::os::unix::process::ExitStatusExt;
            out.status.signal().map(|s| format!("signal {s}"))
        };
        Ok(ExecOutput {
            exit_code: out.status.code().map(|c| c as u32).unwrap_or(255),
            signal,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn upload(
        &self,
        source: UploadSource,
        target: &UploadTarget,
    ) -> Result<UploadOutcome, TransportError> {
        let failed = |detail: String| TransportError::Upload {
            host: self.name.clone(),
            path: target.path.clone(),
            detail,
        };
        let data = match source {
            UploadSource::Bytes(b) => b.to_vec(),
            UploadSource::File(p) => tokio::fs::read(&p)
                .await
                .map_err(|source| TransportError::LocalFile { path: p, source })?,
        };
        let sha256 = hex::encode(Sha256::digest(&data));
        let path = std::path::Path::new(&target.path);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        let tmp = format!("{}.kubeforge-tmp", target.path);
        tokio::fs::write(&tmp, &data)
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(target.mode))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(UploadOutcome {
            sent: true,
            metadata_fixed: false,
            bytes: data.len() as u64,
            sha256,
        })
    }

    async fn download(&self, path: &str) -> Result<Vec<u8>, TransportError> {
        tokio::fs::read(path)
            .await
            .map_err(|source| TransportError::LocalFile {
                path: path.into(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_commands_and_writes_files_here() {
        let t = LocalTransport::new("here");
        let o = t.exec("echo out; echo err >&2; exit 3").await.unwrap();
        assert_eq!(
            (o.exit_code, o.stdout.as_str(), o.stderr.as_str()),
            (3, "out\n", "err\n")
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/file");
        let target = UploadTarget::new(p.to_string_lossy(), 0o600);
        let out = t.upload("hello".into(), &target).await.unwrap();
        assert_eq!(out.bytes, 5);
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(t.download(&p.to_string_lossy()).await.unwrap(), b"hello");
    }
}
