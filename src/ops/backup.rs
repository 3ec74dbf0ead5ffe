//! `kubeforge backup [create|collect|list]`: etcd snapshots in the state store (see
//! `crate::backup`). No lock: snapshots are objects of their own, never overwritten,
//! and the state document is not changed.

use crate::backup::{self, BackupMeta, Listed};
use crate::cli::{BackupArgs, BackupCommand, SpecArgs};
use crate::error::Error;
use crate::ops::session::{with_session, Session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::phase::PhaseError;
use chrono::Utc;
use serde::Serialize;

const PHASE: &str = "backup";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BackupReport {
    cluster: String,
    /// The snapshot taken now (None for `collect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    taken: Option<BackupMeta>,
    /// The timer's snapshots brought into the store.
    collected: Vec<BackupMeta>,
    /// Timer snapshots that could not be collected (left on their node).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
    /// Removed by retention (spec.backup.keep).
    pruned: Vec<String>,
    seconds: f64,
}

fn gate(message: String) -> Error {
    Error::Phase(Box::new(PhaseError::Gate {
        phase: PHASE.into(),
        message,
    }))
}

pub async fn run(args: BackupArgs, output: OutputFormat) -> Result<(), Error> {
    match args.command {
        None => save(args.spec, true, output).await,
        Some(BackupCommand::Create(spec)) => save(spec, true, output).await,
        Some(BackupCommand::Collect(spec)) => save(spec, false, output).await,
        Some(BackupCommand::List(spec)) => list(spec, output).await,
    }
}

/// The control-plane node to take a snapshot on: one whose etcd member is healthy,
/// asked through the facts (exactly one member gives the snapshot).
async fn healthy_member(s: &Session) -> Result<String, Error> {
    let facts = crate::ops::preview::gather_facts(s).await?;
    let Some(e) = &facts.etcd else {
        return Err(gate(
            "no control-plane node answers with a running etcd: no snapshot can be taken".into(),
        ));
    };
    if !crate::kube::etcd::quorum_holds(e.members.len(), e.healthy.len()) {
        return Err(gate(format!(
            "etcd has lost quorum ({} of {} members healthy): a snapshot now could miss committed writes; restore from a stored one instead",
            e.healthy.len(),
            e.members.len()
        )));
    }
    let cps = s.cluster.topology.control_planes();
    e.members
        .iter()
        .filter(|m| e.healthy.contains(&m.id))
        .find_map(|m| cps.iter().find(|h| h.name == m.name))
        .map(|h| h.name.clone())
        .ok_or_else(|| {
            gate("no healthy etcd member runs on a control-plane host of the inventory".into())
        })
}

async fn save(spec: SpecArgs, take: bool, output: OutputFormat) -> Result<(), Error> {
    let opts = SessionOptions::read_only(output);
    let started = std::time::Instant::now();
    let report = with_session(&spec.file, opts, |s| {
        Box::pin(async move {
            if !s.state.store.has_key() {
                return Err(Error::Usage(
                    "etcd snapshots hold every Secret of the cluster and are stored encrypted: give the state its key (spec.state.encryption, KUBEFORGE_STATE_KEY_FILE or KUBEFORGE_STATE_PASSPHRASE)".into(),
                ));
            }
            let rt = s.rt()?;
            let secrets = s.secrets().await.ok_or_else(|| {
                gate("the cluster was never bootstrapped (no secrets in the state)".into())
            })?;
            let store = &s.state.store;
            let (collected, problems) =
                backup::collect(PHASE, rt, &s.cluster, store, &secrets, false).await.map_err(|e| Error::Phase(Box::new(e)))?;
            let taken = if take {
                let host = healthy_member(s).await?;
                let h = s
                    .cluster
                    .topology
                    .host(&host)
                    .ok_or_else(|| Error::Internal(format!("{host} left the topology")))?;
                let session = crate::phase::exec::session(rt, h)
                    .await
                    .map_err(|e| Error::Phase(Box::new(PhaseError::host(PHASE, e))))?;
                let facts = rt.facts();
                let version = facts
                    .as_ref()
                    .and_then(|f| f.host(&host).and_then(|h| h.apiserver_tag.clone()))
                    .unwrap_or_else(|| s.cluster.cluster.spec.kubernetes_version.clone());
                Some(
                    backup::take(
                        PHASE,
                        session.as_ref(),
                        &host,
                        store,
                        &secrets,
                        "backup",
                        "manual",
                        &version,
                    )
                    .await
                    .map_err(|e| Error::Phase(Box::new(e)))?,
                )
            } else {
                None
            };
            let pruned = backup::prune(store, s.cluster.cluster.spec.backup.keep as usize).await?;
            Ok(BackupReport {
                cluster: s.cluster.name().to_string(),
                taken,
                collected,
                problems,
                pruned,
                seconds: 0.0,
            })
        })
    })
    .await?;
    let report = BackupReport {
        seconds: started.elapsed().as_secs_f64(),
        ..report
    };
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            for m in &report.collected {
                println!(
                    "collected {} (timer on {}, revision {}, {} keys, {} bytes)",
                    m.name, m.source, m.revision, m.total_keys, m.db_bytes
                );
            }
            for p in &report.problems {
                eprintln!("warning: not collected: {p}");
            }
            if let Some(m) = &report.taken {
                println!(
                    "snapshot {} taken on {} (etcd {}, revision {}, {} keys, {} bytes, sha256 {}), verified and stored encrypted",
                    m.name,
                    m.source,
                    m.etcd_version,
                    m.revision,
                    m.total_keys,
                    m.db_bytes,
                    &m.sha256[..16.min(m.sha256.len())]
                );
            } else if report.collected.is_empty() {
                println!("no new timer snapshot on the control-plane nodes");
            }
            if !report.pruned.is_empty() {
                println!("retention removed: {}", report.pruned.join(", "));
            }
            println!("({:.1}s)", report.seconds);
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListReport {
    cluster: String,
    snapshots: Vec<Listed>,
    /// Age of the newest snapshot in seconds (the recovery point right now).
    #[serde(skip_serializing_if = "Option::is_none")]
    newest_age_seconds: Option<i64>,
}

async fn list(spec: SpecArgs, output: OutputFormat) -> Result<(), Error> {
    let cluster = crate::spec::load_file(&spec.file)?;
    let store = crate::ops::session::open_store(&cluster)?;
    let snapshots = backup::list(&store).await?;
    let now = Utc::now();
    let newest_age_seconds = snapshots
        .iter()
        .filter(|l| l.authenticity != backup::Authenticity::Forged)
        .filter_map(Listed::taken)
        .max()
        .map(|t| (now - t).num_seconds());
    let report = ListReport {
        cluster: cluster.name().to_string(),
        snapshots,
        newest_age_seconds,
    };
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            if report.snapshots.is_empty() {
                println!(
                    "cluster `{}`: no etcd snapshot stored (`kubeforge backup -f {}` takes one)",
                    report.cluster,
                    spec.file.display()
                );
                return Ok(());
            }
            let rows: Vec<[String; 8]> = report
                .snapshots
                .iter()
                .map(|l| {
                    let age = l
                        .taken()
                        .map(|t| human_age((now - t).num_seconds()))
                        .unwrap_or_else(|| "?".into());
                    match &l.meta {
                        Some(m) => [
                            l.name.clone(),
                            age,
                            m.trigger.clone(),
                            m.source.clone(),
                            m.revision.to_string(),
                            m.total_keys.to_string(),
                            m.db_bytes.to_string(),
                            m.kubernetes_version.clone(),
                        ],
                        None => [
                            l.name.clone(),
                            age,
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            l.size.to_string(),
                            "-".into(),
                        ],
                    }
                })
                .collect();
            let head = [
                "NAME",
                "AGE",
                "TRIGGER",
                "SOURCE",
                "REVISION",
                "KEYS",
                "BYTES",
                "KUBERNETES",
            ];
            let mut w = head.map(str::len);
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.len());
                }
            }
            let line = |cells: [&str; 8]| {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            println!("{}", line(head));
            for r in &rows {
                println!("{}", line(r.each_ref().map(String::as_str)));
            }
            for l in &report.snapshots {
                if l.authenticity == backup::Authenticity::Forged {
                    println!(
                        "! {}: {}: not written by kubeforge with the state key nor by a control plane shipping it; never restored from",
                        l.name,
                        if l.meta.is_none() {
                            "no metadata"
                        } else {
                            "its metadata does not verify"
                        }
                    );
                }
            }
            if let Some(a) = report.newest_age_seconds {
                println!("newest snapshot: {} old", human_age(a));
            }
        }
    }
    Ok(())
}

fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
