//! `kubeforge destroy`: list every resource of the cluster the provider finds by its
//! tag, confirm, delete them under the state lock, and record that in the state.

use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::provider::Resource;
use crate::spec::{self, LoadedCluster, Provider};
use clap::Args;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub spec: crate::cli::SpecArgs,
    /// Delete without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Serialize)]
struct DestroyReport {
    cluster: String,
    provider: String,
    deleted: Vec<Resource>,
    /// State generation after the machines were removed from it (None: no state).
    generation: Option<u64>,
}

pub async fn run(args: DestroyArgs, output: OutputFormat) -> Result<(), Error> {
    let loaded = spec::load_file(&args.spec.file)?;
    crate::ops::validate::print_warnings(&loaded.warnings, output);
    if let Provider::Static(s) = &loaded.cluster.spec.provider {
        return Err(Error::Usage(format!(
            "the static provider's hosts (from {}) were not made by kubeforge: nothing to destroy",
            s.inventory
        )));
    }
    let store = crate::ops::apply::open_store(&loaded)?;
    let lock = store.lock(&command_line()).await?;
    let result = crate::state::until_ctrl_c(run_locked(&loaded, store, &args, output)).await;
    let released = lock.release().await;
    let report = result??;
    released?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => println!(
            "cluster `{}` destroyed: {} {} resources deleted",
            report.cluster,
            report.deleted.len(),
            report.provider
        ),
    }
    Ok(())
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

async fn run_locked(
    c: &LoadedCluster,
    store: crate::state::StateStore,
    args: &DestroyArgs,
    output: OutputFormat,
) -> Result<DestroyReport, Error> {
    let loaded = store.load().await?;
    let provider = match &c.cluster.spec.provider {
        Provider::Docker(d) => {
            // The docker provider needs no key to delete; any key opens it.
            let key = crate::transport::ssh::generate_ed25519_key();
            let auth = crate::transport::SshAuth::Key(std::sync::Arc::new(key));
            Box::new(crate::ops::apply::docker_provider(c, d, &auth).await?)
                as Box<dyn crate::provider::Provider>
        }
        _ => crate::phase::provision::open_cloud(c, String::new())?
            .ok_or_else(|| Error::Usage("internal: no provider".into()))?,
    };
    let found = provider.resources().await?;
    if output == OutputFormat::Text {
        if found.is_empty() {
            eprintln!(
                "Nothing of cluster `{}` exists on {}.",
                c.name(),
                provider.kind()
            );
        } else {
            eprintln!(
                "Destroy cluster `{}`: delete {} resources on {} (everything tagged with the cluster):",
                c.name(),
                found.len(),
                provider.kind()
            );
            for r in &found {
                eprintln!("  delete  {r}");
            }
        }
    }
    if !found.is_empty() && !args.yes {
        crate::ops::confirm("Delete all of these?", "destroying", "nothing deleted")?;
    }
    let deleted = provider.destroy_all().await?;
    let generation = match loaded {
        Some((doc, version)) => {
            let state = crate::phase::StateHandle::new(store, doc, version);
            state
                .update(|doc| {
                    doc.machines.clear();
                    doc.host_keys.clear();
                    let now = chrono::Utc::now();
                    doc.journal.push(crate::state::JournalEntry {
                        phase: "destroy".into(),
                        plan_digest: String::new(),
                        status: crate::state::PhaseStatus::Done,
                        started: now,
                        finished: Some(now),
                        host: None,
                        error: None,
                    });
                })
                .await?;
            Some(state.get().await.generation)
        }
        None => None,
    };
    Ok(DestroyReport {
        cluster: c.name().to_string(),
        provider: provider.kind().to_string(),
        deleted,
        generation,
    })
}
