//! etcdctl as the node's own etcd image carries it (`/usr/local/bin/etcdctl` in
//! k8s.gcr.io/etcd), run as a one-off container through containerd's `ctr`: it works
//! while the node's etcd is stopped, needs nothing installed on the node, and is the
//! same etcd code as the member. Used to verify snapshots (a restore into a scratch
//! directory checks the database and its sha256 trailer) and to restore one.

use crate::transport::remote::{self, HostError, Redact};
use crate::transport::{Transport, UploadSource, UploadTarget};
use serde::Serialize;

/// Scratch room on the node: snapshots on their way in, restored data directories.
/// Mounted into the etcdctl container at the same path.
pub const WORK_DIR: &str = "/var/lib/kubeforge/etcd";
/// Where the etcd and kube-apiserver manifests wait while a restore runs.
pub const HELD_DIR: &str = "/etc/kubernetes/kubeforge-held";

/// A snapshot file as `etcdctl snapshot save` writes it: the bbolt database followed by
/// the 32-byte sha256 of it (checked by `snapshot restore`).
pub fn snapshot_file(snap: &super::etcd::Snapshot) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(snap.db.len() + 32);
    out.extend_from_slice(&snap.db);
    out.extend_from_slice(&Sha256::digest(&snap.db));
    out
}

/// Check a snapshot file (database + sha256 trailer) before anything uses it.
pub fn check_snapshot_file(file: &[u8]) -> Result<super::etcd::Snapshot, String> {
    use sha2::{Digest, Sha256};
    if file.len() <= 32 + 4096 {
        return Err(format!(
            "{} bytes: too short for an etcd database (truncated?)",
            file.len()
        ));
    }
    let (db, sum) = file.split_at(file.len() - 32);
    let actual = Sha256::digest(db);
    if actual.as_slice() != sum {
        return Err(format!(
            "the sha256 at its end does not match its {} bytes of database (truncated or corrupted)",
            db.len()
        ));
    }
    Ok(super::etcd::Snapshot {
        db: db.to_vec(),
        sha256: hex::encode(actual),
    })
}

/// A shell command running `etcdctl ARGS` from the node's etcd image (the one its etcd
/// manifest names, held or not; else the newest etcd image containerd has).
pub fn command(args: &str) -> String {
    format!(
        "img=$(sed -n 's/^ *image: *//p' {m}/etcd.yaml {HELD_DIR}/etcd.yaml 2>/dev/null | head -n1 | tr -d '\"'); \
[ -n \"$img\" ] || img=$(ctr -n k8s.io images ls -q | grep -E '/etcd:[^@]+$' | sort -V | tail -n1); \
[ -n \"$img\" ] || {{ echo 'no etcd image on this node' >&2; exit 1; }}; \
mkdir -p {WORK_DIR} && chmod 700 {WORK_DIR} && \
ctr -n k8s.io run --rm --net-host --env ETCDCTL_API=3 \
--mount type=bind,src={WORK_DIR},dst={WORK_DIR},options=rbind:rw \
\"$img\" kubeforge-etcdctl-$$ /usr/local/bin/etcdctl {args}",
        m = super::MANIFESTS,
    )
}

/// What `etcdctl snapshot status` says of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub revision: i64,
    pub total_key: i64,
    pub total_size: i64,
}

pub fn parse_status(out: &str) -> Result<Status, String> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("etcdctl snapshot status printed no JSON: {}", out.trim()))?;
    serde_json::from_str(line).map_err(|e| format!("etcdctl snapshot status: {e}: {}", line.trim()))
}

/// Put `file` (a snapshot file) on `host` as `WORK_DIR/<name>.db`; returns its path.
pub async fn upload_snapshot(
    t: &dyn Transport,
    host: &str,
    name: &str,
    file: Vec<u8>,
) -> Result<String, HostError> {
    let path = format!("{WORK_DIR}/{name}.db");
    t.upload(
        UploadSource::Bytes(bytes::Bytes::from(file)),
        &UploadTarget::new(path.clone(), 0o600),
    )
    .await
    .map_err(|source| HostError::Transport {
        host: host.to_string(),
        source,
    })?;
    Ok(path)
}

/// Verify a snapshot already on `host` at `path` with etcd's own code: restore it into
/// a scratch directory (checks the sha256 trailer and rebuilds the membership), then
/// read its status (revision, keys). The scratch directory is removed either way.
pub async fn verify(
    t: &dyn Transport,
    host: &str,
    path: &str,
    secrets: &dyn Redact,
) -> Result<Status, HostError> {
    // Next to the file and named after it: two verifications on one node (the node's
    // own shipping and a `backup collect`) never share a scratch directory.
    let scratch = format!("{path}.verify");
    let restore = command(&format!(
        "snapshot restore {path} --data-dir {scratch} --name verify \
--initial-cluster verify=https://127.0.0.1:2380 --initial-advertise-peer-urls https://127.0.0.1:2380 \
--initial-cluster-token kubeforge-verify"
    ));
    let cmd = format!("rm -rf {scratch}; {restore} >/dev/null; rc=$?; rm -rf {scratch}; exit $rc");
    remote::run(t, host, &cmd, secrets, false).await?;
    let out = remote::run(
        t,
        host,
        &command(&format!("snapshot status -w json {path}")),
        secrets,
        false,
    )
    .await?;
    parse_status(&out).map_err(|message| HostError::Other {
        host: host.to_string(),
        message,
    })
}

/// Restore the snapshot at `path` on `host` into `out_dir` as a new one-member cluster:
/// the member's real name and peer URL and a fresh cluster token (never etcdctl's
/// defaults `default`, `http://localhost:2380`, `etcd-cluster`).
pub fn restore_command(
    path: &str,
    out_dir: &str,
    name: &str,
    peer_url: &str,
    token: &str,
) -> String {
    let restore = command(&format!(
        "snapshot restore {path} --data-dir {out_dir} --name {name} \
--initial-cluster {name}={peer_url} --initial-advertise-peer-urls {peer_url} \
--initial-cluster-token {token}"
    ));
    format!("rm -rf {out_dir}; {restore}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_file_round_trips_and_a_damaged_one_is_refused() {
        let snap = crate::kube::etcd::Snapshot {
            db: vec![7u8; 8192],
            sha256: String::new(),
        };
        let file = snapshot_file(&snap);
        assert_eq!(file.len(), 8192 + 32);
        let back = check_snapshot_file(&file).unwrap();
        assert_eq!(back.db, snap.db);
        let mut bad = file.clone();
        bad[100] ^= 1;
        assert!(check_snapshot_file(&bad)
            .unwrap_err()
            .contains("does not match"));
        assert!(check_snapshot_file(&file[..file.len() - 1])
            .unwrap_err()
            .contains("does not match"));
        assert!(check_snapshot_file(&file[..100])
            .unwrap_err()
            .contains("too short"));
    }

    #[test]
    fn status_is_read_from_etcdctl_json() {
        let s =
            parse_status("{\"hash\":1,\"revision\":4567,\"totalKey\":890,\"totalSize\":4194304}\n")
                .unwrap();
        assert_eq!(
            s,
            Status {
                revision: 4567,
                total_key: 890,
                total_size: 4194304
            }
        );
        assert!(parse_status("Error: bad").is_err());
    }

    #[test]
    fn restore_never_uses_etcdctl_defaults() {
        let c = restore_command(
            "/var/lib/kubeforge/etcd/s.db",
            "/var/lib/kubeforge/etcd/restored",
            "cp-1",
            "https://10.0.0.11:2380",
            "kubeforge-abc",
        );
        assert!(c.contains("--name cp-1 --initial-cluster cp-1=https://10.0.0.11:2380"));
        assert!(c.contains("--initial-cluster-token kubeforge-abc"));
        assert!(!c.contains("localhost:2380"));
        assert!(c.contains("ctr -n k8s.io run --rm"));
    }
}
