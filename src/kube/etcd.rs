//! etcd as kubeadm runs it (stacked, one member per control-plane node), asked through
//! its v3 JSON gateway on the node's own client port with the health-check client
//! certificate kubeadm makes: member list, health, removal.

use crate::transport::remote::{self, HostError, Redact};
use crate::transport::Transport;
use serde::Serialize;

const CURL: &str = "curl -sS --max-time 5 --cacert /etc/kubernetes/pki/etcd/ca.crt \
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

/// Whether the member serving `client_url` answers its health endpoint with
/// `"health":"true"`, asked from `t`; the answer otherwise.
pub async fn health(t: &dyn Transport, client_url: &str) -> Result<(), String> {
    if !client_url.starts_with("https://")
        || !client_url[8..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:[]-".contains(&b))
    {
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"header":{"cluster_id":"1","member_id":"2","raft_term":"3"},
      "members":[
        {"ID":"12345678901234567890","name":"cp-1","peerURLs":["https://10.0.0.10:2380"],"clientURLs":["https://10.0.0.10:2379"]},
        {"ID":"42","peerURLs":["https://10.0.0.12:2380"]},
        {"ID":"7","name":"cp-2","peerURLs":["https://[fd00::2]:2380"],"clientURLs":["https://[fd00::2]:2379"]}]}"#;

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
}
