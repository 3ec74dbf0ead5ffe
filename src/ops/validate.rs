//! `kubeforge validate`: decode and check a cluster file, print every problem.

use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::spec::{self, SpecError};
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Report<'a> {
    valid: bool,
    file: &'a Path,
    cluster: Option<&'a str>,
    hosts: usize,
    errors: &'a [SpecError],
    warnings: &'a [SpecError],
}

/// Print warnings the way every command does (stderr, text mode only).
pub fn print_warnings(warnings: &[SpecError], output: OutputFormat) {
    if output == OutputFormat::Text {
        for w in warnings {
            eprintln!("warning: {w}");
        }
    }
}

pub fn run(file: &Path, output: OutputFormat) -> Result<(), Error> {
    match spec::load_file(file) {
        Ok(loaded) => {
            match output {
                OutputFormat::Json => print_json(&Report {
                    valid: true,
                    file,
                    cluster: Some(loaded.name()),
                    hosts: loaded.topology.hosts.len(),
                    errors: &[],
                    warnings: &loaded.warnings,
                })?,
                OutputFormat::Text => {
                    print_warnings(&loaded.warnings, output);
                    println!(
                        "{}: cluster `{}` is valid ({} hosts, Kubernetes {})",
                        file.display(),
                        loaded.name(),
                        loaded.topology.hosts.len(),
                        loaded.cluster.spec.kubernetes_version
                    );
                }
            }
            Ok(())
        }
        Err(errs) => {
            if output == OutputFormat::Json {
                print_json(&Report {
                    valid: false,
                    file,
                    cluster: None,
                    hosts: 0,
                    errors: &errs.errors,
                    warnings: &[],
                })?;
            }
            Err(errs.into())
        }
    }
}
