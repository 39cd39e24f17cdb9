//! Queue rules the SQL side asks Rust for: retry delay and attempt limit
//! (byok-core decides them, so the sidecar and the extension agree), and the
//! workspace statuses that revoke keys.

use pgrx::prelude::*;

/// Seconds until a job that asked for a retry may be claimed again.
#[pg_extern(volatile, name = "_retry_delay")]
fn retry_delay(attempt: Option<i32>, retry_after_seconds: Option<i32>) -> f64 {
    let attempt = attempt.unwrap_or(1).max(1) as u32;
    let retry_after = retry_after_seconds.and_then(|s| u32::try_from(s).ok());
    byok_core::backoff::retry_delay_seconds(attempt, retry_after, rand::random::<f64>())
}

/// The attempt limit (setting `byok.max_attempts`).
#[pg_extern(stable, name = "_max_attempts")]
fn max_attempts() -> i32 {
    crate::settings::MAX_ATTEMPTS.get()
}

/// The statuses that revoke a workspace's keys (setting `byok.inactive_statuses`).
#[pg_extern(stable, name = "_inactive_statuses")]
fn inactive_statuses() -> Vec<String> {
    crate::settings::inactive_statuses()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn retry_delay_honours_retry_after() {
        let secs = Spi::get_one::<f64>("SELECT byok._retry_delay(1, 120)").unwrap().unwrap();
        assert!(secs >= 120.0, "Retry-After of 120 s gave {secs}");
    }

    #[pg_test]
    fn inactive_statuses_default_list() {
        let list = Spi::get_one::<Vec<String>>("SELECT byok._inactive_statuses()").unwrap().unwrap();
        for s in ["paused", "cancelled", "canceled", "suspended", "deleted"] {
            assert!(list.iter().any(|x| x == s), "{s} missing from {list:?}");
        }
    }
}
