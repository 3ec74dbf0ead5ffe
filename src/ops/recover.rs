//! `kubeforge recover`: bring lost control-plane and worker machines back. The facts
//! say what is lost (a machine gone at the provider, a fresh machine in its place, an
//! etcd member that never started, a Node left behind); with etcd's quorum intact, the
//! recover playbook re-creates the machines, removes the stale members and Nodes
//! through a healthy member, and joins them again behind the same health gates as the
//! bootstrap. With quorum lost nothing is touched: that is a restore from a snapshot.

use crate::cli::RecoverArgs;
use crate::error::Error;
use crate::kube::etcd;
use crate::ops::runner::{run_playbook, RunOptions, RunReport};
use crate::ops::session::{with_session, Session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::phase::PhaseError;
use crate::{phase, playbook};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct RecoverReport {
    cluster: String,
    /// What was found lost or unhealthy before the run.
    findings: Vec<String>,
    /// The recovery run (None: nothing to recover).
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<RunReport>,
}

fn refuse(message: String) -> Error {
    Error::Phase(Box::new(PhaseError::Gate {
        phase: "recover".into(),
        message,
    }))
}

/// Before anything changes: what is lost, and whether it can be repaired in place.
async fn preflight(s: &Session) -> Result<Vec<String>, Error> {
    let facts = crate::ops::preview::gather_facts(s).await?;
    let c = &s.cluster;
    let initialized = s.state.get().await.secrets.pki.contains_key("ca.crt");
    match &facts.etcd {
        Some(e) if !etcd::quorum_holds(e.members.len(), e.healthy.len()) => {
            return Err(refuse(format!(
                "etcd has lost quorum: {} of {} members healthy (asked {}). Removing members or \
joining nodes now could lose data; nothing was changed. Restore the cluster from an etcd \
snapshot instead.",
                e.healthy.len(),
                e.members.len(),
                e.asked
            )))
        }
        None if initialized => {
            return Err(refuse(
                "no control-plane node answers with a running etcd (quorum lost, or every \
control plane gone); nothing was changed. Restore the cluster from an etcd snapshot instead."
                    .into(),
            ))
        }
        None => {
            return Err(refuse(
                "the cluster was never initialized: run `kubeforge apply` to bootstrap it".into(),
            ))
        }
        Some(_) => {}
    }
    // A repair of an earlier run still running is finished by this one (connect waits
    // for it, the gates check what it did).
    let mut findings = facts.findings(c);
    findings.extend(facts.in_flight());
    Ok(findings)
}

pub async fn run(args: RecoverArgs, output: OutputFormat, verbose: bool) -> Result<(), Error> {
    if args.watch {
        return watch(&args, output, verbose).await;
    }
    let report = once(&args, output, verbose).await?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => println!("{}", summary(&report)),
    }
    Ok(())
}

fn summary(report: &RecoverReport) -> String {
    match &report.run {
        None => format!(
            "cluster `{}`: nothing to recover (every host answers, every node is Ready, etcd has exactly its members, all healthy)",
            report.cluster
        ),
        Some(r) => format!(
            "cluster `{}` recovered ({} phases, state generation {})",
            r.cluster,
            r.phases.len(),
            r.generation
        ),
    }
}

/// One check, and the repair when something is lost.
async fn once(
    args: &RecoverArgs,
    output: OutputFormat,
    verbose: bool,
) -> Result<RecoverReport, Error> {
    let pb = playbook::named("recover", &phase::names())?;
    let opts = SessionOptions {
        ensure_secrets: true,
        provider: true,
        accept_new_host_keys: args.accept_new_host_key.clone(),
        concurrency: args.concurrency,
        verbose,
        ..SessionOptions::locked(output)
    };
    let run = RunOptions {
        yes: args.yes,
        question: "Recover the cluster with this plan?".into(),
        addons: Default::default(),
        upgrade: Default::default(),
        restore: Default::default(),
    };
    with_session(&args.spec.file, opts, |s| {
        Box::pin(async move {
            let findings = preflight(s).await?;
            crate::ops::apply::removal_guard(s).await?;
            if findings.is_empty() {
                return Ok(RecoverReport {
                    cluster: s.cluster.name().to_string(),
                    findings,
                    run: None,
                });
            }
            if output == OutputFormat::Text {
                eprintln!("Lost or unhealthy:");
                for f in &findings {
                    eprintln!("  ! {f}");
                }
                eprintln!(
                    "Risk: each repair goes through a healthy etcd member and is refused if it would break quorum; \
machines the provider lost are made anew and their new host keys pinned; removed members \
and Nodes belong to machines that are gone.\n"
                );
            }
            let report = run_playbook(s, &pb, &run).await?;
            Ok(RecoverReport {
                cluster: s.cluster.name().to_string(),
                findings,
                run: Some(report),
            })
        })
    })
    .await
}

/// One round of `--watch`, as printed.
#[derive(Debug, Serialize)]
struct WatchRound {
    at: chrono::DateTime<chrono::Utc>,
    /// `healthy`, `repaired` or `failed` (the next round tries again).
    outcome: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    findings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<RunReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `--watch`: a round every `interval` until Ctrl-C. A round that fails (quorum lost,
/// the lock held by another run, a repair that did not finish) is reported and the next
/// round tries again; a repair killed half-way is resumed by the next round as by a
/// second `recover`.
async fn watch(args: &RecoverArgs, output: OutputFormat, verbose: bool) -> Result<(), Error> {
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let round = match once(args, output, verbose).await {
            Ok(r) => WatchRound {
                at: chrono::Utc::now(),
                outcome: if r.run.is_some() {
                    "repaired"
                } else {
                    "healthy"
                },
                findings: r.findings,
                run: r.run,
                error: None,
            },
            // What the user must fix before anything can run is not retried.
            Err(e @ (Error::Spec(_) | Error::Usage(_))) => return Err(e),
            Err(e) => WatchRound {
                at: chrono::Utc::now(),
                outcome: "failed",
                findings: Vec::new(),
                run: None,
                error: Some(
                    crate::error::render_chain(&e)
                        .trim_start_matches("error: ")
                        .to_string(),
                ),
            },
        };
        match output {
            OutputFormat::Json => println!("{}", serde_json::to_string(&round)?),
            OutputFormat::Text => {
                let at = round.at.format("%H:%M:%S");
                match (&round.error, &round.run) {
                    (Some(e), _) => println!(
                        "{at} repair failed (next round in {}s): {e}",
                        args.interval.as_secs()
                    ),
                    (None, Some(r)) => println!(
                        "{at} repaired: {} ({} phases, state generation {})",
                        round.findings.join("; "),
                        r.phases.len(),
                        r.generation
                    ),
                    (None, None) => println!("{at} healthy"),
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(args.interval) => {}
        }
    }
}
