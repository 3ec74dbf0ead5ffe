//! Command-line types. Each command converts its arguments and calls one `ops` function.

use crate::error::Error;
use crate::output::OutputFormat;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "kubeforge",
    version,
    about = "Build and operate highly-available Kubernetes clusters",
    propagate_version = true
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Output format for results.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a cluster file (and its inventory) and report every problem found.
    Validate(SpecArgs),
    /// Show what a bootstrap would do, without touching anything (works offline).
    Plan(PlanArgs),
    /// Write every rendered file to DIR/<host>/<remote path>.
    Render(RenderArgs),
    /// Bootstrap or converge the cluster: plan, confirm, then apply phase by phase.
    Apply(crate::ops::apply::ApplyArgs),
    /// Plan, apply or check the cluster's addons (MetalLB, ingress, Rook-Ceph) on their own.
    Addons(crate::ops::addons::AddonsArgs),
    /// Delete every machine and cloud resource of the cluster (asks first; --yes skips).
    Destroy(crate::ops::destroy::DestroyArgs),
    /// Print the admin kubeconfig kept (encrypted) in the state.
    Kubeconfig(SpecArgs),
    /// What a Kubernetes version needs (binaries, images, host packages) and fetching it.
    Artifacts(crate::ops::artifacts::ArtifactsArgs),
    /// Inspect and manage the remote state: show, history, unlock, pull, push.
    State(crate::state::cli::StateArgs),
    /// Build or inspect the local node image used by the docker provider.
    Image(crate::provider::cli::ImageArgs),
    /// Measure fan-out performance against peers (parallel ssh/scp, Ansible).
    Bench(crate::ops::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The cluster file.
    #[arg(short = 'f', long = "file", default_value = "cluster.yaml")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Also print the (redacted) content of every file (offline plans).
    #[arg(long)]
    pub show_content: bool,
    /// Plan for fresh hosts without reading the state or contacting any host. Without
    /// it, a cluster with machines in its state is planned against the hosts: only
    /// what would change is shown, files as diffs.
    #[arg(long)]
    pub offline: bool,
    /// A playbook file replacing the embedded bootstrap playbook.
    #[arg(long)]
    pub playbook: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Output directory (created if missing).
    #[arg(long = "out")]
    pub out: PathBuf,
}

pub fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    // kube-client logs every API error it returns to us (404 while probing discovery,
    // 409 conflicts); we report those ourselves, so its own lines only show at -vv.
    let default = match verbose {
        0 => "warn,kube_client=off",
        1 => "info,kube_client=off",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub async fn run(cli: Cli) -> Result<(), Error> {
    let output = cli.output;
    match cli.command {
        Command::Validate(args) => crate::ops::validate::run(&args.file, output),
        Command::Plan(args) => crate::ops::plan::run(args, output).await,
        Command::Render(args) => crate::ops::render::run(&args.spec.file, &args.out, output),
        Command::Apply(args) => crate::ops::apply::run(args, output, cli.verbose > 0).await,
        Command::Addons(args) => crate::ops::addons::run(args, output).await,
        Command::Destroy(args) => crate::ops::destroy::run(args, output).await,
        Command::Kubeconfig(args) => crate::ops::kubeconfig::run(&args.file, output).await,
        Command::Artifacts(args) => crate::ops::artifacts::run(args, output).await,
        Command::State(args) => crate::state::cli::run(args, output).await,
        Command::Image(args) => crate::provider::cli::run_image(args, output).await,
        Command::Bench(args) => crate::ops::bench::run(args, output).await,
    }
}
