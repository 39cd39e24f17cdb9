//! Per-vendor circuit breaker: "many workspaces fail at once: it's the
//! platform, not your key".
//!
//! Vendor-side failures (5xx, 529, timeouts, refused connections) from one
//! workspace say little; the same failures from several distinct workspaces
//! within a window mean the vendor is down. Then probing on would only burn
//! every key's attempts until they all end `unverified`, so the breaker
//! opens: no probes for that vendor, its jobs are handed back without
//! counting an attempt. After the open interval one job is let through as a
//! half-open trial; any answer that is not vendor trouble closes the breaker.
//!
//! Pure state machine: time is passed in, so tests drive it with a fake clock.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Externally visible state (also the metrics gauge: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// The spelling `byok.report_vendor_status` expects.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

/// What to do with a claimed job of this vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Probe as usual.
    Probe,
    /// Probe: this is the half-open trial (the breaker just left `Open`).
    Trial,
    /// Hand the job back without probing; it may come back after this long.
    Defer(Duration),
}

/// A state change the worker reports to SQL and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened {
        workspaces: usize,
    },
    /// The half-open trial met vendor trouble again.
    Reopened,
    HalfOpened,
    Closed,
}

/// Thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Distinct workspaces with vendor-side failures that open the breaker.
    pub workspaces: usize,
    /// Window in which failures are counted.
    pub window: Duration,
    /// How long the breaker stays open before a trial.
    pub open_for: Duration,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: VecDeque<(Instant, Uuid)> },
    Open { until: Instant },
    HalfOpen { trial_since: Option<Instant> },
}

/// One vendor's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: Settings,
    inner: Inner,
}

/// How long jobs are deferred while a half-open trial is in flight.
const TRIAL_WAIT: Duration = Duration::from_secs(5);

impl Breaker {
    pub fn new(settings: Settings) -> Breaker {
        Breaker {
            settings: Settings {
                workspaces: settings.workspaces.max(1),
                ..settings
            },
            inner: closed(),
        }
    }

    pub fn state(&self) -> State {
        match self.inner {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Decides about one claimed job. Leaving `Open` for `HalfOpen` happens
    /// here, on the first job after the open interval, which becomes the trial.
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        match &mut self.inner {
            Inner::Closed { .. } => (Admit::Probe, None),
            Inner::Open { until } if now < *until => (Admit::Defer(*until - now), None),
            Inner::Open { .. } => {
                self.inner = Inner::HalfOpen {
                    trial_since: Some(now),
                };
                (Admit::Trial, Some(Transition::HalfOpened))
            }
            Inner::HalfOpen { trial_since } => match *trial_since {
                // A trial whose answer never came (aborted task) must not
                // wedge the breaker: after one open interval, try again.
                Some(since) if now.duration_since(since) < self.settings.open_for => {
                    (Admit::Defer(TRIAL_WAIT.min(self.settings.open_for)), None)
                }
                _ => {
                    *trial_since = Some(now);
                    (Admit::Trial, None)
                }
            },
        }
    }

    /// Records a probe's result. `vendor_fault` is the verdict's flag;
    /// `trial` says whether [`Breaker::admit`] returned `Trial` for it.
    pub fn record(
        &mut self,
        now: Instant,
        workspace: Uuid,
        vendor_fault: bool,
        trial: bool,
    ) -> Option<Transition> {
        let open_for = self.settings.open_for;
        match &mut self.inner {
            Inner::HalfOpen { .. } if trial && !vendor_fault => {
                self.inner = closed();
                Some(Transition::Closed)
            }
            Inner::HalfOpen { .. } if trial => {
                self.inner = Inner::Open {
                    until: now + open_for,
                };
                Some(Transition::Reopened)
            }
            Inner::Closed { failures } if vendor_fault => {
                failures.push_back((now, workspace));
                while failures
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > self.settings.window)
                {
                    failures.pop_front();
                }
                let distinct = failures
                    .iter()
                    .map(|(_, w)| w)
                    .collect::<HashSet<_>>()
                    .len();
                (distinct >= self.settings.workspaces).then(|| {
                    self.inner = Inner::Open {
                        until: now + open_for,
                    };
                    Transition::Opened {
                        workspaces: distinct,
                    }
                })
            }
            // Successes while closed, and late results while open or during
            // someone else's trial, change nothing.
            _ => None,
        }
    }

    /// How many calls this breaker lets be in flight now: `None` when
    /// closed (no cap: the concurrency limiter decides), `Some(0)` while
    /// open or while a half-open trial is out, `Some(1)` when the next job
    /// would be the trial (the open interval is over, or a trial's answer
    /// never came). Mirrors [`Breaker::admit`], without changing state.
    pub fn allowance(&self, now: Instant) -> Option<u32> {
        match self.inner {
            Inner::Closed { .. } => None,
            Inner::Open { until } => Some(u32::from(now >= until)),
            Inner::HalfOpen { trial_since } => {
                Some(u32::from(trial_since.is_none_or(|since| {
                    now.duration_since(since) >= self.settings.open_for
                })))
            }
        }
    }

    /// Time left while open (zero otherwise).
    pub fn open_remaining(&self, now: Instant) -> Duration {
        match self.inner {
            Inner::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }
}

fn closed() -> Inner {
    Inner::Closed {
        failures: VecDeque::new(),
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
