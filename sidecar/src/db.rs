//! The database side: connections kept alive by supervisors that reconnect
//! with capped, jittered backoff (Postgres restarts, `pg_terminate_backend`,
//! network blips) and publish the current client to everyone who needs it.
//! The main connection LISTENs on `byok_jobs` and carries the claims and
//! the side traffic; a second one writes the verdicts in batches
//! (`finish_jobs`), so a claim's decryption and a batch's commit run on two
//! backends at once.
//!
//! Every call is a single autocommit statement: no transaction is ever open
//! while a vendor call is in flight.

use std::sync::Arc;
use std::time::Duration;

use byok_core::Vendor;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, Statement, ToStatement};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::job::{Job, Lease};
use crate::metrics::Metrics;

/// NOTIFY channel the extension signals new jobs on.
pub const CHANNEL: &str = "byok_jobs";

/// Hands out the live client, if any.
#[derive(Clone)]
pub struct Db {
    rx: watch::Receiver<Option<Arc<Client>>>,
}

impl Db {
    /// The live client, waiting for a reconnect until `deadline`.
    pub async fn client(&self, deadline: Instant) -> Option<Arc<Client>> {
        let mut rx = self.rx.clone();
        let wait = rx.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed()));
        let client = match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(c)) => c.clone(),
            _ => None,
        };
        client
    }
}

/// Starts the main connection's supervisor; it runs until `stop` fires.
/// `wake` is notified on every NOTIFY and after every reconnect (jobs may
/// have queued meanwhile). Its state is the `db_connected` gauge.
pub fn supervise(
    url: String,
    tls: MakeRustlsConnect,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Db {
    supervise_conn(url, tls, Some((wake, metrics)), stop)
}

/// Starts the supervisor of an extra connection (no LISTEN, no gauge): the
/// verdict writer's.
pub fn supervise_extra(url: String, tls: MakeRustlsConnect, stop: CancellationToken) -> Db {
    supervise_conn(url, tls, None, stop)
}

fn supervise_conn(
    url: String,
    tls: MakeRustlsConnect,
    main: Option<(Arc<Notify>, Arc<Metrics>)>,
    stop: CancellationToken,
) -> Db {
    let (tx, rx) = watch::channel(None);
    let wake = main.as_ref().map(|(w, _)| w.clone());
    let metrics = main.map(|(_, m)| m);
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        let mut connected_once = false;
        while !stop.is_cancelled() {
            match connect(&url, tls.clone(), wake.clone()).await {
                Ok((client, driver)) => {
                    if let Some(m) = &metrics {
                        if connected_once {
                            m.db_reconnect();
                        }
                        m.set_db_connected(true);
                    }
                    connected_once = true;
                    failures = 0;
                    match &wake {
                        Some(_) => tracing::info!("database connected; listening on {CHANNEL}"),
                        None => tracing::debug!("extra database connection up"),
                    }
                    tx.send_replace(Some(Arc::new(client)));
                    if let Some(w) = &wake {
                        w.notify_one();
                    }
                    tokio::select! {
                        _ = driver => tracing::warn!("database connection lost; reconnecting"),
                        _ = stop.cancelled() => {}
                    }
                    if let Some(m) = &metrics {
                        m.set_db_connected(false);
                    }
                    tx.send_replace(None);
                }
                Err(e) => {
                    failures += 1;
                    let hint = crate::db_tls::certificate_hint(&e);
                    tracing::warn!(error = %describe(&e), hint, attempt = failures, "cannot connect to the database; retrying");
                }
            }
            let delay = reconnect_delay(failures);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => {}
            }
        }
    });
    Db { rx }
}

/// 0.25 s doubling to 8 s, with ±50% jitter so many sidecars do not
/// reconnect in lock-step after a database restart.
pub fn reconnect_delay(failures: u32) -> Duration {
    let base = 0.25 * f64::from(1u32 << failures.min(5));
    Duration::from_secs_f64(base * (0.5 + rand::random::<f64>()))
}

async fn connect(
    url: &str,
    tls: MakeRustlsConnect,
    wake: Option<Arc<Notify>>,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let listen = wake.is_some();
    let mut config: tokio_postgres::Config = crate::db_tls::accept_verify_modes(url).parse()?;
    config.application_name("byok-sidecar");
    config.connect_timeout(Duration::from_secs(5));
    config.keepalives_idle(Duration::from_secs(30));
    let (client, mut connection) = config.connect(tls).await?;
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if let Some(w) = &wake {
                        w.notify_one();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "database connection error");
                    return;
                }
                None => return,
            }
        }
    });
    // A stuck statement must not hold a job past its lease.
    let setup = if listen {
        format!("SET statement_timeout = '30s'; LISTEN {CHANNEL}")
    } else {
        "SET statement_timeout = '30s'".to_owned()
    };
    client.batch_execute(&setup).await?;
    Ok((client, driver))
}

/// `byok.claim_jobs`' call (prepare it once per connection: see [`Prepared`]).
pub const CLAIM_SQL: &str =
    "SELECT job_id, key_id, workspace_id, vendor, api_key, attempt, lease_token \
                             FROM byok.claim_jobs($1, $2, $3)";

/// `byok.claim_jobs`. Unknown vendors (never expected) are skipped. `client`
/// may be a `Client` or a prepared [`Statement`] on it (see [`Prepared`]).
pub async fn claim<S: ToStatement + ?Sized>(
    client: &Client,
    statement: &S,
    worker: &str,
    max: u32,
    lease_seconds: u32,
) -> Result<Vec<Job>, tokio_postgres::Error> {
    let rows = client
        .query(
            statement,
            &[&worker, &(max as i32), &(lease_seconds as i32)],
        )
        .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        let key: Zeroizing<String> =
            Zeroizing::new(row.get::<_, Option<String>>(4).unwrap_or_default());
        let vendor_name: String = row.get(3);
        let Ok(vendor) = Vendor::parse(&vendor_name) else {
            tracing::error!(
                job_id = row.get::<_, i64>(0),
                "claimed a job of an unknown vendor; leaving it to its lease"
            );
            continue;
        };
        jobs.push(Job::new(
            row.get(0),
            row.get(1),
            row.get(2),
            vendor,
            key,
            row.get(5),
            row.get(6),
        ));
    }
    Ok(jobs)
}

/// What a job's verdict writes back.
#[derive(Debug, Clone)]
pub struct Finish {
    pub outcome: &'static str,
    pub detail: String,
    pub http_status: Option<u16>,
    pub retry_after_seconds: Option<u32>,
    /// The account the vendor named (recorded on a valid verdict).
    pub vendor_account: Option<String>,
}

/// `byok.finish_job`: the key's new status, or `stale`. The vendor account
/// is a 0.2.0 argument: against an 0.1.0 extension (42883, no such
/// function) the verdict is written without it.
pub async fn finish(
    client: &Client,
    lease: &Lease,
    f: &Finish,
) -> Result<String, tokio_postgres::Error> {
    let http_status = f.http_status.map(i32::from);
    let retry_after = f.retry_after_seconds.map(|s| s.min(86_400) as i32);
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &lease.job_id,
        &lease.lease_token,
        &f.outcome,
        &f.detail,
        &http_status,
        &retry_after,
    ];
    let row = match &f.vendor_account {
        Some(account) => {
            let mut with_account = args.to_vec();
            with_account.push(account);
            let r = client
                .query_one(
                    "SELECT byok.finish_job($1, $2, $3, $4, $5, $6, $7)",
                    &with_account,
                )
                .await;
            match r {
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) =>
                {
                    client
                        .query_one("SELECT byok.finish_job($1, $2, $3, $4, $5, $6)", &args)
                        .await?
                }
                r => r?,
            }
        }
        None => {
            client
                .query_one("SELECT byok.finish_job($1, $2, $3, $4, $5, $6)", &args)
                .await?
        }
    };
    Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
}

/// One verdict for the verdict writer (`finisher`). The answer is the
/// key's new status (or `stale`), or `None`: write it yourself.
pub struct FinishRequest {
    pub lease: Lease,
    pub finish: Finish,
    pub reply: tokio::sync::oneshot::Sender<Option<String>>,
}

/// `byok.finish_jobs` (0.2.0): many verdicts in one call and one commit.
pub const FINISH_BATCH_SQL: &str =
    "SELECT job_id, status FROM byok.finish_jobs($1, $2, $3, $4, $5, $6, $7)";

/// Writes `batch` with one `finish_jobs` call; returns each job's key
/// status (or `stale`) by job id.
pub async fn finish_batch<S: ToStatement + ?Sized>(
    client: &Client,
    statement: &S,
    batch: &[(Lease, &Finish)],
) -> Result<Vec<(i64, String)>, tokio_postgres::Error> {
    let ids: Vec<i64> = batch.iter().map(|(l, _)| l.job_id).collect();
    let tokens: Vec<Uuid> = batch.iter().map(|(l, _)| l.lease_token).collect();
    let outcomes: Vec<&str> = batch.iter().map(|(_, f)| f.outcome).collect();
    let details: Vec<&str> = batch.iter().map(|(_, f)| f.detail.as_str()).collect();
    let statuses: Vec<Option<i32>> = batch
        .iter()
        .map(|(_, f)| f.http_status.map(i32::from))
        .collect();
    let retry: Vec<Option<i32>> = batch
        .iter()
        .map(|(_, f)| f.retry_after_seconds.map(|s| s.min(86_400) as i32))
        .collect();
    let accounts: Vec<Option<&str>> = batch
        .iter()
        .map(|(_, f)| f.vendor_account.as_deref())
        .collect();
    let rows = client
        .query(
            statement,
            &[
                &ids, &tokens, &outcomes, &details, &statuses, &retry, &accounts,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect())
}

/// A statement prepared on one connection, prepared again when the
/// connection is replaced (a reconnect): saves the parse round trip on the
/// hot path.
#[derive(Default)]
pub struct Prepared {
    on: Option<(Arc<Client>, Statement)>,
}

impl Prepared {
    /// The statement for `sql` on `client`, preparing it if needed.
    pub async fn get(
        &mut self,
        client: &Arc<Client>,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some((c, st)) = &self.on {
            if Arc::ptr_eq(c, client) {
                return Ok(st.clone());
            }
        }
        let st = client.prepare(sql).await?;
        self.on = Some((client.clone(), st.clone()));
        Ok(st)
    }
}

/// `byok.enqueue_due_revalidations`: how many active keys were queued for
/// their scheduled re-check (at most `max_keys`).
pub async fn enqueue_due_revalidations(
    client: &Client,
    max_keys: i32,
) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT byok.enqueue_due_revalidations($1)", &[&max_keys])
        .await?;
    Ok(row.get(0))
}

/// `byok.release_job`: hand a claimed job back without spending its attempt.
pub async fn release(
    client: &Client,
    job_id: i64,
    token: Uuid,
    delay_seconds: u32,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT byok.release_job($1, $2, $3)",
            &[&job_id, &token, &(delay_seconds.min(3600) as i32)],
        )
        .await?;
    Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
}

/// `byok.defer_jobs`: push a vendor's ready jobs back without counting attempts.
pub async fn defer(
    client: &Client,
    vendor: Vendor,
    seconds: u32,
) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT byok.defer_jobs($1, $2)",
            &[&vendor.as_str(), &(seconds.clamp(1, 3600) as i32)],
        )
        .await?;
    Ok(row.get::<_, Option<i32>>(0).unwrap_or(0))
}

/// `byok.report_vendor_status`.
pub async fn report(
    client: &Client,
    worker: &str,
    vendor: Vendor,
    state: &str,
    detail: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT byok.report_vendor_status($1, $2, $3, $4)",
            &[&worker, &vendor.as_str(), &state, &detail],
        )
        .await?;
    Ok(())
}

/// `byok.queue_depth()`: (vendor, ready, leased, waiting).
pub async fn queue_depth(
    client: &Client,
) -> Result<Vec<(Vendor, i64, i64, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT vendor, ready, leased, waiting FROM byok.queue_depth()",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Vendor::parse(r.get::<_, &str>(0))
                .ok()
                .map(|v| (v, r.get(1), r.get(2), r.get(3)))
        })
        .collect())
}

/// A readable one-line description (tokio-postgres' `Display` hides the
/// server's message behind "db error", and the cause of a TLS or I/O
/// failure, e.g. which certificate check failed, behind its kind).
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Whether the error means the function is missing or not granted (an
/// older extension, or the role lacks byok_worker): retrying won't help.
pub fn is_missing_or_forbidden(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::UNDEFINED_FUNCTION || *c == SqlState::INSUFFICIENT_PRIVILEGE
    })
}
