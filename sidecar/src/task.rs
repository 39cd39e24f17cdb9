//! One claimed job, from its vendor slot and the breaker's admission to
//! the write-back.

use std::sync::Arc;
use std::time::Duration;

use byok_core::Vendor;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::breaker::{Admit, State, Transition};
use crate::db::{self, Finish, FinishRequest};
use crate::job::{Job, Lease};
use crate::report::Report;
use crate::state::{Shared, Ticket};

/// Starts work on a claimed job: wait for a slot under its vendor's
/// concurrency limit, then probe it, or hand it straight back when the
/// vendor's breaker is open. `permit` is the job's global slot, held until
/// the vendor has answered (then a verdict slot until the verdict is written).
pub fn dispatch(
    sh: &Arc<Shared>,
    tracker: &TaskTracker,
    job: Job,
    permit: OwnedSemaphorePermit,
    claimed_at: Instant,
) {
    let mut ticket = sh.hold(job.vendor);
    let sh = sh.clone();
    tracker.spawn(async move {
        let started = tokio::select! {
            _ = ticket.start() => true,
            _ = sh.hard_stop.cancelled() => false,
        };
        if started {
            admit(&sh, job, ticket, permit, claimed_at).await;
        } else {
            let lease = job.lease();
            drop(job);
            drop(ticket);
            hand_back(&sh, lease, 0, "released").await;
            drop(permit);
        }
        sh.slots_changed.notify_waiters();
    });
}

/// The breaker's say on a job that has its vendor slot.
async fn admit(
    sh: &Arc<Shared>,
    job: Job,
    ticket: Ticket,
    permit: OwnedSemaphorePermit,
    claimed_at: Instant,
) {
    let vendor = job.vendor;
    let (admit, transition) = sh.breaker(vendor, |b| b.admit(std::time::Instant::now()));
    if let Some(t) = transition {
        on_transition(sh, vendor, t, None);
    }
    match admit {
        Admit::Defer(wait) => {
            let lease = job.lease();
            drop(job); // wipes the key: it will not be used
            drop(ticket);
            hand_back(sh, lease, whole_seconds(wait), "deferred").await;
            drop(permit);
        }
        Admit::Probe | Admit::Trial => {
            let trial = admit == Admit::Trial;
            let deadline = sh.cfg.finish_deadline(claimed_at);
            process(sh, job, ticket, permit, trial, deadline).await;
        }
    }
}

/// `permit` (the job's global slot) is held until the vendor has answered,
/// then traded for a verdict slot (see `Shared::verdict_slots`).
async fn process(
    sh: &Arc<Shared>,
    mut job: Job,
    ticket: Ticket,
    permit: OwnedSemaphorePermit,
    trial: bool,
    deadline: Instant,
) {
    let lease = job.lease();
    let attempt = job.attempt;
    let key_id = job.key_id;
    let key = job.take_key().filter(|k| !k.is_empty());
    drop(job);
    let Some(key) = key else {
        drop(ticket);
        // Never probe with nothing: the vendor's 401 would erase a real key.
        tracing::error!(job_id = lease.job_id, %key_id, "claim_jobs returned no key material; not probing");
        let detail = "the database returned no key material to validate (check the extension's master key); \
                      the key was not judged";
        let f = Finish {
            outcome: "retry",
            detail: detail.to_owned(),
            http_status: None,
            retry_after_seconds: None,
            vendor_account: None,
        };
        finish(sh, &lease, &f, deadline).await;
        return;
    };
    sh.metrics.in_flight_add(1);
    let result = tokio::select! {
        r = sh.prober.probe(lease.vendor, key) => Some(r),
        _ = sh.hard_stop.cancelled() => None,
    };
    sh.metrics.in_flight_add(-1);
    let Some(res) = result else {
        drop(ticket);
        hand_back(sh, lease, 0, "released").await;
        return;
    };
    let vendor = lease.vendor;
    sh.metrics.latency(vendor, res.took);
    let v = &res.verdict;
    ticket.end(res.took, v.vendor_fault);
    let now = std::time::Instant::now();
    let (transition, open_left) = sh.breaker(vendor, |b| {
        (
            b.record(now, lease.workspace_id, v.vendor_fault, trial),
            b.open_remaining(now),
        )
    });
    if let Some(t) = transition {
        on_transition(sh, vendor, t, Some(&v.detail));
    }
    tracing::info!(
        job_id = lease.job_id, %key_id, workspace_id = %lease.workspace_id, vendor = vendor.as_str(), attempt,
        outcome = v.outcome.as_str(), warning = v.warning, http_status = res.http_status,
        took_ms = res.took.as_millis() as u64, trial, detail = %v.detail, "vendor answered"
    );
    if v.vendor_fault && !open_left.is_zero() {
        // The breaker is open: this failure is the vendor's, not the key's.
        hand_back(sh, lease, whole_seconds(open_left), "deferred").await;
        return;
    }
    let f = Finish {
        outcome: v.outcome.as_str(),
        detail: v.detail.clone(),
        http_status: res.http_status,
        retry_after_seconds: v.retry_after_seconds,
        vendor_account: res.vendor_account.clone(),
    };
    let verdict_slot = sh
        .verdict_slots
        .clone()
        .acquire_owned()
        .await
        .expect("the verdict slots are never closed");
    drop(permit);
    sh.slots_changed.notify_waiters();
    finish(sh, &lease, &f, deadline).await;
    drop(verdict_slot);
    if !v.vendor_fault {
        heartbeat(sh, vendor);
    }
}

/// Writes the verdict: in the verdict writer's next batch
/// (`finish_jobs`), or else alone with `finish_job`, retried across
/// reconnects until the lease is about to run out; after that the job is
/// left to be reclaimed (never lost).
async fn finish(sh: &Shared, lease: &Lease, f: &Finish, deadline: Instant) {
    let (reply, written) = oneshot::channel();
    let req = FinishRequest {
        lease: *lease,
        finish: f.clone(),
        reply,
    };
    if sh.queue_finish(req).is_some() {
        if let Ok(Some(status)) = written.await {
            recorded(sh, lease, f, &status);
            return;
        }
    }
    let mut tries = 0u32;
    loop {
        let deadline = if sh.hard_stop.is_cancelled() {
            deadline.min(Instant::now() + Duration::from_secs(5))
        } else {
            deadline
        };
        let Some(client) = sh.db.client(deadline).await else {
            sh.metrics.finish_failure();
            tracing::warn!(job_id = lease.job_id, "could not record the verdict before the lease ran out; the job will be claimed again");
            return;
        };
        match db::finish(&client, lease, f).await {
            Ok(status) => {
                recorded(sh, lease, f, &status);
                return;
            }
            Err(e) => {
                sh.metrics.finish_failure();
                tries += 1;
                if e.as_db_error().is_some() && !e.is_closed() {
                    tracing::error!(job_id = lease.job_id, error = %db::describe(&e), "byok.finish_job refused the verdict; the job will be claimed again");
                    return;
                }
                tracing::warn!(job_id = lease.job_id, error = %db::describe(&e), "recording the verdict failed; retrying");
                tokio::time::sleep(
                    db::reconnect_delay(tries)
                        .min(deadline.saturating_duration_since(Instant::now())),
                )
                .await;
                if Instant::now() >= deadline {
                    tracing::warn!(job_id = lease.job_id, "lease ran out before the verdict was recorded; the job will be claimed again");
                    return;
                }
            }
        }
    }
}

fn recorded(sh: &Shared, lease: &Lease, f: &Finish, status: &str) {
    let label = match (status, f.outcome) {
        ("stale", _) => "stale",
        ("unverified", _) => "unverified",
        (_, o) => o,
    };
    sh.metrics.job(lease.vendor, label);
    tracing::info!(job_id = lease.job_id, vendor = lease.vendor.as_str(), outcome = f.outcome, key_status = %status, "verdict recorded");
}

/// `release_job`: back to the queue without spending the attempt.
async fn hand_back(sh: &Shared, lease: Lease, delay_seconds: u32, label: &'static str) {
    let Some(client) = sh.db.client(Instant::now() + Duration::from_secs(10)).await else {
        tracing::warn!(
            job_id = lease.job_id,
            "database unavailable: job left to its lease"
        );
        return;
    };
    match db::release(&client, lease.job_id, lease.lease_token, delay_seconds).await {
        Ok(done) => {
            sh.metrics
                .job(lease.vendor, if done { label } else { "stale" });
            tracing::info!(
                job_id = lease.job_id,
                vendor = lease.vendor.as_str(),
                delay_seconds,
                released = done,
                reason = label,
                "job handed back"
            );
        }
        Err(e) => {
            tracing::warn!(job_id = lease.job_id, error = %db::describe(&e), "byok.release_job failed; job left to its lease")
        }
    }
}

fn on_transition(sh: &Shared, vendor: Vendor, t: Transition, last_detail: Option<&str>) {
    let name = vendor.display_name();
    let open = sh.cfg.breaker.open_for.as_secs_f64();
    let (state, detail) = match t {
        Transition::Opened { workspaces } => (
            State::Open,
            format!(
                "{name} looks down: vendor-side failures from {workspaces} workspace(s) within {:.0}s{}; validations \
                 paused for {open:.0}s without spending attempts, then one trial call",
                sh.cfg.breaker.window.as_secs_f64(),
                last_detail.map(|d| format!(" (last: {d})")).unwrap_or_default()
            ),
        ),
        Transition::Reopened => (
            State::Open,
            format!(
                "{name} is still down: the trial validation call failed{}; validations paused for another {open:.0}s",
                last_detail.map(|d| format!(" ({d})")).unwrap_or_default()
            ),
        ),
        Transition::HalfOpened => (State::HalfOpen, format!("{name}: open interval over; one trial validation call in flight")),
        Transition::Closed => (State::Closed, format!("{name} is answering again; validations resumed")),
    };
    if state == State::Closed {
        tracing::info!(
            vendor = vendor.as_str(),
            state = state.as_str(),
            "circuit breaker: {detail}"
        );
    } else {
        tracing::warn!(
            vendor = vendor.as_str(),
            state = state.as_str(),
            "circuit breaker: {detail}"
        );
    }
    sh.report(Report {
        vendor,
        state,
        detail,
    });
}

/// While closed, reports `closed` about once a minute after a real answer,
/// so a stale `open` left by a sidecar that died gets overwritten.
fn heartbeat(sh: &Shared, vendor: Vendor) {
    if sh.breaker_state(vendor) == State::Closed && sh.heartbeat_due(vendor) {
        sh.report(Report {
            vendor,
            state: State::Closed,
            detail: format!("{} is answering", vendor.display_name()),
        });
    }
}

fn whole_seconds(d: Duration) -> u32 {
    (d.as_secs_f64().ceil() as u32).clamp(1, 3600)
}
