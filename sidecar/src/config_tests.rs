use clap::Parser;

use super::*;

fn parse(args: &[&str]) -> Result<Config, String> {
    let mut argv = vec![
        "byok-sidecar",
        "--database-url",
        "postgres://w@127.0.0.1/db",
    ];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    Config::from_cli(cli).map_err(|e| e.to_string())
}

#[test]
fn defaults_are_sane() {
    let c = parse(&[]).unwrap();
    assert_eq!(
        c.anthropic,
        Target::new(
            "https://api.anthropic.com",
            Probe::Completion,
            "claude-haiku-4-5"
        )
    );
    assert_eq!(
        c.openai,
        Target::new("https://api.openai.com", Probe::Completion, "gpt-4o-mini")
    );
    assert_eq!(c.max_concurrency, 256);
    assert_eq!(c.lease_seconds, 60);
    assert_eq!(c.request_timeout, Duration::from_secs(15));
    assert_eq!(c.metrics_addr, Some("127.0.0.1:9187".parse().unwrap()));
    assert_eq!(c.breaker.workspaces, 3);
    assert_eq!(c.breaker.window, Duration::from_secs(60));
    assert_eq!(c.breaker.open_for, Duration::from_secs(30));
    assert_eq!(c.queue_depth_interval, Some(Duration::from_secs(15)));
    let cli = Cli::try_parse_from(["byok-sidecar"]).unwrap();
    assert_eq!(
        (cli.log_format, cli.log_level.as_str()),
        (LogFormat::Text, "info")
    );
    assert!(
        c.worker.contains(&std::process::id().to_string()),
        "{}",
        c.worker
    );
}

#[test]
fn flags_override_defaults() {
    let c = parse(&[
        "--anthropic-probe",
        "models",
        "--openai-probe",
        "models",
        "--anthropic-model",
        "claude-x",
        "--concurrency",
        "3",
        "--lease-seconds",
        "30",
        "--request-timeout",
        "2.5",
        "--poll-interval",
        "0.2",
        "--metrics-addr",
        "off",
        "--log-format",
        "json",
        "--worker-name",
        "w1",
        "--breaker-workspaces",
        "5",
        "--anthropic-base-url",
        "http://127.0.0.1:1",
    ])
    .unwrap();
    assert_eq!(
        c.anthropic,
        Target::new("http://127.0.0.1:1", Probe::Models, "claude-x")
    );
    assert_eq!(c.openai.probe, Probe::Models);
    assert_eq!(c.max_concurrency, 3);
    assert_eq!(c.lease_seconds, 30);
    assert_eq!(c.request_timeout, Duration::from_millis(2500));
    assert_eq!(c.poll_interval, Duration::from_millis(200));
    assert_eq!(c.metrics_addr, None);
    assert_eq!(c.worker, "w1");
    assert_eq!(c.breaker.workspaces, 5);
}

#[test]
fn refuses_bad_values() {
    assert!(parse(&["--lease-seconds", "10", "--request-timeout", "8"])
        .err()
        .unwrap()
        .contains("lease"));
    assert!(
        parse(&["--concurrency", "0"]).is_err() && parse(&["--max-concurrency", "1001"]).is_err()
    );
    assert!(parse(&["--anthropic-probe", "chat"]).is_err());
    assert!(parse(&["--poll-interval", "-1"]).is_err());
    assert!(parse(&["--request-timeout", "nan"]).is_err());
    assert!(parse(&["--metrics-addr", "nowhere"])
        .err()
        .unwrap()
        .contains("metrics"));
    assert!(parse(&["--openai-base-url", "ftp://x"]).is_err());
    assert!(parse(&["--log-format", "xml"]).is_err());
}

#[test]
fn database_url_is_required_for_the_worker_only() {
    let cli = Cli::try_parse_from(["byok-sidecar"]).unwrap();
    if std::env::var_os("DATABASE_URL").is_none() {
        assert!(matches!(
            Config::from_cli(cli),
            Err(ConfigError::MissingDatabaseUrl)
        ));
    }
    // The mock vendor is its own crate: production carries no subcommand.
    assert!(Cli::try_parse_from(["byok-sidecar", "mock-vendor"]).is_err());
}

#[test]
fn a_bad_db_ca_file_stops_the_start() {
    let e = parse(&["--db-ca-file", "/nonexistent/ca.pem"])
        .err()
        .unwrap();
    assert!(
        e.contains("cannot read --db-ca-file /nonexistent/ca.pem"),
        "{e}"
    );
}

#[test]
fn help_documents_every_setting() {
    let help = <Cli as clap::CommandFactory>::command()
        .render_long_help()
        .to_string();
    for flag in [
        "--database-url",
        "DATABASE_URL",
        "ANTHROPIC_BASE_URL",
        "OPENAI_BASE_URL",
        "--anthropic-probe",
        "--openai-probe",
        "--anthropic-model",
        "--openai-model",
        "--max-concurrency",
        "--lease-seconds",
        "--poll-interval",
        "--request-timeout",
        "--grace-period",
        "--metrics-addr",
        "--log-format",
        "--worker-name",
        "--breaker-workspaces",
        "--breaker-window",
        "--breaker-open",
        "--db-ca-file",
        "BYOK_DB_CA_FILE",
        "certificate chain and host name are verified",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
