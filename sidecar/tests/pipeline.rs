//! The pipeline under load, end to end: a deep queue against a vendor
//! answering in 150 ms is drained with more calls in flight than the old
//! fixed default of 8 (the limiter grew), never more than the ceiling, and
//! every verdict is recorded exactly once (written in batches by
//! `finish_jobs`). Behaviour only: speed is the benchmark's business
//! (bench/pipeline.rs), never asserted here.

mod common;

use std::time::Duration;

use common::*;
use uuid::Uuid;

/// The old fixed `--concurrency` default.
const OLD_DEFAULT: u64 = 8;

/// Adds `n` OpenAI keys in one transaction; returns their ids.
fn add_keys(env: &mut Env, n: u64, seed: u64) -> Vec<Uuid> {
    let keys: Vec<String> = (0..n).map(|i| env.key("openai", "", seed + i)).collect();
    let mut db = env.db();
    let mut tx = db.transaction().unwrap();
    let ids = keys
        .iter()
        .map(|k| add_key_tx(&mut tx, Uuid::new_v4(), k))
        .collect();
    tx.commit().unwrap();
    ids
}

fn add_key_tx(tx: &mut byok_integration::postgres::Transaction<'_>, ws: Uuid, key: &str) -> Uuid {
    tx.query_one(
        "SELECT (byok.add_key(workspace_id => $1, vendor => 'openai', api_key => $2)).id",
        &[&ws, &key],
    )
    .unwrap()
    .get(0)
}

/// Every key active, with exactly one verdict in the audit log.
fn assert_all_active_once(env: &Env, ids: &[Uuid]) {
    let mut db = env.db();
    let r = db
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'active'),
                    (SELECT count(*) FROM byok.audit_log a
                      WHERE a.action = 'validate' AND a.key_id = ANY($1))
               FROM byok.keys WHERE id = ANY($1)",
            &[&ids],
        )
        .unwrap();
    let n = ids.len() as i64;
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1)),
        (n, n),
        "(active, verdicts) of {n} keys"
    );
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM byok.jobs WHERE key_id = ANY($1)",
            &[&ids],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "jobs left in the queue");
}

#[test]
fn a_deep_queue_against_a_slow_vendor_runs_above_the_old_default_within_the_ceiling() {
    let mut env = setup(&[], MockOptions::default());
    env.mock.set_latency(150);
    let ids = add_keys(&mut env, 2000, 0);
    let sc = env.sidecar(
        "deep",
        &[("--request-timeout", "10"), ("--lease-seconds", "60")],
    );
    let mut db = env.db();
    wait_settled(&mut db, &ids, Duration::from_secs(300));
    assert_all_active_once(&env, &ids);

    let peak = env.mock.stats()["peak_in_flight"].as_u64().unwrap();
    assert!(
        peak > OLD_DEFAULT && peak <= 256,
        "peak calls in flight at the vendor: {peak}"
    );
    let limit = sc.metric("byok_sidecar_concurrency_limit{vendor=\"openai\"}");
    assert!(
        limit > OLD_DEFAULT as f64 && limit <= 256.0,
        "the limiter's limit: {limit}"
    );
    env.mock.assert_no_malformed();
    env.assert_no_key_in_logs();
}

#[test]
fn the_ceiling_caps_calls_in_flight() {
    let mut env = setup(&[], MockOptions::default());
    env.mock.set_latency(150);
    let ids = add_keys(&mut env, 400, 10_000);
    let sc = env.sidecar(
        "capped",
        &[
            ("--max-concurrency", "12"),
            ("--request-timeout", "10"),
            ("--lease-seconds", "60"),
        ],
    );
    let mut db = env.db();
    wait_settled(&mut db, &ids, Duration::from_secs(300));
    assert_all_active_once(&env, &ids);
    let peak = env.mock.stats()["peak_in_flight"].as_u64().unwrap();
    assert!(
        peak > OLD_DEFAULT && peak <= 12,
        "peak calls in flight: {peak}"
    );
    assert_eq!(
        sc.metric("byok_sidecar_concurrency_limit{vendor=\"openai\"}"),
        12.0
    );
}
