//! `kubeforge completion SHELL` and `kubeforge man`: generated from the clap types by
//! clap_complete and clap_mangen, so they cannot drift from the real arguments.

use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;

/// Print the completion script of `shell` on stdout.
pub fn completion(shell: clap_complete::Shell) -> Result<(), Error> {
    let mut cmd = crate::cli::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kubeforge", &mut buf);
    write_stdout(&buf)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Error::Usage(format!("cannot write to stdout: {e}")))
}

/// Without `out`: kubeforge(1) on stdout. With it: one page per command and
/// subcommand (`kubeforge-state-show.1`, ...) in that directory.
pub fn man(out: Option<&Path>, output: OutputFormat) -> Result<(), Error> {
    let cmd = crate::cli::Cli::command();
    let Some(dir) = out else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .map_err(|e| Error::Internal(format!("cannot render the man page: {e}")))?;
        return write_stdout(&buf);
    };
    let write_err = |source| Error::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write_err)?;
    clap_mangen::generate_to(cmd, dir).map_err(write_err)?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .map_err(write_err)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("kubeforge") && n.ends_with(".1"))
        .collect();
    pages.sort();
    match output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "dir": dir.display().to_string(),
            "pages": pages,
        }))?,
        OutputFormat::Text => println!(
            "wrote {} man pages to {} (try: man -l {})",
            pages.len(),
            dir.display(),
            dir.join("kubeforge.1").display()
        ),
    }
    Ok(())
}
