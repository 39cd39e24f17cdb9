//! use_key on a hot-standby replica (issue 11): with no write per call it
//! serves keys there; its uses stay in the standby's shared memory
//! (byok.key_usage_live), the standby's worker writes nothing; a key revoked
//! on the primary stops serving once the standby has replayed it; and
//! `byok.use_audit = 'each'` is refused there with 25006.

mod common;

use byok_integration::{sample_key, sqlstate, wait_until};
use common::lifecycle::*;
use common::*;
use std::time::Duration;
use uuid::Uuid;

#[test]
fn a_streaming_replica_serves_use_key_counts_in_memory_and_follows_revocation() {
    let primary = cluster_with(byok_integration::ClusterOptions {
        extra_conf: vec!["byok.usage_flush_interval = 1".into()],
        ..Default::default()
    });
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 51);
    let k = add_active(&primary, ws, "anthropic", &key);
    let replica = primary.start_replica(&[]);
    primary.wait_for_replay(&replica);

    let mut r = replica.client();
    let in_recovery: bool = r
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery, "the replica is a hot standby");
    let mut b = replica.client_as("backend");
    for _ in 0..4 {
        let got = use_key(&mut b, ws, "anthropic").unwrap_or_else(|e| replica.fail("use_key", &e));
        assert_eq!(got, key, "the replica serves the key");
    }
    let live: i64 = r
        .query_one(
            "SELECT coalesce(sum(uses), 0)::bigint FROM byok.key_usage_live
              WHERE key_id = $1 AND role = 'backend' AND database = 'byok'",
            &[&k.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(live, 4, "the standby counts its uses in its shared memory");
    // Its worker runs and writes nothing: the counters stay, past a few of
    // its ticks (byok.usage_flush_interval = 1 came with the base backup).
    wait_until(
        "the standby's worker is up",
        Duration::from_secs(60),
        || {
            r.query_one(
                "SELECT flusher_database_oid IS NOT NULL FROM byok.usage_status()",
                &[],
            )
            .map(|row| row.get::<_, bool>(0))
            .unwrap_or(false)
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let (live, flushed_at): (i64, bool) = {
        let row = r
            .query_one(
                "SELECT (SELECT coalesce(sum(uses), 0)::bigint FROM byok.key_usage_live WHERE key_id = $1),
                        (SELECT last_flush_at IS NOT NULL FROM byok.usage_status())",
                &[&k.id],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((live, flushed_at), (4, false));
    assert!(
        !replica.server_log().contains("pg_byok usage flush:"),
        "the standby's worker tried to write"
    );

    // Per-call audit cannot be written on a standby: refused, with a hint.
    r.batch_execute("SET byok.use_audit = 'each'").unwrap();
    let err = use_key(&mut r, ws, "anthropic").expect_err("each mode on a standby");
    assert_eq!(sqlstate(&err), "25006");
    let hint = err.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
    assert!(hint.contains("aggregate"), "hint: {hint}");

    // Revoked on the primary: the replica stops serving once it replays it.
    revoke_key(&mut primary.client(), k.id, Some("leaked"))
        .unwrap_or_else(|e| primary.fail("revoke_key", &e));
    primary.wait_for_replay(&replica);
    let err = use_key(&mut b, ws, "anthropic").expect_err("a revoked key is not served");
    assert_eq!(sqlstate(&err), "P0002");
}
