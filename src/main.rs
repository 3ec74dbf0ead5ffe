use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kubeforge::cli::Cli::parse();
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
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", kubeforge::error::render_chain(&err));
            ExitCode::from(err.exit_code())
        }
    }
}
