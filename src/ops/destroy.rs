//! `kubeforge destroy`: list every resource of the cluster the provider finds by its
//! tag, confirm, delete them under the state lock, and record that in the state.

use crate::cli::DestroyArgs;
use crate::error::Error;
use crate::ops::session::{with_session, Session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::provider::Resource;
use crate::spec::{self, Provider};
use serde::Serialize;

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
    if let Provider::Static(s) = &loaded.cluster.spec.provider {
        return Err(Error::Usage(format!(
            "the static provider's hosts (from {}) were not made by kubeforge: nothing to destroy (`kubeforge reset` takes the cluster off them and keeps the hosts)",
            s.source()
        )));
    }
    let yes = args.yes;
    let report = with_session(&args.spec.file, SessionOptions::locked(output), |s| {
        Box::pin(async move { run_locked(s, yes, output).await })
    })
    .await?;
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

async fn run_locked(s: &Session, yes: bool, output: OutputFormat) -> Result<DestroyReport, Error> {
    let c = &s.cluster;
    let provider = match &c.cluster.spec.provider {
        Provider::Docker(d) => {
            // The docker provider needs no key to delete; any key opens it.
            let key = crate::transport::ssh::generate_ed25519_key();
            let auth = crate::transport::SshAuth::Key(std::sync::Arc::new(key));
            Box::new(crate::provider::factory::docker_provider(c, d, &auth).await?)
                as Box<dyn crate::provider::Provider>
        }
        _ => crate::provider::factory::open_cloud(c, String::new())?
            .ok_or_else(|| Error::Internal("no provider".into()))?,
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
    if !found.is_empty() && !yes {
        crate::ops::confirm("Delete all of these?", "destroying", "nothing deleted")?;
    }
    let deleted = provider.destroy_all().await?;
    s.check_lock()?;
    let generation = if s.state.get().await.generation > 0 {
        let entry = s.state.journal_start("destroy", "", None).await;
        s.state.journal_finish(&entry, None).await;
        s.state
            .update(|doc| {
                doc.machines.clear();
                doc.host_keys.clear();
                // The cluster is gone on purpose: its CA, kubeconfig and addons with it
                // (the next apply makes a new cluster).
                doc.secrets.pki.clear();
                doc.secrets.admin_kubeconfig = None;
                doc.secrets.extra.remove(crate::phase::CA_HASH_KEY);
                doc.addons.clear();
            })
            .await?;
        // And from this run's pins, which the session writes back when it ends: a
        // machine made later at the same address has a new key.
        if let Ok(rt) = s.rt() {
            for host in rt.host_keys.snapshot().into_keys() {
                rt.host_keys.forget(&host);
            }
        }
        Some(s.state.get().await.generation)
    } else {
        None
    };
    Ok(DestroyReport {
        cluster: c.name().to_string(),
        provider: provider.kind().to_string(),
        deleted,
        generation,
    })
}
