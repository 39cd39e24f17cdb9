//! Helpers shared by the `#[pg_test]`s (compiled only for tests).

use pgrx::prelude::*;

/// Sample keys come from the workspace's one set of builders (byok-core,
/// feature `samples`, enabled by this crate's `pg_test` feature).
pub use byok_core::samples::{
    filled_anthropic_key as anthropic_key, filled_openai_key as openai_key,
};

/// Run `sql`; return the SQLSTATE it failed with, or None if it succeeded.
/// The statement runs in a subtransaction, so a failure leaves nothing behind.
pub fn sqlstate_of(sql: &str) -> Option<String> {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text
         LANGUAGE plpgsql AS $f$
         BEGIN EXECUTE q; RETURN NULL;
         EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $f$",
    )
    .unwrap();
    Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[sql.into()]).unwrap()
}

/// Run `sql`, expecting it to fail; return (sqlstate, message, hint).
pub fn error_of(sql: &str) -> (String, String, Option<String>) {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.error_of(q text, OUT state text, OUT msg text, OUT hint text)
         LANGUAGE plpgsql AS $f$
         BEGIN EXECUTE q; state := NULL;
         EXCEPTION WHEN OTHERS THEN
           GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
         END $f$",
    )
    .unwrap();
    let (state, msg, hint) = Spi::get_three_with_args::<String, String, String>(
        "SELECT state, msg, nullif(hint, '') FROM pg_temp.error_of($1)",
        &[sql.into()],
    )
    .unwrap();
    (
        state.expect("statement was expected to fail"),
        msg.unwrap_or_default(),
        hint,
    )
}

/// Number of rows in a byok table (as the superuser running the test).
pub fn count(table: &str) -> i64 {
    Spi::get_one::<i64>(&format!("SELECT count(*) FROM byok.{table}"))
        .unwrap()
        .unwrap_or(0)
}

pub const WS: &str = "11111111-1111-1111-1111-111111111111";

pub fn add(vendor: &str, key: &str) -> String {
    Spi::get_one_with_args::<String>(
        &format!("SELECT (byok.add_key('{WS}', $1, $2)).id::text"),
        &[vendor.into(), key.into()],
    )
    .unwrap()
    .unwrap()
}

/// Claim every ready job and finish it with `outcome`.
pub fn validate_all(outcome: &str) {
    Spi::run(&format!(
        "SELECT byok.finish_job(c.job_id, c.lease_token, '{outcome}')
           FROM byok.claim_jobs('test-worker', 100) c"
    ))
    .unwrap();
}

/// Each bad input raises its SQLSTATE and leaves no row behind.
pub fn refused(sql: &str, state: &str) {
    let (keys, jobs, audit) = (count("keys"), count("jobs"), count("audit_log"));
    let (got, msg, hint) = error_of(sql);
    assert_eq!(got, state, "{sql} raised {got}: {msg}");
    assert!(hint.is_some(), "{sql} raised {got} without a hint: {msg}");
    // The test keys' bodies are one repeated character: no run of it may
    // reach the message.
    for fill in ['a', 'b', 'o', 'v', 'w', 'x'] {
        assert!(
            !msg.contains(&fill.to_string().repeat(12)),
            "message echoes a key: {msg}"
        );
    }
    assert_eq!(
        (count("keys"), count("jobs"), count("audit_log")),
        (keys, jobs, audit)
    );
}
