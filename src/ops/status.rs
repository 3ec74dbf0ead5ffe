//! `kubeforge status`: how the cluster is, read-only, in one screen (or `-o json`):
//! hosts and nodes, etcd members (health, leader, database size, stale members), every
//! apiserver's /readyz and the endpoint through the load balancers, which load balancer
//! holds the VIP, the earliest certificate expiry, and the age of the newest etcd
//! snapshot. Exit 0 when healthy, 8 when degraded (`--wait` retries until healthy).

use crate::cli::StatusArgs;
use crate::error::Error;
use crate::ops::session::{with_session, Session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::transport::Transport;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Exit status of `status` for a cluster that answers but is not healthy.
pub const STATUS_DEGRADED: u8 = 8;
/// A certificate expiring sooner than this is a problem.
const CERT_WARN_DAYS: i64 = 30;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeStatus {
    name: String,
    roles: String,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubelet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apiserver: Option<String>,
    /// /readyz of this node's apiserver (control planes).
    #[serde(skip_serializing_if = "Option::is_none")]
    apiserver_ready: Option<bool>,
    /// This load balancer holds the VIP (load balancers with keepalived).
    #[serde(skip_serializing_if = "Option::is_none")]
    holds_vip: Option<bool>,
    /// Days until the earliest control-plane certificate here expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_days_left: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberStatus {
    id: String,
    name: String,
    healthy: bool,
    leader: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_size_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusReport {
    cluster: String,
    healthy: bool,
    /// What is wrong, one line each (empty when healthy).
    problems: Vec<String>,
    /// What needs attention soon without making the cluster unhealthy (certificates
    /// under 30 days, an old or missing etcd snapshot).
    warnings: Vec<String>,
    nodes: Vec<NodeStatus>,
    etcd: Vec<MemberStatus>,
    /// /readyz through the control-plane endpoint (the VIP / load balancers).
    endpoint: String,
    endpoint_ready: bool,
    /// The cloud load balancer's targets as its health check sees them
    /// (`loadBalancer.type: cloud`).
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_targets: Option<Vec<crate::provider::TargetHealth>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    newest_snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    newest_snapshot_age_seconds: Option<i64>,
    /// Does `kubeforge plan` have changes (None: not checked: `--no-drift`, or no plan
    /// could be made).
    #[serde(skip_serializing_if = "Option::is_none")]
    drift: Option<Drift>,
}

/// What a converge would change: files, commands and addon objects, by phase and host.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Drift {
    pending: bool,
    /// One line each: `phase: host: N files, M commands`, `addons: N objects`.
    changes: Vec<String>,
}

/// The bootstrap plan against the hosts (what `kubeforge plan` shows), summed up.
async fn drift(s: &Session) -> Result<Drift, String> {
    let pb = crate::playbook::load(None, &crate::phase::names()).map_err(|e| e.to_string())?;
    let (plan, failures) = crate::ops::preview::against_hosts(s, &pb)
        .await
        .map_err(|e| {
            crate::error::render_chain(&e)
                .trim_start_matches("error: ")
                .to_string()
        })?;
    let mut changes = Vec::new();
    for ph in &plan.phases {
        for h in &ph.hosts {
            changes.push(format!(
                "{}: {}: {} file(s), {} command(s)",
                ph.name,
                h.host,
                h.files.len(),
                h.commands.len()
            ));
        }
    }
    let objects = plan
        .addons
        .iter()
        .filter(|a| a.action != "unchanged")
        .count();
    if objects > 0 {
        changes.push(format!(
            "addons: {objects} object(s) to create, update or delete"
        ));
    }
    if let Some(e) = &plan.addons_error {
        changes.push(format!("addons: not planned: {e}"));
    }
    for f in &failures {
        changes.push(format!("not planned: {f}"));
    }
    Ok(Drift {
        pending: plan.has_changes(),
        changes,
    })
}

fn days_left(enddate: &str) -> Option<i64> {
    let t = crate::phase::certs::parse_enddate(enddate)?;
    Some((t - chrono::Utc::now()).num_days())
}

async fn gather(s: &Session, check_drift: bool) -> Result<StatusReport, Error> {
    let rt = s.rt()?;
    let secrets = s
        .secrets()
        .await
        .unwrap_or_else(crate::render::Secrets::generate);
    let facts = crate::ops::preview::gather_facts(s).await?;
    let c = &s.cluster;
    let mut problems = facts.findings(c);
    let mut warnings = facts.in_flight();
    // A machine that left the cluster file is a pending change (drift), not a fault.
    let leaving: Vec<String> = facts
        .leaving
        .iter()
        .map(|l| format!("host {} ", l.name))
        .collect();
    problems.retain(|p| {
        let pending = leaving.iter().any(|l| p.starts_with(l.as_str()))
            && p.contains("is no longer in the cluster file");
        if pending {
            warnings.push(p.clone());
        }
        !pending
    });
    let port = c.cluster.spec.networking.api_server_port;
    let vip = c.topology.endpoint.address();
    let mut nodes = Vec::new();
    let mut endpoint_ready = false;
    let mut etcd = Vec::new();
    for h in &c.topology.hosts {
        let reachable = facts.host(&h.name).is_some();
        let node = facts.node(&h.name);
        let mut st = NodeStatus {
            name: h.name.clone(),
            roles: h.roles_text(),
            reachable,
            ready: node.map(|n| n.ready),
            kubelet: node.map(|n| n.kubelet_version.clone()),
            apiserver: facts.host(&h.name).and_then(|f| f.apiserver_tag.clone()),
            apiserver_ready: None,
            holds_vip: None,
            cert_days_left: None,
        };
        let session = if reachable {
            crate::phase::exec::session(rt, h).await.ok()
        } else {
            None
        };
        if let Some(t) = &session {
            if h.has(crate::spec::Role::ControlPlane) {
                let api = std::net::SocketAddr::new(h.internal_address, port).to_string();
                let ok = crate::kube::readyz(t.as_ref(), &api).await.is_ok();
                st.apiserver_ready = Some(ok);
                if !ok {
                    problems.push(format!(
                        "kube-apiserver on {} is not ready (/readyz)",
                        h.name
                    ));
                }
                if !endpoint_ready {
                    endpoint_ready = crate::kube::readyz(t.as_ref(), &vip).await.is_ok();
                }
                let cmd = "for f in /etc/kubernetes/pki/apiserver.crt /etc/kubernetes/pki/apiserver-kubelet-client.crt \
/etc/kubernetes/pki/front-proxy-client.crt /etc/kubernetes/pki/etcd/server.crt /etc/kubernetes/pki/etcd/peer.crt; do \
openssl x509 -enddate -noout -in $f 2>/dev/null | cut -d= -f2; done";
                if let Ok(o) = t.exec(cmd).await {
                    st.cert_days_left = o.stdout.lines().filter_map(days_left).min();
                }
                if let Some(d) = st.cert_days_left {
                    if d < 0 {
                        problems.push(format!(
                            "a control-plane certificate on {} has expired",
                            h.name
                        ));
                    } else if d < CERT_WARN_DAYS {
                        warnings.push(format!(
                            "a control-plane certificate on {} expires in {d} days (`kubeadm certs renew`)",
                            h.name
                        ));
                    }
                }
            }
            if c.topology.endpoint.lb_hosts().contains(&h.name) {
                if let crate::spec::Endpoint::Vip { vip: addr, .. } = &c.topology.endpoint {
                    let cmd =
                        format!("ip -o addr show | grep -q ' {addr}/' && echo yes || echo no");
                    if let Ok(o) = t.exec(&cmd).await {
                        st.holds_vip = Some(o.stdout.trim() == "yes");
                    }
                }
            }
        }
        if h.is_kubernetes_node() {
            match st.ready {
                Some(true) => {}
                _ if !reachable => {}
                Some(false) => {}
                None if facts.nodes.is_some() => problems.push(format!(
                    "node {} is not registered with the API server",
                    h.name
                )),
                None => {}
            }
        }
        nodes.push(st);
    }
    if facts.nodes.is_none() {
        problems.push("no control-plane node answers for the Kubernetes API".into());
    }
    if !endpoint_ready {
        problems.push(format!(
            "the control-plane endpoint {vip} does not answer /readyz"
        ));
    }
    let endpoint_targets = cloud_targets(c, &mut problems, &mut warnings).await;
    let vip_holders = nodes.iter().filter(|n| n.holds_vip == Some(true)).count();
    {
        if nodes.iter().any(|n| n.holds_vip.is_some()) && vip_holders != 1 {
            problems.push(format!(
                "the VIP is held by {vip_holders} load balancers (exactly one should hold it)"
            ));
        }
    }
    if let Some(e) = &facts.etcd {
        for m in &e.members {
            let mut st = MemberStatus {
                id: m.hex_id(),
                name: m.name.clone(),
                healthy: e.healthy.contains(&m.id),
                leader: false,
                db_size_bytes: None,
            };
            if let Some(h) = c.topology.host(&m.name) {
                if let Ok(t) = crate::phase::exec::session(rt, h).await {
                    if let Ok(ls) =
                        crate::kube::etcd::local_status(t.as_ref(), &h.name, &secrets).await
                    {
                        st.leader = ls.leader;
                        st.db_size_bytes = ls.db_size_bytes;
                    }
                }
            }
            etcd.push(st);
        }
        if !etcd.iter().any(|m| m.leader) {
            problems.push("etcd has no leader that answers".into());
        }
    }
    let snapshots = crate::backup::list(&s.state.store)
        .await
        .unwrap_or_default();
    let newest = snapshots
        .iter()
        .filter(|l| l.taken().is_some() && l.authenticity != crate::backup::Authenticity::Forged)
        .max_by_key(|l| l.taken());
    for l in &snapshots {
        if l.authenticity == crate::backup::Authenticity::Forged {
            warnings.push(format!(
                "stored snapshot {} is not authentic (no metadata or its MAC does not verify): never restored from; remove it from the store",
                l.name
            ));
        }
    }
    let age = newest
        .and_then(|l| l.taken())
        .map(|t| (chrono::Utc::now() - t).num_seconds());
    let interval = c.cluster.spec.backup.interval_minutes;
    if interval > 0 {
        match age {
            // Two intervals and the time to collect them: older is a broken timer.
            Some(a) if a > i64::from(interval) * 60 * 2 + 600 => warnings.push(format!(
                "the newest etcd snapshot is {} min old (the timer takes one every {interval} min; {})",
                a / 60,
                if c.cluster.spec.backup.ship.is_some() {
                    "the control planes ship them: see `journalctl -u kubeforge-etcd-snapshot` on the etcd leader"
                } else {
                    "`kubeforge backup collect`"
                }
            )),
            None => warnings.push("no etcd snapshot stored yet (`kubeforge backup`)".into()),
            _ => {}
        }
    }
    // Drift: only when a converge has run (there is something to compare with); a
    // plan that cannot be made is a warning, not a degraded cluster.
    let drift = if check_drift && s.secrets().await.is_some() {
        match drift(s).await {
            Ok(d) => {
                if d.pending {
                    warnings.push(format!(
                        "drift: `kubeforge plan` has {} change(s) pending (`kubeforge apply` converges)",
                        d.changes.len().max(1)
                    ));
                }
                Some(d)
            }
            Err(e) => {
                warnings.push(format!("drift not checked: {e}"));
                None
            }
        }
    } else {
        None
    };
    Ok(StatusReport {
        drift,
        cluster: c.name().to_string(),
        healthy: problems.is_empty(),
        problems,
        warnings,
        nodes,
        etcd,
        endpoint: vip,
        endpoint_ready,
        endpoint_targets,
        newest_snapshot: newest.map(|l| l.name.clone()),
        newest_snapshot_age_seconds: age,
    })
}

/// The cloud load balancer's targets (asked from the cloud's API): none healthy is a
/// problem, each unhealthy one a warning.
async fn cloud_targets(
    c: &crate::spec::LoadedCluster,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<Vec<crate::provider::TargetHealth>> {
    if !matches!(c.topology.endpoint, crate::spec::Endpoint::Cloud { .. }) {
        return None;
    }
    let read = match crate::provider::factory::open_cloud(c, String::new()) {
        Ok(Some(p)) => p.endpoint_targets().await.map_err(|e| e.to_string()),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    };
    match read {
        Ok(Some(targets)) => {
            if !targets.iter().any(|t| t.healthy()) {
                problems.push(format!(
                    "the cloud load balancer has no healthy target ({} registered)",
                    targets.len()
                ));
            }
            for t in targets.iter().filter(|t| !t.healthy()) {
                warnings.push(format!(
                    "load balancer target {} is {}{}",
                    t.target,
                    t.state,
                    t.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ));
            }
            Some(targets)
        }
        Ok(None) => None,
        Err(e) => {
            warnings.push(format!(
                "the cloud load balancer's targets were not read: {e}"
            ));
            None
        }
    }
}

pub async fn run(args: StatusArgs, output: OutputFormat) -> Result<u8, Error> {
    let deadline = Instant::now() + args.timeout;
    loop {
        let opts = SessionOptions::read_only(output);
        let check_drift = !args.no_drift;
        let report =
            with_session(&args.spec.file, opts, |s| Box::pin(gather(s, check_drift))).await?;
        let done = report.healthy || !args.wait || Instant::now() >= deadline;
        if done {
            print(&report, output)?;
            return Ok(if report.healthy { 0 } else { STATUS_DEGRADED });
        }
        if output == OutputFormat::Text {
            eprintln!(
                "not healthy yet ({}): checking again in 5s",
                report.problems.first().map(String::as_str).unwrap_or("")
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn print(r: &StatusReport, output: OutputFormat) -> Result<(), Error> {
    if output == OutputFormat::Json {
        return Ok(print_json(r)?);
    }
    println!(
        "cluster `{}`: {}",
        r.cluster,
        if r.healthy { "healthy" } else { "DEGRADED" }
    );
    println!(
        "endpoint {}: {}",
        r.endpoint,
        if r.endpoint_ready {
            "ready"
        } else {
            "NOT READY"
        }
    );
    for t in r.endpoint_targets.iter().flatten() {
        println!("  target {}: {}", t.target, t.state);
    }
    println!();
    println!(
        "{:<24} {:<28} {:<9} {:<7} {:<10} {:<10} {:<6} CERTS",
        "HOST", "ROLES", "SSH", "READY", "KUBELET", "APISERVER", "VIP"
    );
    for n in &r.nodes {
        let yes_no = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "{:<24} {:<28} {:<9} {:<7} {:<10} {:<10} {:<6} {}",
            n.name,
            n.roles,
            if n.reachable { "ok" } else { "DOWN" },
            yes_no(n.ready),
            n.kubelet.as_deref().unwrap_or("-"),
            match (n.apiserver.as_deref(), n.apiserver_ready) {
                (Some(v), Some(false)) => format!("{v}!"),
                (Some(v), _) => v.to_string(),
                _ => "-".into(),
            },
            match n.holds_vip {
                Some(true) => "holds",
                _ => "-",
            },
            n.cert_days_left
                .map(|d| format!("{d}d"))
                .unwrap_or_else(|| "-".into())
        );
    }
    if !r.etcd.is_empty() {
        println!();
        println!(
            "{:<18} {:<24} {:<8} {:<7} DB",
            "ETCD MEMBER", "NAME", "HEALTHY", "LEADER"
        );
        for m in &r.etcd {
            println!(
                "{:<18} {:<24} {:<8} {:<7} {}",
                m.id,
                if m.name.is_empty() {
                    "(never started)"
                } else {
                    &m.name
                },
                if m.healthy { "yes" } else { "NO" },
                if m.leader { "yes" } else { "" },
                m.db_size_bytes
                    .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    println!();
    match (&r.newest_snapshot, r.newest_snapshot_age_seconds) {
        (Some(n), Some(a)) => println!("newest etcd snapshot: {n} ({} min old)", a / 60),
        _ => println!("newest etcd snapshot: none"),
    }
    match &r.drift {
        Some(d) if d.pending => {
            println!("drift: `kubeforge plan` has changes pending:");
            for c in d.changes.iter().take(20) {
                println!("  {c}");
            }
            if d.changes.len() > 20 {
                println!("  ... and {} more", d.changes.len() - 20);
            }
        }
        Some(_) => println!("drift: none (the hosts match the cluster file)"),
        None => {}
    }
    if !r.problems.is_empty() || !r.warnings.is_empty() {
        println!();
        for p in &r.problems {
            println!("  ! {p}");
        }
        for w in &r.warnings {
            println!("  warning: {w}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn openssl_enddates_become_days() {
        let d = super::days_left("Nov 29 07:00:00 2099 GMT").unwrap();
        assert!(d > 365 * 70);
        assert!(super::days_left("Jan  1 00:00:00 2000 GMT").unwrap() < 0);
        assert!(super::days_left("garbage").is_none());
    }
}
