//! `kubeforge restore`: etcd rebuilt from a stored snapshot when its quorum is lost.
//! Before anything changes: which snapshot (the newest, or `--snapshot`), how old it is
//! and what is lost with it; refused while etcd still has its quorum (that cluster is
//! repaired with `recover`, not rolled back), except to finish a restore a killed run
//! began. Then the restore playbook.

use crate::backup::{self, Listed};
use crate::cli::RestoreArgs;
use crate::error::Error;
use crate::ops::runner::{run_playbook, RunOptions, RunReport};
use crate::ops::session::{with_session, Session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::phase::restore::RestoreOptions;
use crate::phase::PhaseError;
use crate::transport::Transport;
use crate::{phase, playbook};
use serde::Serialize;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RestoreReport {
    cluster: String,
    snapshot: Listed,
    /// Seconds between the snapshot and the start of the restore: what is lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_age_seconds: Option<i64>,
    findings: Vec<String>,
    run: RunReport,
}

fn refuse(message: String) -> Error {
    Error::Phase(Box::new(PhaseError::Gate {
        phase: "restore".into(),
        message,
    }))
}

/// Whether a restore of `snapshot` began on a control plane (its marker is there).
async fn begun(s: &Session, snapshot: &str) -> bool {
    let Ok(rt) = s.rt() else {
        return false;
    };
    for h in s.cluster.topology.control_planes() {
        if let Ok(t) = crate::phase::exec::session(rt, h).await {
            let test = format!("test -f {}", crate::phase::restore::marker(snapshot));
            if t.exec(&test).await.is_ok_and(|o| o.success()) {
                return true;
            }
        }
    }
    false
}

pub async fn run(args: RestoreArgs, output: OutputFormat, verbose: bool) -> Result<(), Error> {
    let pb = playbook::named("restore", &phase::names())?;
    let opts = SessionOptions {
        ensure_secrets: true,
        provider: true,
        accept_new_host_keys: args.accept_new_host_key.clone(),
        concurrency: args.concurrency,
        verbose,
        ..SessionOptions::locked(output)
    };
    let wanted = args.snapshot.clone();
    let yes = args.yes;
    let report = with_session(&args.spec.file, opts, |s| {
        Box::pin(async move {
            if !s.state.get().await.secrets.pki.contains_key("ca.crt") {
                return Err(refuse(
                    "the cluster was never initialized (no CA in the state): nothing to restore; `kubeforge apply` bootstraps it".into(),
                ));
            }
            let listed = backup::list(&s.state.store).await?;
            let chosen = backup::choose(&listed, wanted.as_deref())
                .map_err(refuse)?
                .clone();
            let facts = crate::ops::preview::gather_facts(s).await?;
            if let Some(e) = &facts.etcd {
                if crate::kube::etcd::quorum_holds(e.members.len(), e.healthy.len())
                    && !begun(s, &chosen.name).await
                {
                    return Err(refuse(format!(
                        "etcd has its quorum ({} of {} members healthy, asked {}): a restore would roll the whole cluster back to {}; nothing was changed. Lost machines of a cluster with quorum come back with `kubeforge recover`.",
                        e.healthy.len(),
                        e.members.len(),
                        e.asked,
                        chosen.name
                    )));
                }
            }
            let findings = facts.findings(&s.cluster);
            let age = chosen
                .taken()
                .map(|t| (chrono::Utc::now() - t).num_seconds());
            if output == OutputFormat::Text {
                eprintln!("Lost or unhealthy:");
                for f in &findings {
                    eprintln!("  ! {f}");
                }
                let when = chosen
                    .taken()
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "unknown".into());
                eprintln!("Snapshot: {} taken {when}{}", chosen.name, match age {
                    Some(a) => format!(" ({a} s ago)"),
                    None => String::new(),
                });
                if let Some(m) = &chosen.meta {
                    eprintln!(
                        "  from {} ({} trigger), revision {}, {} keys, Kubernetes {}, members then: {}",
                        m.source,
                        m.trigger,
                        m.revision,
                        m.total_keys,
                        m.kubernetes_version,
                        m.members.join(", ")
                    );
                }
                eprintln!(
                    "Risk: every change to the cluster after the snapshot is lost (objects created, changed or deleted since); \
Pods created since are removed by their kubelets, Pods deleted since may come back. The surviving etcd data \
directory is kept aside on its node.\n"
                );
            }
            let run = RunOptions {
                yes,
                question: format!("Restore the cluster from {}?", chosen.name),
                addons: Default::default(),
                upgrade: Default::default(),
                restore: RestoreOptions {
                    snapshot: Some(chosen.name.clone()),
                },
            };
            let report = run_playbook(s, &pb, &run).await?;
            Ok(RestoreReport {
                cluster: s.cluster.name().to_string(),
                snapshot: chosen,
                snapshot_age_seconds: age,
                findings,
                run: report,
            })
        })
    })
    .await?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => println!(
            "cluster `{}` restored from {} ({} phases, state generation {})",
            report.cluster,
            report.snapshot.name,
            report.run.phases.len(),
            report.run.generation
        ),
    }
    Ok(())
}
