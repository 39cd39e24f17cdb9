//! The worker: claim loop, shutdown sequence, shared state.
//!
//! Claims only as many jobs as there are free concurrency slots, so every
//! claimed job starts at once and nothing sits leased in a local backlog.
//! Wakes on `NOTIFY byok_jobs`, after a full batch, or after a jittered
//! poll interval (NOTIFY is only a hint: it is lost while disconnected).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use byok_core::Vendor;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::{Breaker, Settings, State};
use crate::config::Config;
use crate::db::{self, Db};
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::report::{self, Report};
use crate::task;

/// Everything the claim loop and the job tasks share.
pub struct Shared {
    pub cfg: Config,
    pub db: Db,
    pub prober: Prober,
    pub metrics: Arc<Metrics>,
    /// Fired when the grace period is over: in-flight calls are abandoned
    /// and their jobs handed back.
    pub hard_stop: CancellationToken,
    breakers: Mutex<HashMap<Vendor, Breaker>>,
    heartbeats: Mutex<HashMap<Vendor, Instant>>,
    reports: mpsc::UnboundedSender<Report>,
}

impl Shared {
    /// Runs `f` on `vendor`'s breaker (short, synchronous critical section).
    pub fn breaker<R>(&self, vendor: Vendor, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let settings = Settings {
            workspaces: self.cfg.args.breaker_workspaces as usize,
            window: self.cfg.breaker_window,
            open_for: self.cfg.breaker_open,
        };
        f(map.entry(vendor).or_insert_with(|| Breaker::new(settings)))
    }

    pub fn breaker_state(&self, vendor: Vendor) -> State {
        self.breaker(vendor, |b| b.state())
    }

    /// Queues a report to SQL (processed in order by the reporter task).
    pub fn report(&self, r: Report) {
        self.metrics.breaker_state(r.vendor, r.state.gauge());
        let _ = self.reports.send(r);
    }

    /// Whether a `closed` heartbeat for `vendor` is due (once a minute).
    pub fn heartbeat_due(&self, vendor: Vendor) -> bool {
        let mut map = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match map.get(&vendor) {
            Some(last) if now.duration_since(*last) < Duration::from_secs(60) => false,
            _ => {
                map.insert(vendor, now);
                true
            }
        }
    }

    /// Latest moment a job claimed at `claimed_at` can still be finished.
    pub fn finish_deadline(&self, claimed_at: Instant) -> Instant {
        claimed_at
            + Duration::from_secs(u64::from(self.cfg.args.lease_seconds))
                .saturating_sub(Duration::from_secs(2))
    }
}

/// Runs the sidecar until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn run(cfg: Config) -> Result<(), String> {
    let metrics = Arc::new(Metrics::default());
    let server_stop = CancellationToken::new();
    if let Some(addr) = cfg.metrics_addr {
        let bound = crate::server::serve(addr, metrics.clone(), server_stop.clone())
            .await
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let db_stop = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let db = db::supervise(
        cfg.database_url.clone(),
        cfg.db_tls.clone(),
        wake.clone(),
        metrics.clone(),
        db_stop.clone(),
    );
    let prober = Prober::new(&cfg.args, cfg.request_timeout)
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        cfg,
        db,
        prober,
        metrics,
        hard_stop: CancellationToken::new(),
        breakers: Mutex::default(),
        heartbeats: Mutex::default(),
        reports: tx,
    });
    for vendor in Vendor::ALL {
        shared.metrics.breaker_state(vendor, State::Closed.gauge());
        let t = shared.prober.target(vendor);
        tracing::info!(vendor = vendor.as_str(), base_url = %t.base_url, probe = ?t.probe, model = %t.model, "vendor probe");
    }
    tracing::info!(worker = %shared.cfg.worker, concurrency = shared.cfg.args.concurrency, "byok-sidecar started");
    let reporter = tokio::spawn(report::reporter(
        shared.db.clone(),
        shared.cfg.worker.clone(),
        shared.cfg.breaker_open,
        rx,
    ));
    let depth = tokio::spawn(report::queue_depth_loop(
        shared.db.clone(),
        shared.metrics.clone(),
        shared.cfg.queue_depth_interval,
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

    crate::signals::terminated().await;
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
    let _ = tokio::time::timeout(Duration::from_secs(5), reporter).await;
    db_stop.cancel();
    server_stop.cancel();
    let _ = depth.await;
    tracing::info!("byok-sidecar stopped");
    Ok(())
}

async fn claim_loop(
    sh: Arc<Shared>,
    wake: Arc<Notify>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(sh.cfg.args.concurrency as usize));
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = stop.cancelled() => return,
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let client = tokio::select! {
            c = sh.db.client(Instant::now() + Duration::from_secs(3600)) => c,
            _ = stop.cancelled() => return,
        };
        let Some(client) = client else { continue };
        let wanted = permits.len();
        match db::claim(
            &client,
            &sh.cfg.worker,
            wanted as u32,
            sh.cfg.args.lease_seconds,
        )
        .await
        {
            Ok(jobs) => {
                failures = 0;
                let claimed_at = Instant::now();
                let full = jobs.len() == wanted;
                if !jobs.is_empty() {
                    tracing::debug!(claimed = jobs.len(), "claimed jobs");
                }
                for job in jobs {
                    let permit = permits.pop().expect("never more jobs than permits");
                    task::dispatch(&sh, &tracker, job, permit, claimed_at);
                }
                drop(permits);
                if full {
                    continue;
                }
            }
            Err(e) => {
                drop(permits);
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
                continue;
            }
        }
        let poll = sh
            .cfg
            .poll_interval
            .mul_f64(0.8 + 0.4 * rand::random::<f64>());
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = stop.cancelled() => return,
        }
    }
}
