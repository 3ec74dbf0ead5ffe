use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kubeforge::cli::Cli::parse();
    let detailed_exitcode = matches!(
        &cli.command,
        kubeforge::cli::Command::Plan(p) if p.detailed_exitcode
    );
    kubeforge::cli::init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(kubeforge::ops::run(cli)) {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            eprintln!("{}", kubeforge::error::render_chain(&err));
            ExitCode::from(kubeforge::ops::failure_exit_code(detailed_exitcode, &err))
        }
    }
}
