//! `kubeforge apply`: the bootstrap playbook (or `--playbook FILE`, or some of its
//! phases) run in a locked session: preview, confirm, phases in order, journalled. A
//! re-run skips what exists; a failed or killed run resumes.

use crate::cli::ApplyArgs;
use crate::error::Error;
use crate::ops::runner::{run_playbook, RunOptions};
use crate::ops::session::{with_session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::{phase, playbook};

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
    };
    let report = with_session(&args.spec.file, opts, |s| {
        Box::pin(async move { run_playbook(s, &pb, &run).await })
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
