//! Command line and environment: every setting has a flag and most an
//! environment variable, so the same binary runs from a shell, a systemd
//! unit or a container without a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::breaker;

/// Which call proves a key works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Probe {
    /// List models: free, proves the key authenticates, not that it can bill.
    Models,
    /// A one-token completion: costs a fraction of a cent, proves the key can bill.
    Completion,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable lines.
    Text,
}

/// byok-sidecar: validates the API keys stored by pg_byok against the vendor.
///
/// Claims validation jobs from the database (byok.claim_jobs), makes the
/// cheapest call that proves a key works, and writes the verdict back
/// (byok.finish_job). Any number of sidecars may share one database.
// No `Debug`: the database URL may carry a password.
#[derive(Clone, Parser)]
#[command(name = "byok-sidecar", version)]
pub struct Cli {
    /// Postgres connection string (libpq URL or key=value) of a role granted byok_worker.
    ///
    /// TLS follows its `sslmode`: `disable` never, `prefer` (the default) when the
    /// server offers it, `require` always. Whenever TLS is used, the server's
    /// certificate chain and host name are verified (stricter than libpq's
    /// `require`, which checks neither); `verify-ca` / `verify-full` are read as
    /// `require`. Trusted: the Mozilla roots plus --db-ca-file.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PEM file of CA certificates trusted for the database's TLS certificate,
    /// on top of the Mozilla roots: needed when the server is signed by a
    /// private CA (Supabase's prod-ca-2021.crt, RDS's global-bundle.pem, the CA
    /// of your own server.crt). Certificates only: a private key is refused.
    #[arg(long, env = "BYOK_DB_CA_FILE", value_name = "PEM")]
    pub db_ca_file: Option<PathBuf>,

    /// Base URL of the Anthropic API (point it at the mock vendor for tests and demos).
    #[arg(
        long,
        env = "ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com"
    )]
    pub anthropic_base_url: String,

    /// Base URL of the OpenAI API.
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com"
    )]
    pub openai_base_url: String,

    /// How Anthropic keys are checked: `models` (GET /v1/models, free) or `completion`
    /// (POST /v1/messages with max_tokens 1; the only check that proves the key can bill).
    #[arg(
        long,
        env = "BYOK_ANTHROPIC_PROBE",
        value_enum,
        default_value = "completion"
    )]
    pub anthropic_probe: Probe,

    /// How OpenAI keys are checked: `models` (GET /v1/models) or `completion`
    /// (POST /v1/chat/completions with max_tokens 1; also catches restricted keys).
    #[arg(
        long,
        env = "BYOK_OPENAI_PROBE",
        value_enum,
        default_value = "completion"
    )]
    pub openai_probe: Probe,

    /// Model for the Anthropic one-token check (models get retired: keep it current).
    #[arg(long, env = "BYOK_ANTHROPIC_MODEL", default_value = "claude-haiku-4-5")]
    pub anthropic_model: String,

    /// Model for the OpenAI one-token check (must accept `max_tokens`).
    #[arg(long, env = "BYOK_OPENAI_MODEL", default_value = "gpt-4o-mini")]
    pub openai_model: String,

    /// Ceiling on vendor calls in flight, all vendors together (also the
    /// most jobs claimed at once; as many answered jobs may wait for their
    /// verdicts to be written). Below it each vendor's own limit
    /// adapts to its latency and errors (see the README: the limiter), and
    /// its circuit breaker caps it further. `--concurrency` is the 0.1.0
    /// name (then a fixed number of calls, default 8).
    #[arg(long, alias = "concurrency", env = "BYOK_MAX_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_concurrency: u32,

    /// Lease on a claimed job, seconds; a sidecar that dies loses its jobs to
    /// others after this. Must exceed the request timeout by 5 s or more.
    #[arg(long, env = "BYOK_LEASE_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(5..=3600))]
    pub lease_seconds: u32,

    /// Seconds between polls of the queue when no NOTIFY arrives (jittered ±20%).
    #[arg(long, env = "BYOK_POLL_INTERVAL", default_value_t = 5.0)]
    pub poll_interval: f64,

    /// Seconds a vendor call may take (connect + answer) before it counts as a timeout.
    #[arg(long, env = "BYOK_REQUEST_TIMEOUT", default_value_t = 15.0)]
    pub request_timeout: f64,

    /// Seconds to let in-flight calls finish after SIGTERM/SIGINT before handing them back.
    #[arg(long, env = "BYOK_GRACE_PERIOD", default_value_t = 20.0)]
    pub grace_period: f64,

    /// Address of the /metrics, /healthz and /readyz server; `off` disables it.
    #[arg(long, env = "BYOK_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    pub metrics_addr: String,

    /// Log format: `json` or `text`. Every line is redacted of key-shaped text.
    #[arg(long, env = "BYOK_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing env-filter syntax, e.g. `info` or `byok_sidecar=debug`).
    #[arg(long, env = "BYOK_LOG", default_value = "info")]
    pub log_level: String,

    /// Name this sidecar claims jobs under (default: host name, pid and a random suffix).
    #[arg(long, env = "BYOK_WORKER_NAME")]
    pub worker_name: Option<String>,

    /// Circuit breaker: distinct workspaces with vendor-side failures, within the
    /// window, that open the breaker for that vendor.
    #[arg(long, env = "BYOK_BREAKER_WORKSPACES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_workspaces: u32,

    /// Circuit breaker: window, seconds, in which those failures are counted.
    #[arg(long, env = "BYOK_BREAKER_WINDOW", default_value_t = 60.0)]
    pub breaker_window: f64,

    /// Circuit breaker: seconds the breaker stays open (jobs deferred, no probes)
    /// before one half-open trial probe.
    #[arg(long, env = "BYOK_BREAKER_OPEN", default_value_t = 30.0)]
    pub breaker_open: f64,

    /// Seconds between refreshes of the queue-depth gauge (byok.queue_depth()); 0 disables.
    #[arg(long, env = "BYOK_QUEUE_DEPTH_INTERVAL", default_value_t = 15.0)]
    pub queue_depth_interval: f64,

    /// Seconds between calls of byok.enqueue_due_revalidations(), which queues
    /// a re-check of the active keys last checked longer ago than the
    /// database's byok.revalidate_interval (jittered ±20%); 0 disables (e.g.
    /// when a pg_cron job calls it instead).
    #[arg(long, env = "BYOK_REVALIDATE_EVERY", default_value_t = 300.0)]
    pub revalidate_every: f64,
}

/// Where and how one vendor is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Without a trailing `/`.
    pub base_url: String,
    pub probe: Probe,
    pub model: String,
}

impl Target {
    pub fn new(base_url: &str, probe: Probe, model: &str) -> Target {
        Target {
            base_url: base_url.trim_end_matches('/').to_owned(),
            probe,
            model: model.to_owned(),
        }
    }
}

/// Validated worker settings: every value typed and checked, nothing left
/// as raw command-line text (no `Debug`: the database URL may carry a
/// password).
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    /// Roots for the database's TLS certificate (Mozilla + --db-ca-file).
    pub db_tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// The name jobs are claimed under.
    pub worker: String,
    pub anthropic: Target,
    pub openai: Target,
    /// Ceiling on vendor calls in flight, all vendors together (1..=1000).
    pub max_concurrency: u32,
    /// Lease on a claimed job, whole seconds (what `claim_jobs` takes).
    pub lease_seconds: u32,
    pub poll_interval: Duration,
    pub request_timeout: Duration,
    pub grace_period: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub breaker: breaker::Settings,
    pub queue_depth_interval: Option<Duration>,
    /// How often due revalidations are queued; `None`: never (pg_cron does it).
    pub revalidate_every: Option<Duration>,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL (or --database-url) is required")]
    MissingDatabaseUrl,
    #[error("{0} must be a positive number of seconds below one day")]
    BadSeconds(&'static str),
    #[error("--lease-seconds ({lease}) must exceed --request-timeout ({timeout}) by at least 5 seconds, or finished jobs would be stale")]
    LeaseTooShort { lease: u32, timeout: f64 },
    #[error("--metrics-addr must be host:port (e.g. 127.0.0.1:9187) or `off`")]
    BadMetricsAddr,
    #[error("--{0} must be an http:// or https:// URL")]
    BadUrl(&'static str),
    #[error(transparent)]
    DbTls(#[from] crate::db_tls::TlsError),
}

fn seconds(name: &'static str, value: f64, allow_zero: bool) -> Result<Duration, ConfigError> {
    let ok = value.is_finite() && value < 86_400.0 && (value > 0.0 || (allow_zero && value == 0.0));
    ok.then(|| Duration::from_secs_f64(value))
        .ok_or(ConfigError::BadSeconds(name))
}

impl Config {
    /// Checks the command line and fills in defaults that need the environment.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let database_url = cli
            .database_url
            .filter(|u| !u.trim().is_empty())
            .ok_or(ConfigError::MissingDatabaseUrl)?;
        let request_timeout = seconds("--request-timeout", cli.request_timeout, false)?;
        if f64::from(cli.lease_seconds) < cli.request_timeout + 5.0 {
            return Err(ConfigError::LeaseTooShort {
                lease: cli.lease_seconds,
                timeout: cli.request_timeout,
            });
        }
        for (name, url) in [
            ("anthropic-base-url", &cli.anthropic_base_url),
            ("openai-base-url", &cli.openai_base_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::BadUrl(name));
            }
        }
        let metrics_addr = match cli.metrics_addr.trim() {
            "off" | "" => None,
            a => Some(a.parse().map_err(|_| ConfigError::BadMetricsAddr)?),
        };
        let queue_depth = seconds("--queue-depth-interval", cli.queue_depth_interval, true)?;
        let revalidate_every = seconds("--revalidate-every", cli.revalidate_every, true)?;
        let db_tls = crate::db_tls::connector(cli.db_ca_file.as_deref())?;
        Ok(Config {
            database_url,
            db_tls,
            worker: cli
                .worker_name
                .filter(|w| !w.trim().is_empty())
                .unwrap_or_else(default_worker_name),
            anthropic: Target::new(
                &cli.anthropic_base_url,
                cli.anthropic_probe,
                &cli.anthropic_model,
            ),
            openai: Target::new(&cli.openai_base_url, cli.openai_probe, &cli.openai_model),
            max_concurrency: cli.max_concurrency,
            lease_seconds: cli.lease_seconds,
            poll_interval: seconds("--poll-interval", cli.poll_interval, false)?,
            grace_period: seconds("--grace-period", cli.grace_period, true)?,
            breaker: breaker::Settings {
                workspaces: cli.breaker_workspaces as usize,
                window: seconds("--breaker-window", cli.breaker_window, false)?,
                open_for: seconds("--breaker-open", cli.breaker_open, false)?,
            },
            queue_depth_interval: (!queue_depth.is_zero()).then_some(queue_depth),
            revalidate_every: (!revalidate_every.is_zero()).then_some(revalidate_every),
            request_timeout,
            metrics_addr,
        })
    }

    /// Latest moment a job claimed at `claimed_at` can still be finished
    /// (two seconds inside its lease).
    pub fn finish_deadline(&self, claimed_at: tokio::time::Instant) -> tokio::time::Instant {
        claimed_at
            + Duration::from_secs(u64::from(self.lease_seconds))
                .saturating_sub(Duration::from_secs(2))
    }
}

/// `host-pid-xxxx`: unique per process, readable in `byok.jobs.leased_by`.
fn default_worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "byok-sidecar".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
