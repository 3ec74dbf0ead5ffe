pub mod addons;
pub mod apply;
pub mod artifacts;
pub mod backup;
pub mod bench;
pub mod bench_bootstrap;
pub mod bench_converge;
pub mod bench_plan;
pub mod certs;
pub mod clusters;
pub mod completion;
pub mod destroy;
pub mod image;
pub mod inventory;
pub mod kubeconfig;
pub mod node;
pub mod plan;
pub mod preview;
pub mod proxy;
pub mod recover;
pub mod render;
pub mod reset;
pub mod restore;
pub mod runner;
pub mod schema;
pub mod session;
pub mod state;
pub mod status;
pub mod upgrade;
pub mod validate;

/// Ask `question [y/N]` on the terminal; anything but yes is `refused` (a usage error,
/// exit 2). Without a terminal nothing is asked: the caller must pass --yes.
pub fn confirm(question: &str, verb: &str, refused: &str) -> Result<(), crate::error::Error> {
    use crate::error::Error;
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "not {verb} without confirmation: stdin is not a terminal; pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::Usage(format!("cannot read the answer: {e}")))?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Usage(refused.into()))
    }
}

/// Run the command `cli` names: one match arm per command, each calling one ops
/// function (argument types live in `cli/`, which depends on nothing above it).
///
/// `Ok` carries the exit status of a success: 0, or 2 for `plan --detailed-exitcode`
/// with changes pending.
pub async fn run(cli: crate::cli::Cli) -> Result<u8, crate::error::Error> {
    use crate::cli::Command;
    let output = cli.output;
    let status = match cli.command {
        Command::Plan(args) => {
            let detailed = args.detailed_exitcode;
            let changes = crate::ops::plan::run(args, output).await?;
            return Ok(match (detailed, changes) {
                (true, crate::ops::plan::Changes::Pending) => PLAN_CHANGES_PENDING,
                _ => 0,
            });
        }
        Command::Status(args) => return crate::ops::status::run(args, output).await,
        Command::Certs(args) => return crate::ops::certs::run(args, output, cli.verbose > 0).await,
        Command::Validate(args) => crate::ops::validate::run(&args.file, output),
        Command::Render(args) => crate::ops::render::run(&args.spec.file, &args.out, output),
        Command::Apply(args) => crate::ops::apply::run(args, output, cli.verbose > 0).await,
        Command::Addons(args) => crate::ops::addons::run(args, output).await,
        Command::Recover(args) => crate::ops::recover::run(args, output, cli.verbose > 0).await,
        Command::Upgrade(args) => crate::ops::upgrade::run(args, output, cli.verbose > 0).await,
        Command::Backup(args) => crate::ops::backup::run(args, output).await,
        Command::Restore(args) => crate::ops::restore::run(args, output, cli.verbose > 0).await,
        Command::Destroy(args) => crate::ops::destroy::run(args, output).await,
        Command::Reset(args) => crate::ops::reset::run(args, output, cli.verbose > 0).await,
        Command::Kubeconfig(args) => {
            let opts = crate::ops::kubeconfig::Options {
                out: args.out,
                force: args.force,
                merge: args.merge,
                context: args.context,
                server: args.server,
            };
            crate::ops::kubeconfig::run(&args.spec.file, opts, output).await
        }
        Command::Proxy(args) => crate::ops::proxy::run(args, output).await,
        Command::Artifacts(args) => crate::ops::artifacts::run(args, output).await,
        Command::State(args) => crate::ops::state::run(args, output).await,
        Command::Image(args) => crate::ops::image::run(args, output).await,
        Command::Bench(args) => crate::ops::bench::run(args, output).await,
        Command::Node(cmd) => crate::ops::node::run(cmd, output).await,
        Command::Completion(args) => crate::ops::completion::completion(args.shell),
        Command::Man(args) => crate::ops::completion::man(args.out.as_deref(), output),
        Command::Schema => crate::ops::schema::run(),
        Command::Clusters(args) => crate::ops::clusters::run(args, output).await,
        Command::SshMux { socket } => crate::transport::mux::serve(&socket)
            .await
            .map_err(|e| crate::error::Error::Usage(format!("ssh-mux: {e}"))),
        Command::Inventory(args) => {
            let query = match args.host {
                Some(h) => crate::ops::inventory::Query::Host(h),
                None => crate::ops::inventory::Query::List,
            };
            crate::ops::inventory::run(&args.spec.file, query).await
        }
    };
    status.map(|()| 0)
}

/// `plan --detailed-exitcode`: changes pending (terraform's 2).
pub const PLAN_CHANGES_PENDING: u8 = 2;

/// The exit code of a failed command: its kind's, except that `plan
/// --detailed-exitcode` reports bad input as 1, so that its 2 only means "changes".
pub fn failure_exit_code(cli_detailed_exitcode: bool, err: &crate::error::Error) -> u8 {
    let code = err.exit_code();
    if cli_detailed_exitcode && code == PLAN_CHANGES_PENDING {
        crate::error::ExitKind::Internal as u8
    } else {
        code
    }
}
