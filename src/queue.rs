//! Queue rules the SQL side asks Rust for: retry delay and attempt limit
//! (byok-core decides them, so the sidecar and the extension agree). The
//! #[pg_test]s of sql/queue.sql (claim, finish, release, defer, vendor
//! status; wired in by schema.rs) live here too.

use pgrx::prelude::*;

/// Seconds until a job that asked for a retry may be claimed again.
#[pg_extern(volatile, name = "_retry_delay")]
#[search_path(pg_catalog, pg_temp)]
fn retry_delay(attempt: Option<i32>, retry_after_seconds: Option<i32>) -> f64 {
    let attempt = attempt.unwrap_or(1).max(1) as u32;
    let retry_after = retry_after_seconds.and_then(|s| u32::try_from(s).ok());
    byok_core::backoff::retry_delay_seconds(attempt, retry_after, rand::random::<f64>())
}

/// The attempt limit (setting `byok.max_attempts`).
#[pg_extern(stable, name = "_max_attempts")]
#[search_path(pg_catalog, pg_temp)]
fn max_attempts() -> i32 {
    crate::settings::MAX_ATTEMPTS.get()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::tests_support::*;
    use pgrx::prelude::*;

    #[test]
    fn retry_delay_honours_retry_after() {
        let secs = super::retry_delay(Some(1), Some(120));
        assert!(secs >= 120.0, "Retry-After of 120 s gave {secs}");
    }

    #[pg_test]
    fn invalid_key_is_erased() {
        let id = add("anthropic", &anthropic_key('i'));
        Spi::run(
            "SELECT byok.finish_job(c.job_id, c.lease_token, 'invalid', 'The vendor rejected the key (401)', 401)
               FROM byok.claim_jobs('w') c",
        )
        .unwrap();
        let (status, erased) = Spi::get_two::<String, bool>(&format!(
            "SELECT status, ciphertext IS NULL FROM byok.keys WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!((status.as_deref(), erased), (Some("invalid"), Some(true)));
        refused(&format!("SELECT byok.revalidate_key('{id}')"), "22023");
    }

    #[pg_test]
    fn retry_reschedules_and_the_attempt_limit_makes_the_key_unverified() {
        let id = add("openai", &openai_key('r'));
        Spi::run("SET byok.max_attempts = 2").unwrap();
        Spi::run("SELECT byok.finish_job(c.job_id, c.lease_token, 'retry', 'vendor 503', 503) FROM byok.claim_jobs('w') c").unwrap();
        let later = Spi::get_one::<bool>(
            "SELECT run_after > clock_timestamp() AND lease_token IS NULL FROM byok.jobs",
        )
        .unwrap();
        assert_eq!(later, Some(true), "retry must reschedule into the future");
        Spi::run("UPDATE byok.jobs SET run_after = clock_timestamp()").unwrap();
        let status = Spi::get_one::<String>(
            "SELECT byok.finish_job(c.job_id, c.lease_token, 'retry', 'vendor 503', 503) FROM byok.claim_jobs('w') c",
        )
        .unwrap();
        assert_eq!(status.as_deref(), Some("unverified"));
        let kept = Spi::get_one::<bool>(&format!(
            "SELECT ciphertext IS NOT NULL FROM byok.keys WHERE id = '{id}'"
        ));
        assert_eq!(
            kept.unwrap(),
            Some(true),
            "unverified keys keep their ciphertext"
        );
        let pending =
            Spi::get_one::<String>(&format!("SELECT status FROM byok.revalidate_key('{id}')"))
                .unwrap();
        assert_eq!(pending.as_deref(), Some("pending"));
    }

    #[pg_test]
    fn stale_lease_token_changes_nothing() {
        add("openai", &openai_key('s'));
        let job = Spi::get_one::<i64>("SELECT job_id FROM byok.claim_jobs('w')")
            .unwrap()
            .unwrap();
        let res = Spi::get_one::<String>(&format!(
            "SELECT byok.finish_job({job}, gen_random_uuid(), 'invalid')"
        ))
        .unwrap();
        assert_eq!(res.as_deref(), Some("stale"));
        let status = Spi::get_one::<String>("SELECT status FROM byok.keys").unwrap();
        assert_eq!(status.as_deref(), Some("pending"));
    }

    #[pg_test]
    fn queue_functions_refuse_bad_arguments() {
        refused("SELECT * FROM byok.claim_jobs(NULL)", "22004");
        refused("SELECT * FROM byok.claim_jobs('w', 0)", "22023");
        refused("SELECT * FROM byok.claim_jobs('w', 1, 0)", "22023");
        refused(
            "SELECT byok.finish_job(1, gen_random_uuid(), 'maybe')",
            "22023",
        );
        refused(
            "SELECT byok.finish_job(NULL, gen_random_uuid(), 'valid')",
            "22004",
        );
        refused("SELECT byok.finish_job(1, NULL, 'valid')", "22004");
        refused(
            "SELECT byok.finish_job(1, gen_random_uuid(), NULL)",
            "22004",
        );
        refused(
            "SELECT byok.finish_job(1, gen_random_uuid(), 'retry', NULL, 99)",
            "22023",
        );
    }

    #[pg_test]
    fn release_job_hands_back_without_spending_the_attempt() {
        add("openai", &openai_key('h'));
        let (job, token) =
            Spi::get_two::<i64, pgrx::Uuid>("SELECT job_id, lease_token FROM byok.claim_jobs('w')")
                .unwrap();
        let (job, token) = (job.unwrap(), token.unwrap());
        let released =
            Spi::get_one::<bool>(&format!("SELECT byok.release_job({job}, '{token}')")).unwrap();
        assert_eq!(released, Some(true));
        let attempts = Spi::get_one::<i32>("SELECT attempts FROM byok.jobs").unwrap();
        assert_eq!(attempts, Some(0));
        let again =
            Spi::get_one::<bool>(&format!("SELECT byok.release_job({job}, '{token}')")).unwrap();
        assert_eq!(again, Some(false), "a released lease token is stale");
        let reclaimed = Spi::get_one::<i64>("SELECT count(*) FROM byok.claim_jobs('w')").unwrap();
        assert_eq!(reclaimed, Some(1));
    }

    #[pg_test]
    fn defer_jobs_pushes_back_only_that_vendor() {
        add("openai", &openai_key('j'));
        add("anthropic", &anthropic_key('k'));
        let n = Spi::get_one::<i32>("SELECT byok.defer_jobs('openai', 60)").unwrap();
        assert_eq!(n, Some(1));
        let vendors =
            Spi::get_one::<Vec<String>>("SELECT array_agg(vendor) FROM byok.claim_jobs('w')")
                .unwrap();
        assert_eq!(vendors, Some(vec!["anthropic".to_string()]));
        let depth =
            Spi::get_one::<i64>("SELECT waiting FROM byok.queue_depth() WHERE vendor = 'openai'")
                .unwrap();
        assert_eq!(depth, Some(1));
        refused("SELECT byok.defer_jobs('openai', 0)", "22023");
        refused("SELECT byok.defer_jobs('gemini', 10)", "22023");
    }

    #[pg_test]
    fn vendor_status_reports_the_breaker() {
        Spi::run("SELECT byok.report_vendor_status('w1', 'anthropic', 'open', '5 workspaces failing: 529')").unwrap();
        let (state, degraded) = Spi::get_two::<String, bool>(
            "SELECT state, degraded FROM byok.vendor_status WHERE vendor = 'anthropic'",
        )
        .unwrap();
        assert_eq!((state.as_deref(), degraded), (Some("open"), Some(true)));
        refused(
            "SELECT byok.report_vendor_status('w1', 'anthropic', 'broken')",
            "22023",
        );
    }

    #[pg_test]
    fn claim_retires_a_tampered_key_instead_of_blocking_the_queue() {
        let bad = add("openai", &openai_key('t'));
        add("anthropic", &anthropic_key('u'));
        Spi::run(&format!(
            "UPDATE byok.keys SET ciphertext = set_byte(ciphertext, 40, get_byte(ciphertext, 40) # 1) WHERE id = '{bad}'"
        ))
        .unwrap();
        let claimed = Spi::get_one::<i64>("SELECT count(*) FROM byok.claim_jobs('w')").unwrap();
        assert_eq!(claimed, Some(1), "the healthy job is still handed out");
        let (status, erased) = Spi::get_two::<String, bool>(&format!(
            "SELECT status, ciphertext IS NULL FROM byok.keys WHERE id = '{bad}'"
        ))
        .unwrap();
        assert_eq!((status.as_deref(), erased), (Some("invalid"), Some(true)));
    }

    #[pg_test]
    fn a_lease_lost_on_the_last_attempt_makes_the_key_unverified() {
        let id = add("openai", &openai_key('y'));
        Spi::run("SET byok.max_attempts = 1").unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM byok.claim_jobs('w')").unwrap(),
            Some(1)
        );
        // The worker died: its lease runs out.
        Spi::run("UPDATE byok.jobs SET run_after = clock_timestamp()").unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM byok.claim_jobs('w')").unwrap(),
            Some(0)
        );
        let status =
            Spi::get_one::<String>(&format!("SELECT status FROM byok.keys WHERE id = '{id}'"))
                .unwrap();
        assert_eq!(status.as_deref(), Some("unverified"));
        assert_eq!(count("jobs"), 0);
    }
}
