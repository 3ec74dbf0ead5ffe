//! `kubeforge render`: every rendered file, written to DIR/<host>/<remote path>.

use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::render::{self, Secrets};
use crate::spec;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
struct Written {
    host: String,
    remote_path: String,
    local_path: PathBuf,
    sha256: String,
}

/// Write each file with its secrets redacted: rendered output is for reading and
/// reviewing; the real secrets exist only in the encrypted state.
pub fn run(file: &Path, out: &Path, output: OutputFormat) -> Result<(), Error> {
    let loaded = spec::load_file(file)?;
    crate::ops::validate::print_warnings(&loaded.warnings, output);
    let secrets = Secrets::generate();
    let files = render::render_all(&loaded, &secrets)?;
    let mut written = Vec::new();
    for (_, f) in &files {
        let rel = f.path.trim_start_matches('/');
        let dest = out.join(&f.host).join(rel);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let content = if f.path == crate::render::views::FAILOVER_CONFIG {
            crate::render::views::redact_failover(&f.content)
        } else {
            secrets.redact(&f.content)
        };
        std::fs::write(&dest, &content).map_err(|source| Error::Write {
            path: dest.clone(),
            source,
        })?;
        written.push(Written {
            host: f.host.clone(),
            remote_path: f.path.clone(),
            local_path: dest,
            sha256: f.sha256(),
        });
    }
    match output {
        OutputFormat::Json => print_json(&written)?,
        OutputFormat::Text => {
            for w in &written {
                println!("{}", w.local_path.display());
            }
            println!(
                "{} files for {} hosts written to {} (secrets redacted)",
                written.len(),
                loaded.topology.hosts.len(),
                out.display()
            );
        }
    }
    Ok(())
}
