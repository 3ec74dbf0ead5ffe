//! `kubeforge reset`: the cluster taken off its hosts, which stay: the bare-metal
//! counterpart of `destroy` (which deletes machines a provider made). Plan first, then
//! confirmation (`--yes` skips it); the reset playbook connects (host keys checked as
//! always) and resets every host in parallel. A killed run is run again: every step is
//! idempotent.

use crate::cli::ResetArgs;
use crate::error::Error;
use crate::ops::runner::{run_playbook, RunOptions};
use crate::ops::session::{with_session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::{phase, playbook};

pub async fn run(args: ResetArgs, output: OutputFormat, verbose: bool) -> Result<(), Error> {
    let pb = playbook::named("reset", &phase::names())?;
    let opts = SessionOptions {
        accept_new_host_keys: args.accept_new_host_key.clone(),
        concurrency: args.concurrency,
        verbose,
        ..SessionOptions::locked(output)
    };
    let run = RunOptions {
        yes: args.yes,
        question: "Reset these hosts? The cluster on them is deleted (etcd's data included; snapshots in the state stay)".into(),
        addons: Default::default(),
        upgrade: Default::default(),
        restore: Default::default(),
    };
    let report = with_session(&args.spec.file, opts, |s| {
        Box::pin(async move { run_playbook(s, &pb, &run).await })
    })
    .await?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => println!(
            "cluster `{}`: hosts reset (state generation {}); `kubeforge apply` builds it anew",
            report.cluster, report.generation
        ),
    }
    Ok(())
}
