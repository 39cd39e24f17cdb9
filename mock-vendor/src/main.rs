//! `byok-mock-vendor`: serves the mock Anthropic and OpenAI APIs on loopback
//! until SIGTERM/SIGINT. The first line on stdout is
//! `mock-vendor listening on http://ADDR`; logs go to stderr.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// byok-mock-vendor: a loopback stand-in for the Anthropic and OpenAI APIs
/// (tests and demos only; keys select behaviours by marker words).
#[derive(Debug, Parser)]
#[command(name = "byok-mock-vendor", version)]
struct Args {
    /// Address to listen on (loopback only; port 0 picks a free port).
    #[arg(long, env = "BYOK_MOCK_LISTEN", default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Delay of keys marked `mockslow`, milliseconds.
    #[arg(long, default_value_t = 1500)]
    slow_ms: u64,
    /// Latency added to every vendor call, milliseconds (benchmarks: a
    /// stand-in for the vendor's round trip).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// How long keys marked `mockhang` hang before answering, seconds.
    #[arg(long, default_value_t = 300)]
    hang_seconds: u64,
    /// Log format: `json` or `text`.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: the demo and the leak suite read files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter("info");
    let installed = match args.log_format {
        LogFormat::Json => logs.json().try_init(),
        LogFormat::Text => logs.try_init(),
    };
    if let Err(e) = installed {
        eprintln!("byok-mock-vendor: cannot set up logging: {e}");
        return ExitCode::from(2);
    }
    let handle = match byok_mock_vendor::start(
        args.listen,
        Duration::from_millis(args.slow_ms),
        Duration::from_secs(args.hang_seconds),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("byok-mock-vendor: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    handle
        .state
        .set_latency(Duration::from_millis(args.latency_ms));
    println!("mock-vendor listening on http://{}", handle.addr);
    tracing::info!(
        anthropic = %handle.anthropic_base(),
        openai = %handle.openai_base(),
        "mock vendor ready; set ANTHROPIC_BASE_URL / OPENAI_BASE_URL to these"
    );
    terminated().await;
    tracing::info!("mock vendor stopping");
    ExitCode::SUCCESS
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
