//! Running a playbook in a session: show the preview, confirm, then for each phase
//! render with what earlier phases recorded, plan, journal, apply. A re-run skips what
//! exists (files by sha256, steps by their checks); a failed or killed run resumes.
//! `apply` (bootstrap) and every later playbook go through `run_playbook`.

use crate::error::Error;
use crate::ops::session::Session;
use crate::output::OutputFormat;
use crate::phase::{self, ApplyContext, PhasePlan};
use crate::playbook::Playbook;
use crate::render;
use crate::transport::ProgressMode;
use serde::Serialize;
use std::time::Instant;

/// How a playbook is run.
pub struct RunOptions {
    /// Run without asking for confirmation.
    pub yes: bool,
    /// The confirmation question.
    pub question: String,
    /// How addons are applied (the `addons` phase).
    pub addons: crate::addons::AddonOptions,
    /// How an upgrade rolls (the upgrade phases).
    pub upgrade: crate::phase::upgrade::UpgradeOptions,
    /// What a restore restores.
    pub restore: crate::phase::restore::RestoreOptions,
}

#[derive(Debug, Serialize)]
pub struct PhaseOutcome {
    pub phase: String,
    pub status: &'static str,
    pub seconds: f64,
    /// Files uploaded because the host's copy differed (or was missing).
    pub files_sent: usize,
    /// Host commands run; skipped ones found their result already there.
    pub steps_run: usize,
    pub steps_skipped: usize,
    /// What the phase reported for the operator (addon outcomes and readiness).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub cluster: String,
    pub playbook: String,
    pub generation: u64,
    /// State generations this run wrote (a run that changed nothing writes at most one,
    /// its journal).
    pub state_writes: u64,
    pub phases: Vec<PhaseOutcome>,
}

fn internal(what: &str) -> Error {
    Error::Internal(what.to_string())
}

/// How long what the preview found on the hosts stands for them, while the run has
/// changed nothing (a confirmation that took longer asks the hosts again).
const PREVIEW_TRUST: std::time::Duration = std::time::Duration::from_secs(60);

/// Preview, confirm, then run every phase of `pb` in order.
pub async fn run_playbook(
    s: &Session,
    pb: &Playbook,
    opts: &RunOptions,
) -> Result<RunReport, Error> {
    let c = &s.cluster;
    let rt = s.rt()?;
    let output = s.opts.output;
    let preview = crate::ops::preview::build(s, pb).await?;
    let previewed_at = Instant::now();
    // Host parts the preview found done, trusted while nothing changed (see
    // `phase::DECLARATIVE`); not when a kubeadm of an earlier run was still busy on a
    // host (`connect` waits for it, and it changes the host meanwhile).
    let found_done = match &preview {
        crate::ops::preview::Preview::Online { plan, .. }
            if pb
                .phases
                .iter()
                .all(|p| phase::DECLARATIVE.contains(&p.name.as_str()))
                && plan.facts.hosts.values().all(|h| h.busy.is_empty()) =>
        {
            plan.done.clone()
        }
        _ => Default::default(),
    };
    if output == OutputFormat::Text {
        eprint!("{}", crate::ops::preview::text(&preview, c));
    }
    if !opts.yes {
        crate::ops::confirm(&opts.question, "applying", "not applied")?;
    }
    let registry = phase::registry();
    let mut outcomes = Vec::new();
    let total = pb.phases.len();
    // An overall bar on a terminal; plain lines otherwise (logs, CI).
    let overall = (rt.progress != ProgressMode::Hidden).then(|| {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(c.name().to_string());
        bar
    });
    let say = |line: String| match &overall {
        Some(bar) => bar.println(line),
        None if output == OutputFormat::Text => eprintln!("{line}"),
        None => {}
    };
    // Whether a phase of this run changed a host (files sent, commands run).
    let mut changed = false;
    for (i, r) in pb.phases.iter().enumerate() {
        let Some(ph) = registry.iter().find(|p| p.name() == r.name) else {
            return Err(internal(&format!("phase {} is not implemented", r.name)));
        };
        s.check_lock()?;
        // Re-render with what earlier phases recorded (e.g. the CA hash for joins).
        let secrets = s
            .secrets()
            .await
            .ok_or_else(|| internal("the cluster's secrets are missing"))?;
        let facts = rt.facts();
        let init = phase::init_node_name(c, facts.as_deref());
        let files = render::render_all_with_init(c, &secrets, init.as_deref())?;
        let plan = phase::plan_phase(ph.as_ref(), r, c, &files, &secrets, facts.as_deref());
        let digest = plan_digest(&plan);
        match &overall {
            Some(bar) => bar.set_message(plan.name.clone()),
            None if output == OutputFormat::Text => eprintln!(
                "==> phase {}/{total} {}: {}",
                i + 1,
                plan.name,
                plan.description
            ),
            None => {}
        }
        let span = tracing::info_span!("phase", name = %plan.name);
        let quiet = !changed && s.state.journal_done(&plan.name, None).await;
        let unchanged = if !changed && previewed_at.elapsed() <= PREVIEW_TRUST {
            plan.hosts
                .iter()
                .filter(|hp| {
                    found_done.contains(&(
                        plan.name.clone(),
                        hp.host.clone(),
                        phase::host_plan_digest(hp),
                    ))
                })
                .map(|hp| hp.host.clone())
                .collect()
        } else {
            Default::default()
        };
        let entry = s.state.journal_start(&plan.name, &digest, None).await;
        let started = Instant::now();
        let ctx = ApplyContext {
            cluster: c,
            files: &files,
            secrets: &secrets,
            rt,
            state: &s.state,
            provider: s.provider.as_deref(),
            done: Default::default(),
            addons: &opts.addons,
            upgrade: &opts.upgrade,
            restore: &opts.restore,
            notes: Default::default(),
            quiet,
            unchanged,
        };
        let result = tracing::Instrument::instrument(ph.apply(&ctx, &plan), span).await;
        let seconds = started.elapsed().as_secs_f64();
        let changes = ctx.done.lock().map(|d| d.clone()).unwrap_or_default();
        let notes = ctx.notes.lock().map(|n| n.clone()).unwrap_or_default();
        for n in &notes {
            say(format!("    {n}"));
        }
        match result {
            Ok(()) => {
                s.state.journal_finish(&entry, None).await;
                // A phase that changed hosts is recorded now; one that found everything
                // in place waits for the next save (at most one write for a no-op run).
                if changes.files_sent + changes.steps_run > 0 {
                    changed = true;
                    s.state.flush().await?;
                }
                say(format!(
                    "    {} done in {seconds:.1}s: {} files sent, {} commands run, {} already done",
                    plan.name, changes.files_sent, changes.steps_run, changes.steps_skipped
                ));
                if let Some(bar) = &overall {
                    bar.inc(1);
                }
                outcomes.push(PhaseOutcome {
                    phase: plan.name.clone(),
                    status: "done",
                    seconds,
                    files_sent: changes.files_sent,
                    steps_run: changes.steps_run,
                    steps_skipped: changes.steps_skipped,
                    notes,
                });
            }
            Err(e) => {
                let text = secrets.redact(&crate::error::render_chain(&e));
                s.state.journal_finish(&entry, Some(text)).await;
                // The failure is recorded; if even that fails, the phase error is the
                // one to show.
                let _ = s.state.flush().await;
                if let Some(bar) = &overall {
                    bar.abandon_with_message(format!("{} failed", plan.name));
                }
                return Err(Error::Phase(Box::new(e)));
            }
        }
    }
    s.state.flush().await?;
    if let Some(bar) = &overall {
        bar.finish_with_message("done");
    }
    let doc = s.state.get().await;
    Ok(RunReport {
        cluster: c.name().to_string(),
        playbook: pb.name.clone(),
        generation: doc.generation,
        state_writes: s.state.saves().await,
        phases: outcomes,
    })
}

fn plan_digest(p: &PhasePlan) -> String {
    // The journal keeps the first 8 bytes.
    let mut d = phase::json_digest(p);
    d.truncate(16);
    d
}
