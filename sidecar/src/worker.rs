//! The worker: claim loop and shutdown sequence.
//!
//! Claims only as many jobs as can start at once: no more than the global
//! slots left (`--max-concurrency`, held by a job until its verdict is
//! written) nor than the vendors' adaptive limits leave (`limiter`, capped
//! by each vendor's breaker), so nothing sits leased in a local backlog.
//! A claim takes up to a whole ceiling's worth in one call when the queue
//! is deep. Wakes on `NOTIFY byok_jobs`, after a full batch, when slots
//! free up while the queue had more, or after a jittered poll interval
//! (NOTIFY is only a hint: it is lost while disconnected).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use byok_core::Vendor;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::State;
use crate::config::Config;
use crate::db;
use crate::limiter;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::report;
use crate::state::Shared;
use crate::task;

/// Runs the sidecar until `shutdown` resolves (the binary passes SIGTERM /
/// SIGINT), then shuts down gracefully: no new claims, in-flight jobs get
/// the grace period, what is left is handed back (`release_job`), and the
/// function returns once everything has stopped.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let metrics = Arc::new(Metrics::default());
    let server_stop = CancellationToken::new();
    if let Some(addr) = cfg.metrics_addr {
        let bound = crate::server::serve(addr, metrics.clone(), server_stop.clone())
            .await
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let prober = Prober::new(
        cfg.anthropic.clone(),
        cfg.openai.clone(),
        cfg.request_timeout,
    )
    .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let db_stop = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let db = db::supervise(
        cfg.database_url.clone(),
        cfg.db_tls.clone(),
        wake.clone(),
        metrics.clone(),
        db_stop.clone(),
    );
    let finish_db = db::supervise_extra(
        cfg.database_url.clone(),
        cfg.db_tls.clone(),
        db_stop.clone(),
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let (finish_tx, finish_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(cfg, db, prober, metrics, tx, finish_tx));
    let finisher = tokio::spawn(crate::finisher::run(
        finish_db,
        Arc::downgrade(&shared),
        finish_rx,
    ));
    for vendor in Vendor::ALL {
        shared.metrics.breaker_state(vendor, State::Closed.gauge());
        shared
            .metrics
            .concurrency_limit(vendor, i64::from(shared.concurrency_limit(vendor)));
        let t = shared.prober.target(vendor);
        tracing::info!(vendor = vendor.as_str(), base_url = %t.base_url, probe = ?t.probe, model = %t.model, "vendor probe");
    }
    tracing::info!(worker = %shared.cfg.worker, max_concurrency = shared.cfg.max_concurrency, initial_limit = shared.concurrency_limit(Vendor::OpenAi), "byok-sidecar started");
    let reporter = tokio::spawn(report::reporter(
        shared.db.clone(),
        shared.cfg.worker.clone(),
        shared.cfg.breaker.open_for,
        rx,
    ));
    let depth = tokio::spawn(report::queue_depth_loop(
        shared.db.clone(),
        shared.metrics.clone(),
        shared.cfg.queue_depth_interval,
        db_stop.clone(),
    ));
    let revalidate = tokio::spawn(report::revalidate_loop(
        shared.db.clone(),
        shared.cfg.revalidate_every,
        db_stop.clone(),
    ));

    let tracker = TaskTracker::new();
    let claims_stop = CancellationToken::new();
    let claimer = tokio::spawn(claim_loop(
        shared.clone(),
        wake,
        tracker.clone(),
        claims_stop.clone(),
    ));

    shutdown.await;
    let grace = shared.cfg.grace_period;
    tracing::info!(
        in_flight = tracker.len(),
        grace_seconds = grace.as_secs_f64(),
        "stopping: no new claims, finishing in-flight jobs"
    );
    claims_stop.cancel();
    let _ = claimer.await;
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            left = tracker.len(),
            "grace period over: handing the remaining jobs back"
        );
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    }
    // Dropping the last `Shared` closes the report queue: the reporter
    // drains what is queued (briefly) and ends.
    drop(shared);
    let _ = tokio::time::timeout(Duration::from_secs(5), finisher).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reporter).await;
    db_stop.cancel();
    server_stop.cancel();
    let _ = depth.await;
    let _ = revalidate.await;
    tracing::info!("byok-sidecar stopped");
    Ok(())
}

async fn claim_loop(
    sh: Arc<Shared>,
    wake: Arc<Notify>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(sh.cfg.max_concurrency as usize));
    let mut prepared = db::Prepared::default();
    let mut failures = 0u32;
    // Whether the last claim got all it asked for (the queue may hold more).
    let mut more = true;
    loop {
        // Registered before looking, so a slot freed meanwhile is not missed.
        let changed = sh.slots_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let free = slots.available_permits() as u32;
        let wanted = limiter::claim_size(free, sh.headroom(std::time::Instant::now()));
        if wanted == 0 || !more {
            let poll = sh
                .cfg
                .poll_interval
                .mul_f64(0.8 + 0.4 * rand::random::<f64>());
            tokio::select! {
                _ = wake.notified() => more = true,
                _ = &mut changed, if more => {}
                _ = tokio::time::sleep(poll) => more = true,
                _ = stop.cancelled() => return,
            }
            continue;
        }
        let mut permits = Vec::with_capacity(wanted as usize);
        while permits.len() < wanted as usize {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let client = tokio::select! {
            c = sh.db.client(Instant::now() + Duration::from_secs(3600)) => c,
            _ = stop.cancelled() => return,
        };
        let Some(client) = client else { continue };
        let wanted = permits.len();
        let claimed = match prepared.get(&client, db::CLAIM_SQL).await {
            Ok(st) => {
                db::claim(
                    &client,
                    &st,
                    &sh.cfg.worker,
                    wanted as u32,
                    sh.cfg.lease_seconds,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match claimed {
            Ok(jobs) => {
                failures = 0;
                let claimed_at = Instant::now();
                more = jobs.len() == wanted;
                if !jobs.is_empty() {
                    tracing::debug!(claimed = jobs.len(), "claimed jobs");
                }
                for job in jobs {
                    let permit = permits.pop().expect("never more jobs than permits");
                    task::dispatch(&sh, &tracker, job, permit, claimed_at);
                }
                drop(permits);
            }
            Err(e) => {
                drop(permits);
                // Prepared again next time (an ALTER EXTENSION UPDATE may
                // have replaced the function under the statement).
                prepared = db::Prepared::default();
                failures += 1;
                if db::is_missing_or_forbidden(&e) {
                    tracing::error!(error = %db::describe(&e), "cannot call byok.claim_jobs: is pg_byok installed and the role granted byok_worker?");
                } else {
                    tracing::warn!(error = %db::describe(&e), "claiming jobs failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(db::reconnect_delay(failures)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}
