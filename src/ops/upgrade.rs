//! `kubeforge upgrade`: a rolling upgrade to the cluster file's kubernetesVersion (or
//! `--to`). Preflight first, nothing touched when it refuses: the version policy (one
//! minor at a time, no downgrade, kubelets within the skew, no other upgrade half-done),
//! every host answering, every node Ready, etcd with exactly its members, all healthy,
//! room for kubeadm's copy of etcd on every control plane; certificate expiry is shown.
//! Then the upgrade playbook: snapshot, artifacts, control planes one by one, workers.

use crate::cli::UpgradeArgs;
use crate::error::Error;
use crate::facts::ClusterFacts;
use crate::ops::runner::{run_playbook, RunOptions, RunReport};
use crate::ops::session::{with_session, Session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::phase::upgrade::UpgradeOptions;
use crate::phase::PhaseError;
use crate::spec::validate::parse_kubernetes_version;
use crate::transport::Transport;
use crate::{phase, playbook};
use semver::Version;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpgradeReport {
    pub cluster: String,
    /// The version upgraded to.
    pub target: String,
    /// Versions found before the run: control planes (their apiserver) and kubelets.
    control_planes: Vec<(String, String)>,
    kubelets: Vec<(String, String)>,
    /// Preflight lines (certificate expiry, disk room).
    preflight: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunReport>,
}

fn refuse(message: String) -> Error {
    Error::Phase(Box::new(PhaseError::Gate {
        phase: "upgrade".into(),
        message,
    }))
}

/// A version as an image tag shows it (`v1.20.2_kf.1`: `+` becomes `_`).
pub fn tag_version(tag: &str) -> Option<Version> {
    parse_kubernetes_version(&tag.replacen('_', "+", 1))
}

/// What the version policy says about upgrading to `target`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every control plane and kubelet is at the target.
    Nothing,
    Upgrade,
}

/// The version policy (kubeadm's and Kubernetes' skew rules), before anything changes.
/// `control_planes` are the apiserver versions, `kubelets` every node's kubelet.
pub fn policy(
    control_planes: &[(String, Version)],
    kubelets: &[(String, Version)],
    target: &Version,
) -> Result<Verdict, String> {
    let show = |v: &Version| format!("v{v}");
    for (n, v) in control_planes.iter().chain(kubelets) {
        if v > target {
            return Err(format!(
                "{n} runs {}, newer than {}: a downgrade is refused (restore from a snapshot taken before the upgrade instead)",
                show(v),
                show(target)
            ));
        }
    }
    let behind: std::collections::BTreeSet<&Version> = control_planes
        .iter()
        .map(|(_, v)| v)
        .filter(|v| *v != target)
        .collect();
    if behind.len() > 1 {
        return Err(format!(
            "the control planes run {}: an earlier upgrade is half-done; finish it first (`kubeforge upgrade --to {}`)",
            behind.iter().map(|v| show(v)).collect::<Vec<_>>().join(" and "),
            show(behind.iter().next_back().copied().unwrap_or(target))
        ));
    }
    if let Some(oldest) = control_planes.iter().map(|(_, v)| v).min() {
        if target.major != oldest.major || target.minor > oldest.minor + 1 {
            return Err(format!(
                "{} to {}: the control plane goes one minor version at a time (upgrade to v{}.{}.x first)",
                show(oldest),
                show(target),
                oldest.major,
                oldest.minor + 1
            ));
        }
    }
    for (n, v) in kubelets {
        if target.minor > v.minor + 2 {
            return Err(format!(
                "the kubelet of {n} runs {}: more than two minor versions behind {} is outside the skew policy; upgrade it to v{}.{}.x first",
                show(v),
                show(target),
                v.major,
                v.minor + 1
            ));
        }
    }
    if control_planes
        .iter()
        .chain(kubelets)
        .all(|(_, v)| v == target)
    {
        return Ok(Verdict::Nothing);
    }
    Ok(Verdict::Upgrade)
}

/// Versions by node or host name.
type Versions = Vec<(String, Version)>;

/// Control-plane apiserver versions and kubelet versions from the facts, or why not.
fn versions(
    s: &Session,
    facts: &crate::facts::ClusterFacts,
) -> Result<(Versions, Versions), Error> {
    let mut cps = Vec::new();
    for h in s.cluster.topology.control_planes() {
        let tag = facts
            .host(&h.name)
            .and_then(|f| f.apiserver_tag.clone())
            .ok_or_else(|| {
                refuse(format!(
                    "{} runs no kube-apiserver static pod: the cluster is not fully built (`kubeforge apply`) or the node is lost (`kubeforge recover`)",
                    h.name
                ))
            })?;
        let v = tag_version(&tag).ok_or_else(|| {
            refuse(format!(
                "{}: the kube-apiserver image tag `{tag}` is not a Kubernetes version",
                h.name
            ))
        })?;
        cps.push((h.name.clone(), v));
    }
    let nodes = facts
        .nodes
        .as_ref()
        .ok_or_else(|| refuse("no API server answered: the cluster is down or not built".into()))?;
    let mut kubelets = Vec::new();
    for n in nodes {
        let v = parse_kubernetes_version(&n.kubelet_version).ok_or_else(|| {
            refuse(format!(
                "the Node {} reports kubelet version `{}`",
                n.name, n.kubelet_version
            ))
        })?;
        kubelets.push((n.name.clone(), v));
    }
    Ok((cps, kubelets))
}

/// Per control plane: room for kubeadm's copy of the etcd data, and when the apiserver
/// certificate expires. Refuses when the room is short.
async fn host_checks(s: &Session) -> Result<Vec<String>, Error> {
    let rt = s.rt()?;
    let mut lines = Vec::new();
    for h in s.cluster.topology.control_planes() {
        let t = rt
            .pool
            .session(&h.address.to_string())
            .await
            .map_err(|e| refuse(format!("{}: {e}", h.name)))?;
        let out = t
            .exec(
                "echo etcd=$(du -sb /var/lib/etcd 2>/dev/null | cut -f1); \
echo avail=$(df -B1 --output=avail /etc/kubernetes 2>/dev/null | tail -n1); \
echo expiry=$(openssl x509 -enddate -noout -in /etc/kubernetes/pki/apiserver.crt 2>/dev/null | cut -d= -f2)",
            )
            .await
            .map_err(|e| refuse(format!("{}: {e}", h.name)))?;
        let get = |k: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let etcd: u64 = get("etcd").parse().unwrap_or(0);
        let avail: u64 = get("avail").parse().unwrap_or(u64::MAX);
        // kubeadm copies the data directory once (plus the manifests), and the new
        // etcd writes on: twice the size, and at least 256 MiB, keeps a margin.
        let need = (etcd * 2).max(256 << 20);
        if avail < need {
            return Err(refuse(format!(
                "{}: {} MiB free under /etc/kubernetes, kubeadm copies the {} MiB etcd data there during the upgrade (need {} MiB)",
                h.name,
                avail >> 20,
                etcd >> 20,
                need >> 20
            )));
        }
        let expiry = get("expiry");
        lines.push(format!(
            "{}: etcd data {} MiB, {} MiB free for kubeadm's copy; apiserver certificate valid until {} (renewed by the upgrade)",
            h.name,
            etcd >> 20,
            avail >> 20,
            if expiry.is_empty() { "unknown" } else { &expiry }
        ));
    }
    Ok(lines)
}

/// How long the preflight of an upgrade that was interrupted waits for the node it was
/// working on to settle (its detached kubeadm restarts etcd and the apiserver, then the
/// kubelet restarts): about one node's upgrade, with margin.
const SETTLE: Duration = Duration::from_secs(300);

/// Whether the facts show an upgrade under way: a node cordoned (a node is cordoned from
/// its drain until it is back in service) or kubelets at different versions.
fn upgrade_under_way(facts: &ClusterFacts) -> bool {
    facts.nodes.as_ref().is_some_and(|nodes| {
        nodes.iter().any(|n| n.unschedulable)
            || nodes
                .iter()
                .any(|n| n.kubelet_version != nodes[0].kubelet_version)
    })
}

/// The facts the upgrade starts from, with no finding. A cluster that is not healthy is
/// refused at once, unless an upgrade was under way (a killed run resumed at once finds
/// the node it left restarting its etcd and apiserver): then the findings are looked at
/// again every 5 s for up to [`SETTLE`] before refusing.
async fn settled_facts(s: &Session, output: OutputFormat) -> Result<Arc<ClusterFacts>, Error> {
    let start = Instant::now();
    let mut waiting = false;
    loop {
        let facts = crate::ops::preview::gather_facts(s).await?;
        let findings = facts.findings(&s.cluster);
        if findings.is_empty() {
            return Ok(facts);
        }
        if start.elapsed() >= SETTLE || !upgrade_under_way(&facts) {
            return Err(refuse(format!(
                "the cluster is not healthy; nothing was changed{}:\n  - {}\nRepair it first (`kubeforge recover`).",
                if waiting {
                    format!(" (an upgrade was under way; waited {}s for it to settle)", start.elapsed().as_secs())
                } else {
                    String::new()
                },
                findings.join("\n  - ")
            )));
        }
        if !waiting && output == OutputFormat::Text {
            eprintln!(
                "An upgrade was under way and the cluster is settling; waiting up to {}s for:\n  - {}",
                SETTLE.as_secs(),
                findings.join("\n  - ")
            );
        }
        waiting = true;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The upgrade inside an open session: preflight, then the upgrade playbook (None in
/// `run`: nothing to upgrade). `apply` calls it too when the file's version was raised.
pub(crate) async fn upgrade_session(
    s: &Session,
    run: &RunOptions,
    output: OutputFormat,
) -> Result<UpgradeReport, Error> {
    let pb = playbook::named("upgrade", &phase::names())?;
    let target = s.cluster.version();
    let facts = settled_facts(s, output).await?;
    let (cps, kubelets) = versions(s, &facts)?;
    let verdict = policy(&cps, &kubelets, &target).map_err(refuse)?;
    let shown = |v: &[(String, Version)]| {
        v.iter()
            .map(|(n, v)| (n.clone(), format!("v{v}")))
            .collect::<Vec<_>>()
    };
    let mut report = UpgradeReport {
        cluster: s.cluster.name().to_string(),
        target: format!("v{target}"),
        control_planes: shown(&cps),
        kubelets: shown(&kubelets),
        preflight: Vec::new(),
        run: None,
    };
    if verdict == Verdict::Nothing {
        return Ok(report);
    }
    report.preflight = host_checks(s).await?;
    if output == OutputFormat::Text {
        eprintln!("Upgrade to v{target}:");
        for (n, v) in &report.control_planes {
            eprintln!("  control plane {n}: {v}");
        }
        for (n, v) in &report.kubelets {
            eprintln!("  kubelet {n}: {v}");
        }
        for l in &report.preflight {
            eprintln!("  {l}");
        }
        eprintln!(
            "Risk: one control-plane node at a time is out of the load balancers and drained; \
an etcd snapshot is stored first (a downgrade is a restore from it).\n"
        );
    }
    report.run = Some(run_playbook(s, &pb, run).await?);
    Ok(report)
}

pub async fn run(args: UpgradeArgs, output: OutputFormat, verbose: bool) -> Result<(), Error> {
    if let Some(v) = &args.to {
        if parse_kubernetes_version(v).is_none() {
            return Err(refuse(format!(
                "--to `{v}` is not a Kubernetes version like v1.20.4"
            )));
        }
    }
    let opts = SessionOptions {
        provider: true,
        concurrency: args.concurrency,
        verbose,
        kubernetes_version: args.to.clone(),
        ..SessionOptions::locked(output)
    };
    let run = RunOptions {
        yes: args.yes,
        question: "Upgrade the cluster with this plan?".into(),
        addons: Default::default(),
        upgrade: UpgradeOptions {
            max_unavailable: usize::from(args.max_unavailable),
            drain_timeout: args.drain_timeout,
        },
        restore: Default::default(),
    };
    let report = with_session(&args.spec.file, opts, |s| {
        Box::pin(async move { upgrade_session(s, &run, output).await })
    })
    .await?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => match &report.run {
            None => println!(
                "cluster `{}`: nothing to upgrade (every control plane and kubelet runs {})",
                report.cluster, report.target
            ),
            Some(r) => {
                for p in &r.phases {
                    for n in &p.notes {
                        println!("  {n}");
                    }
                }
                println!(
                    "cluster `{}` upgraded to {} (state generation {})",
                    report.cluster, report.target, r.generation
                );
                if args.to.is_some() {
                    println!(
                        "Set spec.kubernetesVersion: {} in {} so that later runs keep this version.",
                        report.target,
                        args.spec.file.display()
                    );
                }
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        parse_kubernetes_version(s).unwrap()
    }
    fn at(list: &[(&str, &str)]) -> Vec<(String, Version)> {
        list.iter().map(|(n, s)| (n.to_string(), v(s))).collect()
    }

    #[test]
    fn the_version_policy() {
        let cps = at(&[("cp-1", "v1.20.2"), ("cp-2", "v1.20.2")]);
        let kl = at(&[("cp-1", "v1.20.2"), ("w-1", "v1.20.2")]);
        assert_eq!(policy(&cps, &kl, &v("v1.20.2")), Ok(Verdict::Nothing));
        assert_eq!(policy(&cps, &kl, &v("v1.20.2+kf.1")), Ok(Verdict::Upgrade));
        assert_eq!(policy(&cps, &kl, &v("v1.21.0")), Ok(Verdict::Upgrade));
        let e = policy(&cps, &kl, &v("v1.22.0")).unwrap_err();
        assert!(e.contains("one minor version at a time"), "{e}");
        let e = policy(&cps, &kl, &v("v1.20.1")).unwrap_err();
        assert!(e.contains("downgrade is refused"), "{e}");
        // Half-way through an upgrade to the same target: resumes.
        let half = at(&[("cp-1", "v1.20.2+kf.1"), ("cp-2", "v1.20.2")]);
        assert_eq!(policy(&half, &kl, &v("v1.20.2+kf.1")), Ok(Verdict::Upgrade));
        // Half-way through an upgrade to another version: refused.
        let e = policy(&half, &kl, &v("v1.20.3")).unwrap_err();
        assert!(e.contains("half-done"), "{e}");
        // A kubelet three minors behind.
        let old = at(&[("w-1", "v1.18.5")]);
        let cps21 = at(&[("cp-1", "v1.20.9")]);
        let e = policy(&cps21, &old, &v("v1.21.0")).unwrap_err();
        assert!(e.contains("skew"), "{e}");
        // A kubelet newer than the target.
        let e = policy(&cps, &at(&[("w-1", "v1.21.0")]), &v("v1.20.5")).unwrap_err();
        assert!(e.contains("w-1"), "{e}");
    }

    #[test]
    fn an_upgrade_under_way_is_seen_in_the_nodes() {
        let node = |name: &str, v: &str, cordoned: bool| crate::kube::NodeInfo {
            name: name.into(),
            ready: true,
            kubelet_version: v.into(),
            unschedulable: cordoned,
        };
        let with = |nodes: Vec<crate::kube::NodeInfo>| ClusterFacts {
            nodes: Some(nodes),
            ..Default::default()
        };
        let even = vec![
            node("cp-1", "v1.20.2", false),
            node("w-1", "v1.20.2", false),
        ];
        assert!(!upgrade_under_way(&with(even)));
        assert!(!upgrade_under_way(&ClusterFacts::default()));
        let cordoned = vec![
            node("cp-1", "v1.20.2", false),
            node("cp-2", "v1.20.2", true),
        ];
        assert!(upgrade_under_way(&with(cordoned)));
        let mixed = vec![
            node("cp-1", "v1.20.2+kf.1", false),
            node("cp-2", "v1.20.2", false),
        ];
        assert!(upgrade_under_way(&with(mixed)));
    }

    #[test]
    fn image_tags_map_back_to_versions() {
        assert_eq!(tag_version("v1.20.2_kf.1"), Some(v("v1.20.2+kf.1")));
        assert_eq!(tag_version("v1.20.2"), Some(v("v1.20.2")));
        assert_eq!(tag_version("latest"), None);
    }
}
