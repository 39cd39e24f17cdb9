//! What the claim loop and the job tasks share.
//!
//! Its own module so that the loop (`worker`) and the per-job code (`task`)
//! both depend on it and never on each other: the loop hands a job to
//! `task::dispatch`, and the job's whole path stays in `task`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use byok_core::Vendor;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, State};
use crate::config::Config;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::report::Report;

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
    /// `reports` feeds the reporter task (`report::reporter`); it ends
    /// once the last `Shared` is dropped.
    pub fn new(
        cfg: Config,
        db: Db,
        prober: Prober,
        metrics: Arc<Metrics>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Shared {
        Shared {
            cfg,
            db,
            prober,
            metrics,
            hard_stop: CancellationToken::new(),
            breakers: Mutex::default(),
            heartbeats: Mutex::default(),
            reports,
        }
    }

    /// Runs `f` on `vendor`'s breaker (short, synchronous critical section).
    pub fn breaker<R>(&self, vendor: Vendor, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        f(map
            .entry(vendor)
            .or_insert_with(|| Breaker::new(self.cfg.breaker)))
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
}
