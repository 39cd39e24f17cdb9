//! `byok-sidecar` (the worker) and `byok-sidecar mock-vendor`.

use std::process::ExitCode;

use byok_sidecar::config::{Cli, Command, Config};
use byok_sidecar::{logging, mock, worker};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::MockVendor(args)) => match logging::init(args.log_format, "info") {
            Ok(()) => mock::run(args).await,
            Err(e) => Err(e),
        },
        None => match logging::init(cli.run.log_format, &cli.run.log_level) {
            Ok(()) => match Config::from_args(cli.run) {
                Ok(cfg) => worker::run(cfg).await,
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("byok-sidecar: {}", byok_core::redact::redact(&e));
            ExitCode::from(2)
        }
    }
}
