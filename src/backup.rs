//! etcd snapshots in the state store: taken on one healthy member (or by the
//! control-plane nodes' timer and collected), verified with etcd's own code on the node
//! (a restore into a scratch directory, then `snapshot status`), encrypted with the
//! state key, stored with what they are (`snapshots/<name>.json`), kept to
//! `spec.backup.keep`. `kubeforge backup`, the etcd-backup phase, the upgrade's
//! pre-upgrade snapshot and `kubeforge restore` all go through here.

use crate::kube::{etcd, etcdctl};
use crate::phase::exec::Runtime;
use crate::phase::PhaseError;
use crate::render::views::SNAPSHOT_TIMER_DIR;
use crate::spec::{Host, LoadedCluster};
use crate::state::StateStore;
use crate::transport::remote::{self, HostError, Redact};
use crate::transport::Transport;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a stored snapshot is (no secret in it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupMeta {
    pub name: String,
    pub taken: DateTime<Utc>,
    /// `manual` (kubeforge backup), `timer`, `pre-upgrade`.
    pub trigger: String,
    /// The control-plane node whose etcd member gave it.
    pub source: String,
    #[serde(default)]
    pub etcd_version: String,
    #[serde(default)]
    pub kubernetes_version: String,
    pub revision: i64,
    pub total_keys: i64,
    /// Size of the database (the stored object is the encrypted file).
    pub db_bytes: u64,
    pub sha256: String,
    /// The members when it was taken, `name=peerURL`.
    #[serde(default)]
    pub members: Vec<String>,
}

/// A stored snapshot as `backup list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub name: String,
    /// Encrypted size in the store.
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<BackupMeta>,
}

impl Listed {
    /// When it was taken: its metadata, else the time in its name.
    pub fn taken(&self) -> Option<DateTime<Utc>> {
        self.meta
            .as_ref()
            .map(|m| m.taken)
            .or_else(|| time_in_name(&self.name))
    }
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// The `YYYYmmddTHHMMSSZ` at the end of a snapshot name.
pub fn time_in_name(name: &str) -> Option<DateTime<Utc>> {
    let last = name.rsplit('-').next()?;
    chrono::NaiveDateTime::parse_from_str(last, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|n| n.and_utc())
}

fn host_err(phase: &str, host: &str, message: String) -> PhaseError {
    PhaseError::host(
        phase,
        HostError::Other {
            host: host.to_string(),
            message,
        },
    )
}

fn state_err(phase: &str) -> impl Fn(crate::state::StateError) -> PhaseError + '_ {
    move |source| PhaseError::State {
        phase: phase.to_string(),
        source,
    }
}

/// Verify `snap` on `host` (its etcd image), then store it encrypted as `name` with
/// its metadata. Nothing is stored when the verification fails.
#[allow(clippy::too_many_arguments)]
pub async fn store_verified(
    phase: &str,
    t: &dyn Transport,
    host: &str,
    store: &StateStore,
    secrets: &dyn Redact,
    name: &str,
    trigger: &str,
    taken: DateTime<Utc>,
    kubernetes_version: &str,
    snap: &etcd::Snapshot,
) -> Result<BackupMeta, PhaseError> {
    let file = etcdctl::snapshot_file(snap);
    let path = etcdctl::upload_snapshot(t, host, name, file.clone())
        .await
        .map_err(|e| PhaseError::host(phase, e))?;
    let verified = etcdctl::verify(t, host, &path, secrets).await;
    let _ = t.exec(&format!("rm -f {path}")).await;
    let status = verified.map_err(|e| {
        host_err(
            phase,
            host,
            format!("snapshot {name} failed verification, not stored: {e}"),
        )
    })?;
    let etcd_version = etcd::version(t, host, secrets).await.unwrap_or_default();
    let members = etcd::members(t, host, secrets)
        .await
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    format!(
                        "{}={}",
                        m.name,
                        m.peer_urls.first().map(String::as_str).unwrap_or("-")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let meta = BackupMeta {
        name: name.to_string(),
        taken,
        trigger: trigger.to_string(),
        source: host.to_string(),
        etcd_version,
        kubernetes_version: kubernetes_version.to_string(),
        revision: status.revision,
        total_keys: status.total_key,
        db_bytes: snap.db.len() as u64,
        sha256: snap.sha256.clone(),
        members,
    };
    store
        .put_snapshot(name, &file)
        .await
        .map_err(state_err(phase))?;
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| PhaseError::Gate {
        phase: phase.to_string(),
        message: format!("cannot write the snapshot's metadata: {e}"),
    })?;
    store
        .put_snapshot_meta(name, &json)
        .await
        .map_err(state_err(phase))?;
    Ok(meta)
}

/// Take a snapshot now from the member on `host` (exactly one endpoint) and store it
/// verified as `<prefix>-<time>`.
#[allow(clippy::too_many_arguments)]
pub async fn take(
    phase: &str,
    t: &dyn Transport,
    host: &str,
    store: &StateStore,
    secrets: &dyn Redact,
    prefix: &str,
    trigger: &str,
    kubernetes_version: &str,
) -> Result<BackupMeta, PhaseError> {
    let now = Utc::now();
    let snap = etcd::snapshot(t, host, secrets)
        .await
        .map_err(|e| PhaseError::host(phase, e))?;
    let name = format!("{prefix}-{}", stamp(now));
    store_verified(
        phase,
        t,
        host,
        store,
        secrets,
        &name,
        trigger,
        now,
        kubernetes_version,
        &snap,
    )
    .await
}

/// Bring the timer's snapshots from the control-plane nodes that answer into the store
/// (those not there yet), each verified first. Returns what was stored and, per host,
/// what could not be (a corrupted file is named and left on the node).
pub async fn collect(
    phase: &str,
    rt: &Runtime,
    c: &LoadedCluster,
    store: &StateStore,
    secrets: &dyn Redact,
) -> Result<(Vec<BackupMeta>, Vec<String>), PhaseError> {
    let stored: Vec<String> = store
        .snapshots()
        .await
        .map_err(state_err(phase))?
        .into_iter()
        .map(|i| i.name)
        .collect();
    let mut got = Vec::new();
    let mut problems = Vec::new();
    for h in c.topology.control_planes() {
        let Ok(s) = crate::phase::exec::session(rt, h).await else {
            continue;
        };
        let Ok(out) = remote::run(
            s.as_ref(),
            &h.name,
            &format!(
                "ls -1 {SNAPSHOT_TIMER_DIR} 2>/dev/null | grep -E '^auto-.*\\.stream$' || true"
            ),
            secrets,
            false,
        )
        .await
        else {
            continue;
        };
        for file in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some(name) = file.strip_suffix(".stream") else {
                continue;
            };
            if stored.iter().any(|n| n == name) || !StateStore::valid_snapshot_name(name) {
                continue;
            }
            match collect_one(phase, s.as_ref(), h, store, secrets, name, c).await {
                Ok(m) => got.push(m),
                Err(e) => problems.push(format!("{}: {name}: {e}", h.name)),
            }
        }
    }
    Ok((got, problems))
}

async fn collect_one(
    phase: &str,
    t: &dyn Transport,
    h: &Host,
    store: &StateStore,
    secrets: &dyn Redact,
    name: &str,
    c: &LoadedCluster,
) -> Result<BackupMeta, PhaseError> {
    let path = format!("{SNAPSHOT_TIMER_DIR}/{name}.stream");
    let stream = remote::download(t, &h.name, &path)
        .await
        .map_err(|e| PhaseError::host(phase, e))?;
    let snap = etcd::parse_snapshot_stream(&stream).map_err(|e| host_err(phase, &h.name, e))?;
    let taken = time_in_name(name).unwrap_or_else(Utc::now);
    let version = c.cluster.spec.kubernetes_version.clone();
    store_verified(
        phase, t, &h.name, store, secrets, name, "timer", taken, &version, &snap,
    )
    .await
}

/// Every stored snapshot with its metadata, oldest first.
pub async fn list(store: &StateStore) -> Result<Vec<Listed>, crate::state::StateError> {
    let mut out = Vec::new();
    for i in store.snapshots().await? {
        let meta = match store.snapshot_meta(&i.name).await {
            Ok(Some(b)) => serde_json::from_slice(&b).ok(),
            _ => None,
        };
        out.push(Listed {
            name: i.name,
            size: i.size,
            meta,
        });
    }
    out.sort_by_key(|l| l.taken());
    Ok(out)
}

/// Which snapshots retention removes: of the manual and timer ones (not those taken
/// before an upgrade), all but the newest `keep`.
pub fn expired(listed: &[Listed], keep: usize) -> Vec<String> {
    let mut kept: Vec<&Listed> = listed
        .iter()
        .filter(|l| l.name.starts_with("backup-") || l.name.starts_with("auto-"))
        .collect();
    kept.sort_by_key(|l| std::cmp::Reverse(l.taken()));
    kept.iter().skip(keep).map(|l| l.name.clone()).collect()
}

/// Apply retention (`spec.backup.keep`); returns the names removed.
pub async fn prune(
    store: &StateStore,
    keep: usize,
) -> Result<Vec<String>, crate::state::StateError> {
    let listed = list(store).await?;
    let gone = expired(&listed, keep.max(1));
    for n in &gone {
        store.delete_snapshot(n).await?;
    }
    Ok(gone)
}

/// The snapshot a restore uses: `wanted`, else the newest one stored.
pub fn choose<'a>(listed: &'a [Listed], wanted: Option<&str>) -> Result<&'a Listed, String> {
    match wanted {
        Some(w) => listed.iter().find(|l| l.name == w).ok_or_else(|| {
            format!(
                "no snapshot `{w}` in the state store ({} stored: `kubeforge backup list`)",
                listed.len()
            )
        }),
        None => listed
            .iter()
            .max_by_key(|l| l.taken())
            .ok_or_else(|| "the state store holds no etcd snapshot: nothing to restore from (`kubeforge backup` takes one)".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str) -> Listed {
        Listed {
            name: name.into(),
            size: 1,
            meta: None,
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_never_touches_pre_upgrade_snapshots() {
        let listed = vec![
            l("backup-20261101T000000Z"),
            l("auto-cp-1-20261102T000000Z"),
            l("pre-upgrade-v1.20.3-20261001T000000Z"),
            l("auto-cp-2-20261103T000000Z"),
        ];
        assert_eq!(
            expired(&listed, 2),
            vec!["backup-20261101T000000Z".to_string()]
        );
        assert!(expired(&listed, 5).is_empty());
        assert_eq!(
            choose(&listed, None).unwrap().name,
            "auto-cp-2-20261103T000000Z"
        );
        assert!(choose(&listed, Some("nope"))
            .unwrap_err()
            .contains("backup list"));
        assert!(choose(&[], None).unwrap_err().contains("no etcd snapshot"));
    }

    #[test]
    fn the_time_is_read_from_the_name() {
        let t = time_in_name("auto-cp-1-20261129T071500Z").unwrap();
        assert_eq!(stamp(t), "20261129T071500Z");
        assert!(time_in_name("backup-x").is_none());
    }
}
