//! The `sessiond` binary: parse flags, start logging, run.

use std::process::ExitCode;

use clap::Parser;
use sessiond::config::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve(config) = cli.command;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sessiond: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sessiond::app::run(config, sessiond::app::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(sessiond::Error::Config(message)) => {
            eprintln!("sessiond: {message}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("sessiond: {error}");
            ExitCode::FAILURE
        }
    }
}
