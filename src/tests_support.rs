//! Helpers shared by the `#[pg_test]`s (compiled only for tests).

use pgrx::prelude::*;

/// A well-formed Anthropic API key whose body is made of `fill`.
pub fn anthropic_key(fill: char) -> String {
    format!("sk-ant-api03-{}AA", fill.to_string().repeat(93))
}

/// A well-formed OpenAI project key whose body is made of `fill`.
pub fn openai_key(fill: char) -> String {
    let half = fill.to_string().repeat(74);
    format!("sk-proj-{half}T3BlbkFJ{half}")
}

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
    (state.expect("statement was expected to fail"), msg.unwrap_or_default(), hint)
}

/// Number of rows in a byok table (as the superuser running the test).
pub fn count(table: &str) -> i64 {
    Spi::get_one::<i64>(&format!("SELECT count(*) FROM byok.{table}")).unwrap().unwrap_or(0)
}
