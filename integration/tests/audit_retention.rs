//! Audit retention (issue 11): pg_byok's background worker deletes audit
//! rows older than `byok.audit_retention_days` (default 365) and keeps the
//! rest; 0 keeps everything; every other DELETE, UPDATE or TRUNCATE of the
//! audit trail is still refused (42501), the owner's included.

mod common;

use byok_integration::{sqlstate, wait_until, Cluster, ClusterOptions};
use common::lifecycle::*;
use std::time::Duration;

fn insert_aged(c: &Cluster, days: i32, detail: &str) {
    c.client()
        .execute(
            "INSERT INTO byok.audit_log (at, actor_role, action, outcome, detail)
             VALUES (clock_timestamp() - make_interval(days => $1), 'tester', 'add', 'ok', $2)",
            &[&days, &detail],
        )
        .unwrap_or_else(|e| c.fail("INSERT INTO byok.audit_log", &e));
}

fn details(c: &Cluster) -> Vec<String> {
    c.client()
        .query(
            "SELECT detail FROM byok.audit_log WHERE actor_role = 'tester' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn the_worker_prunes_rows_older_than_the_retention_and_nothing_else_may_delete() {
    let c = cluster_with(ClusterOptions {
        extra_conf: vec!["byok.usage_flush_interval = 1".into()],
        ..Default::default()
    });
    insert_aged(&c, 400, "old");
    insert_aged(&c, 366, "just past");
    insert_aged(&c, 364, "just inside");
    insert_aged(&c, 0, "new");
    wait_until(
        "rows past 365 days are pruned",
        Duration::from_secs(60),
        || details(&c) == ["just inside", "new"],
    );

    // The append-only guard still refuses everyone else, the owner
    // included, a row older than the retention too (inserted in the same
    // transaction, so the worker cannot have pruned it first).
    let mut admin = c.client();
    for sql in [
        "DELETE FROM byok.audit_log WHERE actor_role = 'tester'",
        "UPDATE byok.audit_log SET detail = 'x'",
        "TRUNCATE byok.audit_log",
        "INSERT INTO byok.audit_log (at, actor_role, action) \
           VALUES (clock_timestamp() - interval '400 days', 'tester', 'add'); \
         DELETE FROM byok.audit_log WHERE at < clock_timestamp() - interval '399 days'",
    ] {
        let mut tx = admin.transaction().unwrap();
        let err = tx.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&err), "42501", "{sql}");
        tx.rollback().unwrap();
    }

    // 0 keeps everything: an old row outlives several of the worker's ticks.
    admin
        .batch_execute("ALTER SYSTEM SET byok.audit_retention_days = 0")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    insert_aged(&c, 4000, "ancient");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(details(&c), ["just inside", "new", "ancient"]);
}
