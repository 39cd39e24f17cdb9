//! Small helpers for assertions on SQL results.

use std::time::{Duration, Instant};

/// The SQLSTATE of a failed statement (`"42501"`, …). Panics with the full
/// error when it is not a database error (connection trouble, type mismatch
/// on the client side), so a test never compares against a made-up code.
pub fn sqlstate(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.code().code().to_string(),
        None => panic!("expected a database error with a SQLSTATE, got: {e:?}"),
    }
}

/// Poll `cond` every 20 ms until it returns true; panic with `what` after
/// `timeout`. For waiting on state a query can observe, never as a sleep.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_when_true() {
        let mut n = 0;
        wait_until("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "timed out")]
    fn wait_until_times_out() {
        wait_until("never", Duration::from_millis(50), || false);
    }
}
