//! The limiter's arithmetic with a fake clock: growth under a steady
//! latency, cuts on vendor trouble and on queueing, the ceiling and the
//! breaker's cap whatever happens.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::breaker::{Breaker, Settings};

const MS: Duration = Duration::from_millis(1);

/// Runs `rounds` round trips of a vendor answering in `rtt` with the limit
/// fully used; returns the limit after each round.
fn steady(l: &mut Limiter, start: Instant, rtt: Duration, rounds: u32) -> Vec<u32> {
    let mut now = start;
    let mut seen = Vec::new();
    for _ in 0..rounds {
        now += rtt;
        let in_flight = l.limit();
        for _ in 0..in_flight {
            l.record(now, rtt, in_flight, Signal::Answered);
        }
        seen.push(l.limit());
    }
    seen
}

#[test]
fn starts_at_the_initial_limit_within_the_ceiling() {
    assert_eq!(Limiter::new(256).limit(), INITIAL);
    assert_eq!(Limiter::new(4).limit(), 4);
    assert_eq!(
        Limiter::new(0).limit(),
        1,
        "a ceiling of 0 still allows one call"
    );
}

#[test]
fn slow_start_doubles_per_round_trip_up_to_the_ceiling() {
    let mut l = Limiter::new(256);
    let seen = steady(&mut l, Instant::now(), 150 * MS, 6);
    assert_eq!(seen, [32, 64, 128, 256, 256, 256]);
}

#[test]
fn an_idle_limit_does_not_grow() {
    let mut l = Limiter::new(256);
    let now = Instant::now();
    for i in 0..1000 {
        // Two calls in flight out of sixteen: the vendor is not the limit.
        l.record(now + i * MS, 150 * MS, 2, Signal::Answered);
    }
    assert_eq!(l.limit(), INITIAL);
}

#[test]
fn vendor_trouble_halves_the_limit_once_per_round_trip() {
    let mut l = Limiter::new(256);
    let t0 = Instant::now();
    steady(&mut l, t0, 100 * MS, 3); // 128
    assert_eq!(l.limit(), 128);
    let t1 = t0 + Duration::from_secs(1);
    // A burst of 429s answered together: one cut.
    for _ in 0..50 {
        l.record(t1, 100 * MS, 128, Signal::VendorFault);
    }
    assert_eq!(l.limit(), 64);
    // A round trip later, still failing: another cut.
    l.record(t1 + 150 * MS, 100 * MS, 64, Signal::VendorFault);
    assert_eq!(l.limit(), 32);
    // Never below one.
    for i in 1..100 {
        l.record(
            t1 + i * Duration::from_secs(1),
            100 * MS,
            1,
            Signal::VendorFault,
        );
    }
    assert_eq!(l.limit(), 1);
}

#[test]
fn after_a_cut_growth_is_additive() {
    let mut l = Limiter::new(256);
    let t0 = Instant::now();
    steady(&mut l, t0, 100 * MS, 2); // 64
    l.record(
        t0 + Duration::from_secs(1),
        100 * MS,
        64,
        Signal::VendorFault,
    );
    assert_eq!(l.limit(), 32);
    let seen = steady(&mut l, t0 + Duration::from_secs(2), 100 * MS, 5);
    // About one more per round trip, not a doubling.
    let mut last = 32;
    for s in &seen {
        assert!(*s == last || *s == last + 1, "{seen:?}");
        last = *s;
    }
    assert!(last >= 35, "{seen:?}");
}

#[test]
fn queueing_at_the_vendor_cuts_the_limit() {
    let mut l = Limiter::new(256);
    let t0 = Instant::now();
    steady(&mut l, t0, 100 * MS, 2); // 64, baseline 100 ms
    let before = l.limit();
    // Round trips of 400 ms (> 2 × 100 ms + 50 ms): calls are queueing.
    l.record(
        t0 + Duration::from_secs(1),
        400 * MS,
        before,
        Signal::Answered,
    );
    assert!(l.limit() < before, "{} !< {before}", l.limit());
    // Within tolerance (220 ms < 250 ms): no cut.
    let after = l.limit();
    l.record(
        t0 + Duration::from_secs(3),
        220 * MS,
        after,
        Signal::Answered,
    );
    assert!(l.limit() >= after);
}

#[test]
fn jitter_of_a_fast_vendor_is_not_congestion() {
    let mut l = Limiter::new(256);
    let t0 = Instant::now();
    for i in 0..5000u32 {
        // 0.2 ms to 20 ms: well inside the 50 ms slack.
        let rtt = Duration::from_micros(200 + u64::from(i % 100) * 200);
        l.record(t0 + i * MS, rtt, l.limit(), Signal::Answered);
    }
    assert_eq!(l.limit(), 256);
}

#[test]
fn a_lastingly_slower_vendor_becomes_the_new_baseline() {
    let mut l = Limiter::new(256);
    let t0 = Instant::now();
    steady(&mut l, t0, 10 * MS, 1);
    // The vendor moves from 10 ms to 500 ms for good: the first answers
    // count as queueing, then the baseline catches up and growth resumes.
    let mut now = t0 + Duration::from_secs(1);
    for _ in 0..5000 {
        now += 5 * MS;
        l.record(now, 500 * MS, l.limit(), Signal::Answered);
    }
    assert!(l.baseline().unwrap() > 200 * MS, "{:?}", l.baseline());
    let low = l.limit();
    for _ in 0..2000 {
        now += 5 * MS;
        l.record(now, 500 * MS, l.limit(), Signal::Answered);
    }
    assert!(l.limit() > low, "{} !> {low}", l.limit());
}

#[test]
fn the_breaker_caps_what_may_start() {
    let settings = Settings {
        workspaces: 1,
        window: Duration::from_secs(60),
        open_for: Duration::from_secs(30),
    };
    let mut b = Breaker::new(settings);
    let t0 = Instant::now();
    assert_eq!(
        allowed(200, b.allowance(t0)),
        200,
        "closed: the limiter decides"
    );
    b.record(t0, uuid::Uuid::nil(), true, false);
    assert_eq!(allowed(200, b.allowance(t0)), 0, "open: nothing");
    let later = t0 + Duration::from_secs(31);
    assert_eq!(
        allowed(200, b.allowance(later)),
        1,
        "open interval over: the trial"
    );
    let _ = b.admit(later);
    assert_eq!(
        allowed(200, b.allowance(later)),
        0,
        "trial out: nothing more"
    );
    assert_eq!(allowed(0, None), 0);
}

#[test]
fn claims_never_exceed_free_slots_or_headroom() {
    assert_eq!(claim_size(256, 40), 40);
    assert_eq!(claim_size(10, 40), 10);
    assert_eq!(claim_size(0, 40), 0);
    assert_eq!(claim_size(10, 0), 0);
}

#[derive(Debug, Clone)]
enum Event {
    Answer { rtt_ms: u64, in_flight: u32 },
    Fault { rtt_ms: u64 },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0u64..2000, 0u32..600).prop_map(|(rtt_ms, in_flight)| Event::Answer { rtt_ms, in_flight }),
        1 => (0u64..20_000).prop_map(|rtt_ms| Event::Fault { rtt_ms }),
    ]
}

proptest! {
    /// Whatever the vendor does, the limit stays within 1..=ceiling, and
    /// what may start never exceeds the breaker's allowance.
    #[test]
    fn never_past_the_ceiling_or_the_breaker(
        ceiling in 0u32..600,
        events in proptest::collection::vec((event(), 0u64..500), 1..300),
        breaker in proptest::option::of(0u32..2),
    ) {
        let mut l = Limiter::new(ceiling);
        let mut now = Instant::now();
        for (e, gap_ms) in events {
            now += Duration::from_millis(gap_ms);
            match e {
                Event::Answer { rtt_ms, in_flight } => {
                    l.record(now, Duration::from_millis(rtt_ms), in_flight, Signal::Answered)
                }
                Event::Fault { rtt_ms } => {
                    l.record(now, Duration::from_millis(rtt_ms), l.limit(), Signal::VendorFault)
                }
            }
            prop_assert!(l.limit() >= 1);
            prop_assert!(l.limit() <= ceiling.max(1));
            let a = allowed(l.limit(), breaker);
            prop_assert!(a <= l.limit());
            if let Some(b) = breaker {
                prop_assert!(a <= b);
            }
        }
    }

    /// Under a steady latency with the limit in use it only grows (to the
    /// ceiling); a vendor fault after that always cuts it.
    #[test]
    fn grows_under_steady_latency_and_shrinks_on_faults(
        ceiling in 2u32..600,
        rtt_ms in 1u64..3000,
        rounds in 1u32..40,
    ) {
        let mut l = Limiter::new(ceiling);
        let t0 = Instant::now();
        let rtt = Duration::from_millis(rtt_ms);
        let seen = steady(&mut l, t0, rtt, rounds);
        let mut last = Limiter::new(ceiling).limit();
        for s in &seen {
            prop_assert!(*s >= last);
            prop_assert!(*s == ceiling || *s > last, "stalled at {s} below {ceiling}");
            last = *s;
        }
        let before = l.limit();
        l.record(t0 + rtt * (rounds + 1), rtt, before, Signal::VendorFault);
        prop_assert!(l.limit() < before || before == 1);
    }
}
