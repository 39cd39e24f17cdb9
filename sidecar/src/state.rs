//! What the claim loop and the job tasks share.
//!
//! Its own module so that the loop (`worker`) and the per-job code (`task`)
//! both depend on it and never on each other: the loop hands a job to
//! `task::dispatch`, and the job's whole path stays in `task`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use byok_core::Vendor;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, State};
use crate::config::Config;
use crate::db::{Db, FinishRequest};
use crate::limiter::{self, Limiter, Signal};
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
    /// Each vendor's concurrency limiter and the jobs it holds.
    gates: Mutex<HashMap<Vendor, Gate>>,
    /// Notified whenever a job lets go of a vendor slot or of its global
    /// slot (the claim loop and the jobs waiting for a vendor slot re-check).
    pub slots_changed: Notify,
    finishes: mpsc::UnboundedSender<FinishRequest>,
    /// Jobs whose vendor call has ended and whose verdict is not yet
    /// written (`--max-concurrency` of them): a job takes one of these
    /// before it gives its call slot back, so the next claim overlaps the
    /// writing of the last batch while the jobs held stay bounded (twice
    /// the ceiling at most).
    pub verdict_slots: Arc<tokio::sync::Semaphore>,
    /// Set once `finish_jobs` turned out missing (an older extension):
    /// verdicts are then written one by one.
    no_batch_finish: AtomicBool,
}

/// One vendor's limiter, and its claimed jobs: `held` from dispatch to the
/// end of the vendor call (waiting for a slot or calling), `running` while
/// calling.
struct Gate {
    limiter: Limiter,
    held: u32,
    running: u32,
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
        finishes: mpsc::UnboundedSender<FinishRequest>,
    ) -> Shared {
        let verdict_slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrency as usize));
        Shared {
            cfg,
            db,
            prober,
            metrics,
            hard_stop: CancellationToken::new(),
            breakers: Mutex::default(),
            heartbeats: Mutex::default(),
            reports,
            gates: Mutex::default(),
            slots_changed: Notify::new(),
            verdict_slots,
            finishes,
            no_batch_finish: AtomicBool::new(false),
        }
    }

    fn gate<R>(&self, vendor: Vendor, f: impl FnOnce(&mut Gate) -> R) -> R {
        let mut map = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(vendor).or_insert_with(|| Gate {
            limiter: Limiter::new(self.cfg.max_concurrency),
            held: 0,
            running: 0,
        }))
    }

    /// How many more jobs the vendors could start now, all together: per
    /// vendor its limit capped by its breaker's allowance, minus the jobs
    /// it already holds.
    pub fn headroom(&self, now: std::time::Instant) -> u32 {
        Vendor::ALL
            .iter()
            .map(|&v| {
                let allowance = self.breaker(v, |b| b.allowance(now));
                self.gate(v, |g| {
                    limiter::allowed(g.limiter.limit(), allowance).saturating_sub(g.held)
                })
            })
            .sum()
    }

    /// The vendor's current concurrency limit (for metrics and logs).
    pub fn concurrency_limit(&self, vendor: Vendor) -> u32 {
        self.gate(vendor, |g| g.limiter.limit())
    }

    /// Counts a claimed job against its vendor until the ticket is dropped.
    pub fn hold(self: &Arc<Self>, vendor: Vendor) -> Ticket {
        self.gate(vendor, |g| g.held += 1);
        Ticket {
            sh: self.clone(),
            vendor,
            running: None,
        }
    }

    /// Queues a verdict for the batch writer; `None` when verdicts must be
    /// written one by one (no `finish_jobs`, or the writer is gone).
    pub fn queue_finish(&self, req: FinishRequest) -> Option<()> {
        if self.no_batch_finish.load(Ordering::Relaxed) {
            return None;
        }
        self.finishes.send(req).ok()
    }

    /// `finish_jobs` is missing: write verdicts one by one from now on.
    pub fn disable_batch_finish(&self) {
        self.no_batch_finish.store(true, Ordering::Relaxed);
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

/// A claimed job's place with its vendor: held from dispatch; then a
/// running slot under the vendor's limit ([`Ticket::start`]); the call's
/// end is fed to the limiter ([`Ticket::end`]). Dropping it lets go of both.
pub struct Ticket {
    sh: Arc<Shared>,
    vendor: Vendor,
    /// Calls of this vendor in flight when this one started, itself included.
    running: Option<u32>,
}

impl Ticket {
    /// Waits until the vendor has a free slot under its limit, then takes it.
    pub async fn start(&mut self) {
        if self.running.is_some() {
            return;
        }
        loop {
            let changed = self.sh.slots_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let got = self.sh.gate(self.vendor, |g| {
                (g.running < g.limiter.limit()).then(|| {
                    g.running += 1;
                    g.running
                })
            });
            if let Some(n) = got {
                self.running = Some(n);
                return;
            }
            changed.await;
        }
    }

    /// The vendor answered (or failed) after `rtt`: teaches the limiter.
    pub fn end(mut self, rtt: Duration, vendor_fault: bool) {
        if let Some(in_flight) = self.running.take() {
            let signal = if vendor_fault {
                Signal::VendorFault
            } else {
                Signal::Answered
            };
            let now = std::time::Instant::now();
            let limit = self.sh.gate(self.vendor, |g| {
                g.limiter.record(now, rtt, in_flight, signal);
                g.running -= 1;
                g.limiter.limit()
            });
            self.sh
                .metrics
                .concurrency_limit(self.vendor, i64::from(limit));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let running = self.running.is_some();
        self.sh.gate(self.vendor, |g| {
            g.held -= 1;
            if running {
                g.running -= 1;
            }
        });
        self.sh.slots_changed.notify_waiters();
    }
}
