//! `kubeforge apply`: the bootstrap playbook (or `--playbook FILE`, or some of its
//! phases) run in a locked session: preview, confirm, phases in order, journalled. A
//! re-run skips what exists; a failed or killed run resumes.

use crate::cli::ApplyArgs;
use crate::error::Error;
use crate::ops::runner::{run_playbook, RunOptions};
use crate::ops::session::{with_session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::{phase, playbook};

/// A cluster whose whole control plane is gone (every control-plane machine missing or
/// fresh, while the state holds its CA) is not bootstrapped again over its state: that
/// would make a new, empty cluster under the old name. Refused before anything changes,
/// with the two ways on.
async fn control_plane_lost_guard(
    s: &crate::ops::session::Session,
    pb: &playbook::Playbook,
) -> Result<(), Error> {
    let doc = s.state.get().await;
    if doc.machines.is_empty() || !doc.secrets.pki.contains_key("ca.crt") {
        return Ok(());
    }
    let facts = crate::ops::preview::gather_facts_for(s, Some(pb)).await?;
    let cps = s.cluster.topology.control_planes();
    let any_running = cps.iter().any(|h| {
        facts
            .host(&h.name)
            .is_some_and(|f| f.control_plane_manifests)
    });
    // A control plane that does not answer may come back: not decided here.
    let any_unreachable = cps.iter().any(|h| {
        matches!(
            facts.absent.get(&h.name),
            Some(crate::facts::Absence::Unreachable(_))
        )
    });
    if any_running || any_unreachable {
        return Ok(());
    }
    Err(Error::Phase(Box::new(crate::phase::PhaseError::Gate {
        phase: "apply".into(),
        message: format!(
            "every control-plane machine of cluster `{}` is gone (missing at the provider or fresh), \
but the state holds its CA: nothing was changed. Restore the cluster from an etcd snapshot, \
or, to start over with a new empty cluster, `kubeforge destroy -f {}` and apply again",
            s.cluster.name(),
            s.cluster.path.display()
        ),
    })))
}

/// Machines that leave the cluster (in the state, no longer in the cluster file) are
/// taken out by `remove-nodes`; refused before anything changes when that cannot be
/// done safely: a control plane leaves while no etcd member answers (the quorum cannot
/// be checked), the removals would leave etcd without a healthy majority, or a leaving
/// machine's address now belongs to a host of the file (a rename: its reset would hit
/// the new host).
pub(crate) async fn removal_guard(s: &crate::ops::session::Session) -> Result<(), Error> {
    let Some(facts) = s.rt().ok().and_then(|rt| rt.facts()) else {
        return Ok(());
    };
    if facts.leaving.is_empty() {
        return Ok(());
    }
    let refuse = |message: String| {
        Error::Phase(Box::new(crate::phase::PhaseError::Gate {
            phase: crate::phase::remove::NAME.into(),
            message: format!("{message}; nothing was changed"),
        }))
    };
    for l in &facts.leaving {
        if let Some(h) = s
            .cluster
            .topology
            .hosts
            .iter()
            .find(|h| l.addresses.iter().any(|a| *a == h.address.to_string()))
        {
            return Err(refuse(format!(
                "{} ({}) left the cluster file, but {} has its address now: renaming a host is not supported (its removal would reset {}). Remove {} first (apply without {}), then add {}",
                l.name, l.address, h.name, h.name, l.name, h.name, h.name
            )));
        }
    }
    let cp_leaves = facts
        .leaving
        .iter()
        .any(|l| l.has(crate::spec::Role::ControlPlane));
    let initialized = s.state.get().await.secrets.pki.contains_key("ca.crt");
    if cp_leaves && facts.etcd.is_none() && initialized {
        return Err(refuse(
            "a control plane leaves the cluster, but no etcd member answers to check that its removal keeps a quorum".into(),
        ));
    }
    crate::phase::remove::check_quorum(&facts).map_err(refuse)
}

fn version_refusal(message: String) -> Error {
    Error::Phase(Box::new(crate::phase::PhaseError::Gate {
        phase: "apply".into(),
        message,
    }))
}

/// The version the control planes run when it differs from the file's (an upgrade, as
/// `Some(running)`); a file version lower than what runs is refused (a downgrade).
/// Control planes without an apiserver yet (a cluster being built) are not counted.
async fn version_change(s: &crate::ops::session::Session) -> Result<Option<String>, Error> {
    let Some(facts) = s.rt().ok().and_then(|rt| rt.facts()) else {
        return Ok(None);
    };
    let want = s.cluster.version();
    let mut older = None;
    for h in s.cluster.topology.control_planes() {
        let Some(tag) = facts.host(&h.name).and_then(|f| f.apiserver_tag.clone()) else {
            continue;
        };
        let Some(v) = crate::ops::upgrade::tag_version(&tag) else {
            continue;
        };
        if v > want {
            return Err(version_refusal(format!(
                "{} runs v{v} and the file says v{want}: lowering spec.kubernetesVersion is refused (a downgrade is a restore from the snapshot taken before the upgrade)",
                h.name
            )));
        }
        if v < want {
            older = Some(format!("v{v}"));
        }
    }
    Ok(older)
}

pub async fn run(args: ApplyArgs, output: OutputFormat, verbose: bool) -> Result<(), Error> {
    let mut pb = playbook::load(args.playbook.as_deref(), &phase::names())?;
    playbook::select_phases(&mut pb, &args.phases)?;
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
        question: "Apply this plan?".into(),
        addons: args.addons.options(),
        upgrade: crate::phase::upgrade::UpgradeOptions {
            drain_timeout: args.drain_timeout,
            ..Default::default()
        },
        restore: Default::default(),
    };
    let whole = args.phases.is_empty() && args.playbook.is_none();
    let report = with_session(&args.spec.file, opts, |s| {
        Box::pin(async move {
            control_plane_lost_guard(s, &pb).await?;
            removal_guard(s).await?;
            if let Some(from) = version_change(s).await? {
                if !whole {
                    return Err(version_refusal(format!(
                        "the cluster runs {from} and the file says v{}: that is an upgrade; run `kubeforge upgrade` (or `apply` without --phases/--playbook)",
                        s.cluster.version()
                    )));
                }
                if output == OutputFormat::Text {
                    eprintln!(
                        "spec.kubernetesVersion was raised from {from} to v{}: apply runs the rolling upgrade (the same plan as `kubeforge upgrade`).",
                        s.cluster.version()
                    );
                }
                let up = crate::ops::upgrade::upgrade_session(s, &run, output).await?;
                return up
                    .run
                    .ok_or_else(|| Error::Internal("the upgrade found nothing to do".into()));
            }
            run_playbook(s, &pb, &run).await
        })
    })
    .await?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => println!(
            "cluster `{}` applied ({} phases, state generation {})",
            report.cluster,
            report.phases.len(),
            report.generation
        ),
    }
    Ok(())
}
