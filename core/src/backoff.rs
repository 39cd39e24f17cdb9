//! Retry schedule for key validation jobs the vendor could not answer.
//!
//! Capped exponential backoff with "equal jitter": attempt n waits between
//! half and all of `10 s × 2^(n-1)`, capped at 900 s. With the default 6
//! attempts the waits are ≈ 5–10, 10–20, 20–40, 40–80 and 80–160 s: a key
//! is given up on (`unverified`) after roughly 3–5 minutes of vendor
//! trouble, long enough to ride out a blip, short enough that the user who
//! just added the key still cares. Jitter keeps many keys queued during an
//! outage from retrying in lock-step; the lower half keeps a floor so a
//! retry never comes back instantly.

/// Attempts (including the first) before a key becomes `unverified`.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 6;

/// Wait after the first failed attempt, before jitter.
pub const BASE_DELAY_SECONDS: f64 = 10.0;

/// Longest computed wait (matters only with raised attempt limits).
pub const MAX_DELAY_SECONDS: f64 = 900.0;

/// Longest wait even when a vendor's `Retry-After` asks for more: a bogus
/// or hostile header must not park a key for days.
pub const MAX_RETRY_AFTER_SECONDS: f64 = 3600.0;

/// Seconds to wait after failed attempt `attempt` (1-based; 0 counts as 1).
///
/// `jitter` is uniform in [0, 1), supplied by the caller so this stays pure
/// and testable; out-of-range or NaN values are clamped. A vendor's
/// `retry_after` is honoured as a minimum, up to one hour.
pub fn retry_delay_seconds(attempt: u32, retry_after: Option<u32>, jitter: f64) -> f64 {
    // 2^7 × 10 s already exceeds the cap, so larger exponents change nothing
    // and capping the exponent avoids overflow.
    let exponent = attempt.max(1).saturating_sub(1).min(16);
    let base = (BASE_DELAY_SECONDS * f64::from(1u32 << exponent)).min(MAX_DELAY_SECONDS);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let delay = base / 2.0 + jitter * base / 2.0;
    match retry_after {
        Some(seconds) => delay.max(f64::from(seconds)).min(MAX_RETRY_AFTER_SECONDS),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_attempt_waits_five_to_ten_seconds() {
        assert_eq!(retry_delay_seconds(1, None, 0.0), 5.0);
        assert!((retry_delay_seconds(1, None, 0.999_999) - 10.0).abs() < 1e-4);
    }

    #[test]
    fn attempt_zero_counts_as_one() {
        assert_eq!(
            retry_delay_seconds(0, None, 0.5),
            retry_delay_seconds(1, None, 0.5)
        );
    }

    #[test]
    fn doubles_per_attempt() {
        let waits: Vec<f64> = (1..=5).map(|a| retry_delay_seconds(a, None, 0.0)).collect();
        assert_eq!(waits, [5.0, 10.0, 20.0, 40.0, 80.0]);
    }

    #[test]
    fn caps_at_900_seconds() {
        assert_eq!(retry_delay_seconds(7, None, 0.0), 320.0);
        assert_eq!(retry_delay_seconds(8, None, 0.0), 450.0);
        assert_eq!(retry_delay_seconds(9, None, 0.0), 450.0);
        assert!(retry_delay_seconds(u32::MAX, None, 0.999) <= 900.0);
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_an_hour() {
        assert_eq!(retry_delay_seconds(1, Some(30), 0.0), 30.0);
        assert_eq!(retry_delay_seconds(4, Some(1), 0.0), 40.0);
        assert_eq!(retry_delay_seconds(1, Some(86_400), 0.0), 3600.0);
        assert_eq!(retry_delay_seconds(1, Some(u32::MAX), 0.5), 3600.0);
    }

    #[test]
    fn bad_jitter_is_clamped() {
        assert_eq!(retry_delay_seconds(1, None, f64::NAN), 5.0);
        assert_eq!(retry_delay_seconds(1, None, -3.0), 5.0);
        assert_eq!(retry_delay_seconds(1, None, 7.0), 10.0);
    }

    #[test]
    fn always_within_half_base_and_base() {
        for attempt in 1..=20 {
            for j in [0.0, 0.25, 0.5, 0.75, 0.999] {
                let base = (10.0 * 2f64.powi(attempt as i32 - 1)).min(900.0);
                let d = retry_delay_seconds(attempt, None, j);
                assert!(
                    d >= base / 2.0 && d <= base,
                    "attempt {attempt} jitter {j}: {d}"
                );
            }
        }
    }
}
