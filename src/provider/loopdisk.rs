//! Loop-backed block devices for docker machines: what a worker of a local cluster
//! offers Rook-Ceph as raw disks.
//!
//! Each disk is a sparse file `<dir>/<machine>-disk<N>.img` (dir: $KUBEFORGE_DISK_DIR,
//! default /var/lib/kubeforge/disks) attached to a free loop device with util-linux's
//! `losetup`; the machine gets the device under the same name (`/dev/loop7`), so the
//! kernel's view (/sys/block/loop7) and the device node agree for tools such as lsblk
//! and ceph-volume. The machines share the host's kernel and /sys: name the devices in
//! `spec.addons.rookCeph.nodes[].devices` (`kubeforge state show` lists them) rather
//! than a `^loop` filter that would also match other machines' disks.
//!
//! Re-running finds the file and its attachment again; `release` detaches and removes a
//! machine's disks.

use std::path::{Path, PathBuf};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum LoopDiskError {
    #[error("cannot prepare the disk file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists with {found} bytes, the cluster file asks for {wanted}: delete the machine to resize its disks")]
    Size {
        path: PathBuf,
        found: u64,
        wanted: u64,
    },
    #[error("`losetup {args}` failed: {message} (loop devices need root and /dev/loop-control)")]
    Losetup { args: String, message: String },
}

/// An attached disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDisk {
    pub file: PathBuf,
    /// `/dev/loopN`
    pub device: String,
    pub bytes: u64,
}

pub fn disk_dir() -> PathBuf {
    std::env::var_os("KUBEFORGE_DISK_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kubeforge/disks"))
}

pub fn file_for(dir: &Path, machine: &str, index: usize) -> PathBuf {
    dir.join(format!("{machine}-disk{}.img", index + 1))
}

async fn losetup(args: &[&str]) -> Result<String, LoopDiskError> {
    let err = |message: String| LoopDiskError::Losetup {
        args: args.join(" "),
        message,
    };
    let out = Command::new("losetup")
        .args(args)
        .output()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Loop devices currently backed by `file`.
async fn attached(file: &Path) -> Result<Vec<String>, LoopDiskError> {
    let f = file.to_string_lossy();
    let out = losetup(&["--noheadings", "--output", "NAME", "--associated", &f]).await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Make disk `index` of `machine` exist with `bytes` and be attached; idempotent.
pub async fn ensure(
    dir: &Path,
    machine: &str,
    index: usize,
    bytes: u64,
) -> Result<LoopDisk, LoopDiskError> {
    let path = file_for(dir, machine, index);
    let file_err = |source| LoopDiskError::File {
        path: path.clone(),
        source,
    };
    tokio::fs::create_dir_all(dir).await.map_err(file_err)?;
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.len() != bytes => {
            return Err(LoopDiskError::Size {
                path,
                found: m.len(),
                wanted: bytes,
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Sparse: takes no space until written.
            let f = tokio::fs::File::create(&path).await.map_err(file_err)?;
            f.set_len(bytes).await.map_err(file_err)?;
        }
        Err(e) => return Err(file_err(e)),
    }
    if let Some(dev) = attached(&path).await?.into_iter().next() {
        return Ok(LoopDisk {
            file: path,
            device: dev,
            bytes,
        });
    }
    let dev = losetup(&["--find", "--show", &path.to_string_lossy()]).await?;
    Ok(LoopDisk {
        file: path,
        device: dev,
        bytes,
    })
}

/// Detach and delete every disk of `machine`; nothing there is success.
pub async fn release(dir: &Path, machine: &str) -> Result<usize, LoopDiskError> {
    let prefix = format!("{machine}-disk");
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(LoopDiskError::File {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut removed = 0;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|source| LoopDiskError::File {
            path: dir.to_path_buf(),
            source,
        })?
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        // `<machine>-disk<N>.img` only: `cp-1` must not take `cp-10`'s disks.
        let Some(num) = rest.strip_suffix(".img") else {
            continue;
        };
        if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let path = entry.path();
        for dev in attached(&path).await? {
            losetup(&["--detach", &dev]).await?;
        }
        tokio::fs::remove_file(&path)
            .await
            .map_err(|source| LoopDiskError::File {
                path: path.clone(),
                source,
            })?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_files_are_named_per_machine_and_index() {
        let d = Path::new("/d");
        assert_eq!(
            file_for(d, "c-worker-1", 0),
            PathBuf::from("/d/c-worker-1-disk1.img")
        );
        assert_eq!(
            file_for(d, "c-worker-1", 1),
            PathBuf::from("/d/c-worker-1-disk2.img")
        );
    }
}
