//! etcd as kubeadm runs it (stacked, one member per control-plane node), asked through
//! its v3 JSON gateway on the node's own client port with the health-check client
//! certificate kubeadm makes: member list, health, removal.

use crate::transport::remote::{self, HostError, Redact};
use crate::transport::Transport;
use serde::Serialize;

pub(crate) const CURL: &str = "curl -sS --max-time 5 --cacert /etc/kubernetes/pki/etcd/ca.crt \
--cert /etc/kubernetes/pki/etcd/healthcheck-client.crt \
--key /etc/kubernetes/pki/etcd/healthcheck-client.key";

/// One etcd member. `name` is empty for a member that was added but never started (a
/// join that failed half-way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The member id as etcd prints it (decimal in the JSON gateway; shown in hex).
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl Member {
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }
    /// The id as `etcdctl` shows it.
    pub fn hex_id(&self) -> String {
        format!("{:x}", self.id)
    }
    /// The host part of the first peer URL (`https://10.0.0.11:2380` -> `10.0.0.11`).
    pub fn peer_host(&self) -> Option<String> {
        let u = self.peer_urls.first()?;
        let rest = u.split("://").nth(1)?;
        let host = match rest.strip_prefix('[') {
            Some(v6) => v6.split(']').next()?,
            None => rest.rsplit_once(':').map(|(h, _)| h).unwrap_or(rest),
        };
        Some(host.to_string())
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// The members in a `/v3/cluster/member/list` answer.
pub fn parse_members(json: &str) -> Result<Vec<Member>, String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("etcd member list is not JSON ({e}): {}", json.trim()))?;
    let Some(ms) = v["members"].as_array() else {
        return Err(format!("etcd member list without members: {}", json.trim()));
    };
    ms.iter()
        .map(|m| {
            // The gateway prints uint64 as a string.
            let id = match &m["ID"] {
                serde_json::Value::String(s) => s.parse::<u64>().ok(),
                serde_json::Value::Number(n) => n.as_u64(),
                _ => None,
            }
            .ok_or_else(|| format!("etcd member without an ID: {m}"))?;
            Ok(Member {
                id,
                name: m["name"].as_str().unwrap_or_default().to_string(),
                peer_urls: strings(&m["peerURLs"]),
                client_urls: strings(&m["clientURLs"]),
            })
        })
        .collect()
}

/// The members as the etcd on `host` (a control-plane node) sees them.
pub async fn members(
    t: &dyn Transport,
    host: &str,
    secrets: &dyn Redact,
) -> Result<Vec<Member>, HostError> {
    let cmd = format!("{CURL} -X POST https://127.0.0.1:2379/v3/cluster/member/list");
    let out = remote::run(t, host, &cmd, secrets, false).await?;
    parse_members(&out).map_err(|message| HostError::Other {
        host: host.to_string(),
        message,
    })
}

/// Whether `url` is an etcd client URL safe to hand to a shell (`https://` and a host
/// and port of letters, digits, `.:[]-`).
pub fn client_url_ok(url: &str) -> bool {
    url.strip_prefix("https://").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:[]-".contains(&b))
    })
}

/// Whether the member serving `client_url` answers its health endpoint with
/// `"health":"true"`, asked from `t`; the answer otherwise.
pub async fn health(t: &dyn Transport, client_url: &str) -> Result<(), String> {
    if !client_url_ok(client_url) {
        return Err(format!("`{client_url}` is not an etcd client URL"));
    }
    let cmd = format!("{CURL} {client_url}/health");
    match t.exec(&cmd).await {
        Ok(o) if o.success() && o.stdout.replace(' ', "").contains("\"health\":\"true\"") => Ok(()),
        Ok(o) => Err(format!("{}{}", o.stdout.trim(), o.stderr.trim())),
        Err(e) => Err(e.to_string()),
    }
}

/// Ids of the members whose health endpoint answers true, asked from `t`.
pub async fn healthy(t: &dyn Transport, members: &[Member]) -> Vec<u64> {
    let mut ids = Vec::new();
    for m in members {
        if let Some(url) = m.client_urls.first() {
            if health(t, url).await.is_ok() {
                ids.push(m.id);
            }
        }
    }
    ids
}

/// Where a snapshot stream is written on the control-plane node while it is taken.
pub const SNAPSHOT_STREAM: &str = "/var/lib/kubeforge/etcd-snapshot.stream";

/// A verified etcd snapshot: the bbolt database and what it is.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub db: Vec<u8>,
    /// sha256 of `db` (hex), as etcd sent it after the database.
    pub sha256: String,
}

/// The database in an etcd `Maintenance/Snapshot` answer from the v3 JSON gateway: one
/// JSON object per chunk (`{"result":{"blob":"<base64>",...}}`), the last chunk being
/// the sha256 of everything before it. Checked here; an error names what is wrong.
pub fn parse_snapshot_stream(stream: &[u8]) -> Result<Snapshot, String> {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let mut all = Vec::new();
    let mut chunks = 0usize;
    for v in serde_json::Deserializer::from_slice(stream).into_iter::<serde_json::Value>() {
        let v =
            v.map_err(|e| format!("the snapshot stream is not JSON after {chunks} chunks ({e})"))?;
        if let Some(err) = v.get("error") {
            return Err(format!("etcd refused the snapshot: {err}"));
        }
        let blob = v["result"]["blob"].as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .map_err(|e| format!("snapshot chunk {chunks} is not base64 ({e})"))?;
        all.extend_from_slice(&bytes);
        chunks += 1;
    }
    if all.len() <= 32 {
        return Err(format!(
            "the snapshot stream holds {} bytes in {chunks} chunks: no database",
            all.len()
        ));
    }
    let (db, sum) = all.split_at(all.len() - 32);
    let actual = Sha256::digest(db);
    if actual.as_slice() != sum {
        return Err(format!(
            "the snapshot's checksum does not match its {} bytes (truncated or corrupted in transit)",
            db.len()
        ));
    }
    Ok(Snapshot {
        sha256: hex::encode(actual),
        db: db.to_vec(),
    })
}

/// Take a snapshot from the etcd on `host` (one member, through its local client port:
/// a snapshot is asked of exactly one member), bring it to the operator's machine and
/// check it. The stream file on the host is removed afterwards.
pub async fn snapshot(
    t: &dyn Transport,
    host: &str,
    secrets: &dyn Redact,
) -> Result<Snapshot, HostError> {
    let cmd = format!(
        "mkdir -p /var/lib/kubeforge && umask 077 && {CURL} --max-time 600 --fail -X POST -d '{{}}' \
https://127.0.0.1:2379/v3/maintenance/snapshot -o {SNAPSHOT_STREAM}.part && mv {SNAPSHOT_STREAM}.part {SNAPSHOT_STREAM}"
    );
    remote::run(t, host, &cmd, secrets, false).await?;
    let stream = remote::download(t, host, SNAPSHOT_STREAM).await;
    let _ = t.exec(&format!("rm -f {SNAPSHOT_STREAM}")).await;
    parse_snapshot_stream(&stream?).map_err(|message| HostError::Other {
        host: host.to_string(),
        message,
    })
}

/// The etcd server version of the member on `host` (`3.4.13`).
pub async fn version(
    t: &dyn Transport,
    host: &str,
    secrets: &dyn Redact,
) -> Result<String, HostError> {
    let out = remote::run(
        t,
        host,
        &format!("{CURL} https://127.0.0.1:2379/version"),
        secrets,
        false,
    )
    .await?;
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["etcdserver"].as_str().map(str::to_string))
        .ok_or_else(|| HostError::Other {
            host: host.to_string(),
            message: format!("etcd /version answered {}", out.trim()),
        })
}

/// What the member on `host` says of itself (`/v3/maintenance/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalStatus {
    /// It is its cluster's leader now.
    pub leader: bool,
    pub db_size_bytes: Option<u64>,
}

/// The status of the member on `host`, asked of itself.
pub async fn local_status(
    t: &dyn Transport,
    host: &str,
    secrets: &dyn Redact,
) -> Result<LocalStatus, HostError> {
    let out = remote::run(
        t,
        host,
        &format!("{CURL} -X POST -d '{{}}' https://127.0.0.1:2379/v3/maintenance/status"),
        secrets,
        false,
    )
    .await?;
    parse_local_status(&out).map_err(|message| HostError::Other {
        host: host.to_string(),
        message,
    })
}

fn parse_local_status(out: &str) -> Result<LocalStatus, String> {
    let v: serde_json::Value = serde_json::from_str(out)
        .map_err(|e| format!("etcd status is not JSON ({e}): {}", out.trim()))?;
    Ok(LocalStatus {
        leader: v["leader"].is_string() && v["leader"] == v["header"]["member_id"],
        db_size_bytes: v["dbSize"].as_str().and_then(|d| d.parse().ok()),
    })
}

/// Wait until the member serving `client_url` answers healthy, at most `limit`; the
/// last answer otherwise.
pub async fn wait_healthy(
    t: &dyn Transport,
    client_url: &str,
    limit: std::time::Duration,
) -> Result<(), String> {
    let start = std::time::Instant::now();
    loop {
        match health(t, client_url).await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > limit => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_secs(2)).await,
        }
    }
}

/// Remove member `id`, asked of the etcd on `host` (a healthy member).
pub async fn remove_member(
    t: &dyn Transport,
    host: &str,
    id: u64,
    secrets: &dyn Redact,
) -> Result<(), HostError> {
    let cmd = format!(
        "{CURL} -X POST https://127.0.0.1:2379/v3/cluster/member/remove -d '{{\"ID\":\"{id}\"}}'"
    );
    let out = remote::run(t, host, &cmd, secrets, false).await?;
    if out.contains("\"error\"") {
        return Err(HostError::Other {
            host: host.to_string(),
            message: format!("etcd refused to remove member {id:x}: {}", out.trim()),
        });
    }
    Ok(())
}

/// Members that must go before a control-plane join can succeed: kubeadm checks every
/// member, so one that never started (a failed earlier join) or whose machine is gone
/// for good blocks every join. `gone(peer_host)` tells whether the machine at a peer
/// address is gone (a machine that merely does not answer is not: it may come back).
pub fn stale(members: &[Member], gone: impl Fn(&str) -> bool) -> Vec<&Member> {
    members
        .iter()
        .filter(|m| !m.started() || m.peer_host().is_none_or(|h| gone(&h)))
        .collect()
}

/// Whether removing `n` of `total` members keeps a quorum of the members left healthy:
/// a majority of the current membership must be healthy for a removal to be accepted.
pub fn quorum_holds(total: usize, healthy: usize) -> bool {
    healthy > total / 2
}

/// Whether removing `removing` (member ids, in this order) one at a time keeps etcd
/// available: after each removal a majority of the members left must be healthy, and
/// at least one member must be left. The refusal says which removal breaks it.
pub fn removals_keep_quorum(
    members: &[Member],
    healthy: &[u64],
    removing: &[(u64, String)],
) -> Result<(), String> {
    let mut left: Vec<&Member> = members.iter().collect();
    for (id, name) in removing {
        if !left.iter().any(|m| m.id == *id) {
            continue;
        }
        left.retain(|m| m.id != *id);
        let up = left.iter().filter(|m| healthy.contains(&m.id)).count();
        if left.is_empty() {
            return Err(format!(
                "removing {name} would leave etcd without members (the cluster's data would be gone)"
            ));
        }
        if !quorum_holds(left.len(), up) {
            return Err(format!(
                "removing {name} would leave {} etcd members of which {up} are healthy: that is no quorum and the API would stop. Bring the unhealthy members back (or remove them first) and try again",
                left.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_are_checked_one_at_a_time_against_the_members_left() {
        let m = |id: u64, name: &str| Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://10.0.0.{id}:2380")],
            client_urls: vec![],
        };
        let members = [m(1, "cp-1"), m(2, "cp-2"), m(3, "cp-3")];
        let r = |ids: &[u64]| -> Vec<(u64, String)> {
            ids.iter().map(|i| (*i, format!("cp-{i}"))).collect()
        };
        // All healthy: 3 -> 2 -> 1 keeps a quorum at each step.
        assert!(removals_keep_quorum(&members, &[1, 2, 3], &r(&[3, 2])).is_ok());
        // cp-1 down: removing cp-2 leaves {cp-1 down, cp-3}: 1 of 2 is no quorum.
        let e = removals_keep_quorum(&members, &[2, 3], &r(&[2])).unwrap_err();
        assert!(
            e.contains("removing cp-2 would leave 2 etcd members of which 1 are healthy"),
            "{e}"
        );
        // Removing the unhealthy member itself is fine.
        assert!(removals_keep_quorum(&members, &[2, 3], &r(&[1])).is_ok());
        // The last member never goes; members already gone are skipped.
        assert!(removals_keep_quorum(&members[..1], &[1], &r(&[1]))
            .unwrap_err()
            .contains("without members"));
        assert!(removals_keep_quorum(&members, &[1, 2, 3], &r(&[9])).is_ok());
    }

    const LIST: &str = r#"{"header":{"cluster_id":"1","member_id":"2","raft_term":"3"},
      "members":[
        {"ID":"12345678901234567890","name":"cp-1","peerURLs":["https://10.0.0.10:2380"],"clientURLs":["https://10.0.0.10:2379"]},
        {"ID":"42","peerURLs":["https://10.0.0.12:2380"]},
        {"ID":"7","name":"cp-2","peerURLs":["https://[fd00::2]:2380"],"clientURLs":["https://[fd00::2]:2379"]}]}"#;

    #[test]
    fn local_status_says_leader_and_size() {
        let s =
            parse_local_status(r#"{"header":{"member_id":"42"},"leader":"42","dbSize":"1650688"}"#)
                .unwrap();
        assert_eq!(
            s,
            LocalStatus {
                leader: true,
                db_size_bytes: Some(1650688)
            }
        );
        let f = parse_local_status(r#"{"header":{"member_id":"42"},"leader":"7"}"#).unwrap();
        assert!(!f.leader && f.db_size_bytes.is_none());
        assert!(parse_local_status("curl: (7)").is_err());
    }

    #[test]
    fn members_are_read_with_ids_names_and_urls() {
        let m = parse_members(LIST).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].id, 12345678901234567890);
        assert_eq!(m[0].hex_id(), "ab54a98ceb1f0ad2");
        assert!(m[0].started() && !m[1].started());
        assert_eq!(m[0].peer_host().as_deref(), Some("10.0.0.10"));
        assert_eq!(m[2].peer_host().as_deref(), Some("fd00::2"));
        assert!(parse_members("{}").is_err());
        assert!(parse_members("not json").is_err());
    }

    #[test]
    fn stale_members_are_the_unstarted_and_the_gone() {
        let m = parse_members(LIST).unwrap();
        let s: Vec<u64> = stale(&m, |h| h != "10.0.0.10")
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(s, [42, 7]);
        assert!(quorum_holds(3, 2));
        assert!(!quorum_holds(3, 1));
        assert!(!quorum_holds(4, 2));
    }

    #[test]
    fn a_snapshot_stream_is_joined_and_checked() {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let db = b"bbolt database bytes".repeat(10);
        let sum = Sha256::digest(&db);
        let stream = format!(
            "{{\"result\":{{\"remaining_bytes\":\"100\",\"blob\":\"{}\"}}}}\n{{\"result\":{{\"blob\":\"{}\"}}}}\n{{\"result\":{{\"blob\":\"{}\"}}}}\n",
            b64(&db[..50]),
            b64(&db[50..]),
            b64(&sum)
        );
        let s = super::parse_snapshot_stream(stream.as_bytes()).unwrap();
        assert_eq!(s.db, db);
        assert_eq!(s.sha256, hex::encode(sum));
        // One byte changed: refused.
        let mut bad = db.clone();
        bad[3] ^= 1;
        let stream = format!(
            "{{\"result\":{{\"blob\":\"{}\"}}}}{{\"result\":{{\"blob\":\"{}\"}}}}",
            b64(&bad),
            b64(&sum)
        );
        assert!(super::parse_snapshot_stream(stream.as_bytes())
            .unwrap_err()
            .contains("checksum"));
        assert!(super::parse_snapshot_stream(b"")
            .unwrap_err()
            .contains("no database"));
        assert!(
            super::parse_snapshot_stream(b"{\"error\":{\"grpc_code\":14}}")
                .unwrap_err()
                .contains("refused")
        );
    }
}
