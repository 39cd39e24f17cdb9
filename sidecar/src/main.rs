//! `byok-sidecar`: the worker, stopped by SIGTERM/SIGINT.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use byok_sidecar::config::{Cli, Config};
use byok_sidecar::{logging, signals, worker};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match logging::init(cli.log_format, &cli.log_level) {
        Ok(()) => match Config::from_cli(cli) {
            Ok(cfg) => worker::run(cfg, signals::terminated()).await,
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e),
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
