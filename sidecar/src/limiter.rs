//! Adaptive concurrency: how many calls one vendor may have in flight.
//!
//! The throughput a vendor can give is (calls in flight) / (its latency)
//! (Little's law): a fixed concurrency of 8 gets 53 validations/s from a
//! vendor answering in 150 ms, and needs far more calls in flight than a
//! vendor answering in 5 ms. So each vendor's limit is found, not set: an
//! AIMD controller with a latency check, like TCP's congestion window.
//! - Slow start: from [`INITIAL`], every answered call that found the limit
//!   in use raises it by one (the limit doubles each round trip) until the
//!   first sign of congestion or the ceiling.
//! - Then additive increase: about one more per round trip (1/limit per
//!   answer), again only while the limit is in use (an idle limit proves
//!   nothing about the vendor).
//! - Multiplicative decrease: vendor trouble (429, 5xx, a timeout, a refused
//!   connection: the verdict's `vendor_fault`) halves the limit; a round
//!   trip well above the vendor's baseline (more than [`LATENCY_FACTOR`]×
//!   plus [`LATENCY_SLACK`]) means calls are queueing at the vendor and cuts
//!   it by [`LATENCY_BACKOFF`]. At most one cut per baseline round trip, so
//!   the answers of one overloaded burst count once.
//!
//! The limit never exceeds the ceiling (`--max-concurrency`) and is never
//! below 1; what may actually start is further capped by the vendor's
//! circuit breaker ([`allowed`]): open 0, half-open 1 (the trial). The
//! ceiling also bounds all vendors together (the worker's global slots),
//! which bounds the sidecar's memory.
//!
//! Pure arithmetic, time passed in: tested with a fake clock, no I/O.

use std::time::{Duration, Instant};

/// Where every vendor's limit starts (the old fixed default was 8).
pub const INITIAL: u32 = 16;
/// A round trip above `LATENCY_FACTOR × baseline + LATENCY_SLACK` counts
/// as congestion.
pub const LATENCY_FACTOR: f64 = 2.0;
/// Absolute allowance on top of the factor, so that the jitter of a
/// vendor answering in a millisecond (and the sidecar's own scheduling)
/// is not read as congestion.
pub const LATENCY_SLACK: Duration = Duration::from_millis(50);
/// Multiplier on a latency-driven cut.
pub const LATENCY_BACKOFF: f64 = 0.9;
/// Multiplier on a cut for vendor trouble (429, 5xx, timeouts).
pub const FAULT_BACKOFF: f64 = 0.5;
/// How fast the baseline forgets a faster past: each answer moves it this
/// fraction of the way up towards the round trip observed (down at once),
/// so a vendor that became lastingly slower is not read as congested forever.
pub const BASELINE_DRIFT: f64 = 0.002;

/// One vendor's concurrency limit.
#[derive(Debug, Clone)]
pub struct Limiter {
    ceiling: u32,
    limit: f64,
    slow_start: bool,
    /// The vendor's uncongested round trip, seconds (`None` before any answer).
    baseline: Option<f64>,
    /// No cut before this moment (one cut per round trip).
    calm_until: Option<Instant>,
}

/// What one answered call tells the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An answer that is not the vendor's trouble (valid, invalid, 401, …).
    Answered,
    /// 429, 5xx, a timeout or a refused connection.
    VendorFault,
}

impl Limiter {
    /// A limiter capped at `ceiling` (at least 1).
    pub fn new(ceiling: u32) -> Limiter {
        let ceiling = ceiling.max(1);
        Limiter {
            ceiling,
            limit: f64::from(INITIAL.min(ceiling)),
            slow_start: true,
            baseline: None,
            calm_until: None,
        }
    }

    /// Calls the vendor may have in flight, by this limiter alone.
    pub fn limit(&self) -> u32 {
        (self.limit.floor() as u32).clamp(1, self.ceiling)
    }

    pub fn ceiling(&self) -> u32 {
        self.ceiling
    }

    /// The baseline round trip the latency check compares against.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(Duration::from_secs_f64)
    }

    /// Records one call's end: `rtt` is how long it took, `in_flight` how
    /// many calls of this vendor were in flight when it started (itself
    /// included), `now` when it ended.
    pub fn record(&mut self, now: Instant, rtt: Duration, in_flight: u32, signal: Signal) {
        let rtt_s = rtt.as_secs_f64();
        let base = match self.baseline {
            Some(b) if rtt_s >= b => b + (rtt_s - b) * BASELINE_DRIFT,
            _ => rtt_s,
        };
        self.baseline = Some(base);
        let congested = match signal {
            Signal::VendorFault => Some(FAULT_BACKOFF),
            Signal::Answered if rtt_s > base * LATENCY_FACTOR + LATENCY_SLACK.as_secs_f64() => {
                Some(LATENCY_BACKOFF)
            }
            Signal::Answered => None,
        };
        match congested {
            Some(factor) => {
                self.slow_start = false;
                if self.calm_until.is_none_or(|t| now >= t) {
                    self.limit = (self.limit * factor).max(1.0);
                    // Answers of calls started before this cut still carry
                    // the old congestion: wait one round trip.
                    self.calm_until = Some(now + Duration::from_secs_f64(base.max(rtt_s)));
                }
            }
            // Grow only while the limit is in use: half of it or more.
            None if in_flight.saturating_mul(2) >= self.limit() => {
                self.limit += if self.slow_start {
                    1.0
                } else {
                    1.0 / f64::from(self.limit())
                };
            }
            None => {}
        }
        let ceiling = f64::from(self.ceiling);
        if self.limit >= ceiling {
            self.limit = ceiling;
            self.slow_start = false;
        }
    }
}

/// Calls of one vendor that may be in flight: the limiter's limit, capped
/// by the breaker's allowance ([`crate::breaker::Breaker::allowance`]:
/// `None` closed, `Some(0)` open, `Some(1)` for the half-open trial), never
/// more, whatever the limiter says.
pub fn allowed(limit: u32, breaker: Option<u32>) -> u32 {
    match breaker {
        None => limit,
        Some(b) => limit.min(b),
    }
}

/// Jobs to claim now: no more than the global slots leave (`free_slots`,
/// the ceiling minus the jobs held) nor than the vendors together could
/// start (`headroom`: the sum over vendors of allowed − held), so that every
/// claimed job can start at once and none waits, leased, in a local backlog.
/// (Claims cannot pick a vendor: a job of a vendor with no room waits for
/// one of its calls to end, or is handed back if its breaker is open.)
pub fn claim_size(free_slots: u32, headroom: u32) -> u32 {
    free_slots.min(headroom)
}

#[cfg(test)]
#[path = "limiter_tests.rs"]
mod tests;
