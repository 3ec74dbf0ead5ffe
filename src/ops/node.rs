//! `kubeforge node ...`: what kubeforge runs on the cluster's own nodes. Today one
//! command: the control planes' snapshot timer ships each snapshot into the state bucket
//! (`spec.backup.ship`, see `crate::backup::ship`). Output goes to the node's journal.

use crate::backup::{self, ShipConfig};
use crate::cli::NodeCommand;
use crate::error::Error;
use crate::output::{print_json, OutputFormat};

pub async fn run(cmd: NodeCommand, output: OutputFormat) -> Result<(), Error> {
    match cmd {
        NodeCommand::ShipSnapshot { config, stream } => {
            let text = std::fs::read(&config)
                .map_err(|e| Error::Usage(format!("cannot read {}: {e}", config.display())))?;
            let cfg: ShipConfig = serde_json::from_slice(&text).map_err(|e| {
                Error::Usage(format!(
                    "{}: not a shipping configuration: {e}",
                    config.display()
                ))
            })?;
            let shipped = backup::ship(&cfg, &stream).await.map_err(|e| {
                Error::Usage(format!(
                    "snapshot {} not shipped to {} (it stays on this node for `kubeforge backup collect`): {e}",
                    stream.display(),
                    cfg.url
                ))
            })?;
            match output {
                OutputFormat::Json => print_json(&shipped)?,
                OutputFormat::Text => {
                    match &shipped.stored {
                        Some(m) => println!(
                            "shipped {} to {} (revision {}, {} keys, {} bytes, verified)",
                            m.name, cfg.url, m.revision, m.total_keys, m.db_bytes
                        ),
                        None => println!("{} is in {} already", shipped.name, cfg.url),
                    }
                    if !shipped.pruned.is_empty() {
                        println!(
                            "retention (keep {}): removed {}",
                            cfg.keep,
                            shipped.pruned.join(", ")
                        );
                    }
                }
            }
            Ok(())
        }
    }
}
