//! Side traffic to SQL: circuit-breaker reports (`byok.report_vendor_status`,
//! `byok.defer_jobs`), the queue-depth gauge (`byok.queue_depth()`) and the
//! timer that queues scheduled revalidations (`byok.enqueue_due_revalidations`).

use std::sync::Arc;
use std::time::Duration;

use byok_core::Vendor;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::State;
use crate::db::{self, Db};
use crate::metrics::Metrics;

/// One breaker state change (or heartbeat) to write to SQL.
#[derive(Debug, Clone)]
pub struct Report {
    pub vendor: Vendor,
    pub state: State,
    pub detail: String,
}

/// Writes reports in order. On `open` it first defers the vendor's ready
/// jobs for the open interval, so no sidecar spends attempts on them.
pub async fn reporter(
    db: Db,
    worker: String,
    open_for: Duration,
    mut rx: mpsc::UnboundedReceiver<Report>,
) {
    while let Some(r) = rx.recv().await {
        let Some(client) = db.client(Instant::now() + Duration::from_secs(15)).await else {
            tracing::warn!(
                vendor = r.vendor.as_str(),
                state = r.state.as_str(),
                "database unavailable: breaker state not reported"
            );
            continue;
        };
        if r.state == State::Open {
            let seconds = open_for.as_secs_f64().ceil() as u32;
            match db::defer(&client, r.vendor, seconds).await {
                Ok(n) => tracing::info!(
                    vendor = r.vendor.as_str(),
                    deferred = n,
                    seconds,
                    "deferred the vendor's ready jobs"
                ),
                Err(e) => {
                    tracing::warn!(vendor = r.vendor.as_str(), error = %db::describe(&e), "byok.defer_jobs failed")
                }
            }
        }
        if let Err(e) = db::report(&client, &worker, r.vendor, r.state.as_str(), &r.detail).await {
            tracing::warn!(vendor = r.vendor.as_str(), error = %db::describe(&e), "byok.report_vendor_status failed");
        }
    }
}

/// Keys queued per call of `enqueue_due_revalidations`; a full batch is
/// followed at once by the next, so a backlog drains within one tick.
pub const REVALIDATE_BATCH: i32 = 100;

/// Queues the scheduled re-checks of active keys every `interval` (jittered,
/// so sidecars started together spread out; `SKIP LOCKED` in the function
/// keeps two of them from queuing one key twice). Stops for good when the
/// function is missing or not granted: an 0.1.0 extension has none.
pub async fn revalidate_loop(db: Db, interval: Option<Duration>, stop: CancellationToken) {
    let Some(interval) = interval else { return };
    loop {
        if let Some(client) = db.client(Instant::now() + Duration::from_secs(1)).await {
            let mut queued = 0;
            loop {
                match db::enqueue_due_revalidations(&client, REVALIDATE_BATCH).await {
                    Ok(n) => {
                        queued += n;
                        if n < REVALIDATE_BATCH || stop.is_cancelled() {
                            break;
                        }
                    }
                    Err(e) if db::is_missing_or_forbidden(&e) => {
                        tracing::warn!(error = %db::describe(&e), "byok.enqueue_due_revalidations() unavailable; scheduled revalidation disabled");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %db::describe(&e), "queuing due revalidations failed");
                        break;
                    }
                }
            }
            if queued > 0 {
                tracing::info!(queued, "queued scheduled key revalidations");
            }
        }
        let pause = interval.mul_f64(0.8 + 0.4 * rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Refreshes the queue-depth gauge every `interval`; stops for good when
/// the function is missing or not granted (then the gauge stays absent).
pub async fn queue_depth_loop(
    db: Db,
    metrics: Arc<Metrics>,
    interval: Option<Duration>,
    stop: CancellationToken,
) {
    let Some(interval) = interval else { return };
    loop {
        if let Some(client) = db.client(Instant::now() + Duration::from_millis(100)).await {
            match db::queue_depth(&client).await {
                Ok(rows) => {
                    for vendor in Vendor::ALL {
                        let (ready, leased, waiting) = rows
                            .iter()
                            .find(|r| r.0 == vendor)
                            .map_or((0, 0, 0), |r| (r.1, r.2, r.3));
                        metrics.queue_depth(vendor, "ready", ready);
                        metrics.queue_depth(vendor, "leased", leased);
                        metrics.queue_depth(vendor, "waiting", waiting);
                    }
                }
                Err(e) if db::is_missing_or_forbidden(&e) => {
                    tracing::warn!(error = %db::describe(&e), "byok.queue_depth() unavailable; queue-depth gauge disabled");
                    return;
                }
                Err(e) => tracing::debug!(error = %db::describe(&e), "queue depth refresh failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}
