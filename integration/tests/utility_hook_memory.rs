//! Security finding 9: the ProcessUtility hook's memory inside SQL functions.
//!
//! Every utility statement of a SQL-language function is handed the whole
//! function body as its query text, in a memory context that lives until the
//! outer query ends. The hook's masked copy of a body holding key-shaped
//! text used to stay there too: 1 MB per statement per call. Measured here
//! as the backend's peak resident memory (`VmHWM` in /proc/<pid>/status)
//! across one query that calls such a function many times.

use byok_integration::postgres::Client;
use byok_integration::{sample_key, Cluster, ClusterOptions};

/// Calls of the function in the measured query.
const CALLS: i64 = 200;
/// Size of the function body (a comment after the statements).
const BODY_BYTES: usize = 1 << 20;
/// Growth allowed for the whole query. Without the fix it is about
/// CALLS × BODY_BYTES (200 MB); Postgres' own per-call memory for such a
/// body stays well below this.
const MAX_GROWTH_KB: i64 = 64 * 1024;

/// Peak resident set of a process, in kB.
fn peak_rss_kb(pid: i32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// A SQL function with one utility statement and a ~1 MB comment made of
/// `line`s, created in a fresh session; returns that session and its pid.
fn session_with_function(c: &Cluster, line: &str) -> (Client, i32) {
    let mut db = c.client();
    let mut body = String::from("SET LOCAL application_name = 'byok-mem';\nSELECT 1;\n");
    while body.len() < BODY_BYTES {
        body.push_str("-- ");
        body.push_str(line);
        body.push('\n');
    }
    db.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION public.utility_body() RETURNS integer
         LANGUAGE sql VOLATILE AS $body${body}$body$"
    ))
    .unwrap_or_else(|e| c.fail("create the SQL function", &e));
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    (db, pid)
}

/// Growth of the backend's peak memory over one query calling the function
/// CALLS times (after a warm-up call, so caches are already filled).
fn growth_kb(db: &mut Client, pid: i32) -> i64 {
    db.query_one("SELECT public.utility_body()", &[]).unwrap();
    let before = peak_rss_kb(pid);
    let n: i64 = db
        .query_one(
            "SELECT count(public.utility_body()) FROM generate_series(1, $1::bigint)",
            &[&CALLS],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, CALLS);
    peak_rss_kb(pid) - before
}

#[test]
fn masked_copies_of_a_sql_function_body_are_freed_per_call() {
    let c = Cluster::start(ClusterOptions::default());

    let (mut plain, plain_pid) = session_with_function(&c, &"lorem ipsum dolor ".repeat(6));
    let without_keys = growth_kb(&mut plain, plain_pid);

    let key = sample_key("anthropic", 9);
    let (mut keyed, keyed_pid) = session_with_function(&c, &format!("old key {key} rotated"));
    let with_keys = growth_kb(&mut keyed, keyed_pid);

    eprintln!(
        "peak memory growth over {CALLS} calls of a {BODY_BYTES}-byte body: \
         {without_keys} kB without key shapes, {with_keys} kB with"
    );
    assert!(
        with_keys < MAX_GROWTH_KB,
        "the backend grew by {with_keys} kB over {CALLS} calls of a SQL function whose body \
         holds key-shaped text ({without_keys} kB without key shapes): the hook's masked copies \
         are not freed per call"
    );

    // Freeing the copy after the call leaves the function working (the
    // masking itself is checked by the leak suite and the #[pg_test]s).
    let v: i32 = keyed
        .query_one("SELECT public.utility_body()", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
}
