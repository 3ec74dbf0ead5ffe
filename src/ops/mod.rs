pub mod addons;
pub mod apply;
pub mod artifacts;
pub mod bench;
pub mod completion;
pub mod destroy;
pub mod image;
pub mod kubeconfig;
pub mod plan;
pub mod preview;
pub mod recover;
pub mod render;
pub mod runner;
pub mod session;
pub mod state;
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
pub async fn run(cli: crate::cli::Cli) -> Result<(), crate::error::Error> {
    use crate::cli::Command;
    let output = cli.output;
    match cli.command {
        Command::Validate(args) => crate::ops::validate::run(&args.file, output),
        Command::Plan(args) => crate::ops::plan::run(args, output).await,
        Command::Render(args) => crate::ops::render::run(&args.spec.file, &args.out, output),
        Command::Apply(args) => crate::ops::apply::run(args, output, cli.verbose > 0).await,
        Command::Addons(args) => crate::ops::addons::run(args, output).await,
        Command::Recover(args) => crate::ops::recover::run(args, output, cli.verbose > 0).await,
        Command::Upgrade(args) => crate::ops::upgrade::run(args, output, cli.verbose > 0).await,
        Command::Destroy(args) => crate::ops::destroy::run(args, output).await,
        Command::Kubeconfig(args) => crate::ops::kubeconfig::run(&args.file, output).await,
        Command::Artifacts(args) => crate::ops::artifacts::run(args, output).await,
        Command::State(args) => crate::ops::state::run(args, output).await,
        Command::Image(args) => crate::ops::image::run(args, output).await,
        Command::Bench(args) => crate::ops::bench::run(args, output).await,
        Command::Completion(args) => crate::ops::completion::completion(args.shell),
        Command::Man(args) => crate::ops::completion::man(args.out.as_deref(), output),
    }
}
