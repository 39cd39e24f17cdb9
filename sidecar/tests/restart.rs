//! Postgres restart and pg_terminate_backend mid-run: the sidecar
//! reconnects with backoff and no job is lost or finished twice.

mod common;

use std::time::Duration;

use byok_integration::wait_until;
use common::*;
use uuid::Uuid;

fn add_batch(env: &mut Env, n: u64, offset: u64) -> Vec<Uuid> {
    let mut db = env.db();
    (offset..offset + n)
        .map(|i| {
            let vendor = if i % 3 == 0 { "anthropic" } else { "openai" };
            let key = env.key(vendor, "mockslow", i);
            add_key(&mut db, Uuid::new_v4(), vendor, &key)
        })
        .collect()
}

fn settled_count(env: &Env, ids: &[Uuid]) -> i64 {
    env.db()
        .query_one(
            "SELECT count(*) FROM byok.keys WHERE id = ANY($1) AND status <> 'pending'",
            &[&ids],
        )
        .unwrap()
        .get(0)
}

fn assert_all_once(env: &Env, ids: &[Uuid]) {
    let mut db = env.db();
    wait_settled(&mut db, ids, Duration::from_secs(90));
    for id in ids {
        assert_eq!(status(&mut db, *id).0, "active", "key {id}");
        assert_eq!(
            verdicts(&mut db, *id),
            1,
            "key {id} finished more than once"
        );
    }
}

#[test]
fn survives_postgres_restart_and_terminated_backends() {
    let mut env = setup(
        &[],
        MockOptions {
            slow: Duration::from_millis(300),
            ..Default::default()
        },
    );
    let first = add_batch(&mut env, 60, 0);
    let sc = env.sidecar("survivor", &[("--concurrency", "4")]);
    wait_until("some keys validated", Duration::from_secs(30), || {
        settled_count(&env, &first) >= 8
    });
    env.cluster.restart();
    assert!(
        settled_count(&env, &first) < 60,
        "the restart came too late to test anything"
    );
    assert_all_once(&env, &first);

    let second = add_batch(&mut env, 30, 1000);
    wait_until(
        "some keys of the second batch validated",
        Duration::from_secs(30),
        || settled_count(&env, &second) >= 4,
    );
    let killed: i64 = env
        .db()
        .query_one("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'sidecar') t", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        killed, 2,
        "the sidecar holds exactly two connections (claims, verdicts)"
    );
    assert_all_once(&env, &second);
    assert!(
        sc.metric("byok_sidecar_db_reconnects_total") >= 2.0,
        "{}",
        sc.metrics_text()
    );
    assert_eq!(sc.metric("byok_sidecar_db_connected"), 1.0);
    env.mock.assert_no_malformed();
    env.assert_no_key_in_logs();
}
