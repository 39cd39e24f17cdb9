//! Key lifecycle (issue 2), the validation queue: leases, retries and the
//! attempt limit, and the byok_jobs notification.

mod common;

use byok_integration::postgres::fallible_iterator::FallibleIterator;
use byok_integration::postgres::Client;
use byok_integration::sample_key;
use common::lifecycle::*;
use common::*;
use std::time::Duration;
use uuid::Uuid;

#[test]
fn stale_lease_token_changes_nothing() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 1001);
    let info = add_key(&mut c.client(), ws, "anthropic", &key, None).unwrap();
    let mut w1 = c.client_as("sidecar");
    let first = claim_jobs(&mut w1, "worker-1", 1, 5).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);

    // A made-up token: 'stale', nothing changes.
    let st = finish_job(
        &mut w1,
        first[0].job_id,
        Uuid::new_v4(),
        "invalid",
        Some("x"),
        Some(401),
        None,
    )
    .unwrap();
    assert_eq!(st, "stale");
    let mut db = c.client();
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "pending");
    assert!(ciphertext(&mut db, info.id).is_some());

    // The lease (5 s) runs out; another worker takes the job over.
    let mut w2 = c.client_as("sidecar");
    let mut second = Vec::new();
    byok_integration::wait_until(
        "the expired lease makes the job claimable",
        Duration::from_secs(60),
        || {
            second = claim_jobs(&mut w2, "worker-2", 1, 60).unwrap();
            !second.is_empty()
        },
    );
    assert_eq!(second[0].job_id, first[0].job_id);
    assert_eq!(second[0].attempt, 2, "the take-over is a second attempt");
    assert_ne!(second[0].lease_token, first[0].lease_token);

    // The first worker comes back late with a verdict: stale, nothing changes.
    let st = finish_job(
        &mut w1,
        first[0].job_id,
        first[0].lease_token,
        "invalid",
        Some("late"),
        Some(401),
        None,
    )
    .unwrap();
    assert_eq!(st, "stale");
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "pending");
    assert!(
        ciphertext(&mut db, info.id).is_some(),
        "a stale 'invalid' must not erase the key"
    );
    let st = finish_job(
        &mut w1,
        first[0].job_id,
        first[0].lease_token,
        "valid",
        None,
        Some(200),
        None,
    )
    .unwrap();
    assert_eq!(st, "stale");
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "pending");

    // The current lease holder finishes.
    let st = finish_job(
        &mut w2,
        second[0].job_id,
        second[0].lease_token,
        "valid",
        None,
        Some(200),
        None,
    )
    .unwrap();
    assert_eq!(st, "active");
    // After the job is finished, any token is stale.
    let st = finish_job(
        &mut w2,
        second[0].job_id,
        second[0].lease_token,
        "invalid",
        None,
        Some(401),
        None,
    )
    .unwrap();
    assert_eq!(st, "stale");
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "active");
    assert_eq!(use_key(&mut db, ws, "anthropic").unwrap(), key);
}

/// Make every waiting job due now. Couples to the queue table's column
/// `byok.jobs.run_after` (ARCHITECTURE.md's queue), which API.md leaves
/// open; the alternative is waiting out real backoff delays.
fn make_jobs_due(db: &mut Client) {
    db.execute("UPDATE byok.jobs SET run_after = clock_timestamp() - interval '1 second' WHERE lease_token IS NULL", &[])
        .expect("make jobs due (byok.jobs.run_after, lease_token)");
}

#[test]
fn retry_reschedules_and_attempt_limit_makes_unverified() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 1101);
    let info = add_key(&mut c.client(), ws, "openai", &key, None).unwrap();
    let mut w = c.client_as("sidecar");
    let mut db = c.client();
    let limit: Option<i32> = db
        .query_one(
            "SELECT nullif(current_setting('byok.max_attempts', true), '')::int",
            &[],
        )
        .unwrap()
        .get(0);

    let mut attempts = Vec::new();
    let mut final_status = String::new();
    for i in 1..=30 {
        let cl = claim_jobs(&mut w, "w", 16, 60).unwrap();
        assert_eq!(
            cl.len(),
            1,
            "attempt {i}: the job is claimable once due: {cl:?}"
        );
        assert_eq!(cl[0].key_id, info.id);
        attempts.push(cl[0].attempt);
        let st = finish_job(
            &mut w,
            cl[0].job_id,
            cl[0].lease_token,
            "retry",
            Some("HTTP 529 overloaded_error"),
            Some(529),
            None,
        )
        .unwrap();
        if st == "unverified" {
            final_status = st;
            break;
        }
        assert_eq!(st, "pending", "a retry keeps the key pending");
        // Rescheduled for later: not claimable right now.
        assert!(
            claim_jobs(&mut w, "w", 16, 60).unwrap().is_empty(),
            "retry {i} runs later, not now"
        );
        assert_eq!(key_by_id(&mut db, ws, info.id).status, "pending");
        make_jobs_due(&mut db);
    }
    assert_eq!(
        final_status, "unverified",
        "the key becomes unverified after the attempt limit"
    );
    let expected: Vec<i32> = (1..=attempts.len() as i32).collect();
    assert_eq!(attempts, expected, "attempt counted at each claim");
    assert!(
        attempts.len() >= 2,
        "vendor trouble is retried before giving up"
    );
    if let Some(limit) = limit {
        assert_eq!(
            attempts.len() as i32,
            limit,
            "gives up exactly at byok.max_attempts"
        );
    }
    let k = key_by_id(&mut db, ws, info.id);
    assert_eq!(k.status, "unverified");
    assert!(
        ciphertext(&mut db, info.id).is_some(),
        "unverified keys are kept"
    );
    expect_state(
        use_key(&mut db, ws, "openai"),
        "P0002",
        "an unverified key is not usable",
    );
    make_jobs_due(&mut db);
    assert!(
        claim_jobs(&mut w, "w", 16, 60).unwrap().is_empty(),
        "no job left after giving up"
    );

    // It can be revalidated: a fresh job, attempts from 1 again.
    let r = revalidate_key(&mut db, info.id).unwrap();
    assert_eq!(r.id, info.id);
    let cl = claim_jobs(&mut w, "w", 16, 60).unwrap();
    assert_eq!(cl.len(), 1);
    assert_eq!(cl[0].attempt, 1);
    assert_eq!(cl[0].api_key, key);
    assert_eq!(
        finish_job(
            &mut w,
            cl[0].job_id,
            cl[0].lease_token,
            "valid",
            None,
            Some(200),
            None
        )
        .unwrap(),
        "active"
    );
    assert_eq!(use_key(&mut db, ws, "openai").unwrap(), key);
}

/// Read notifications until the fence arrives; return the payloads of
/// `channel` that came before it.
fn drain_until_fence(listener: &mut Client, channel: &str, fence: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(15));
    loop {
        match it.next() {
            Ok(Some(n)) if n.channel() == fence => return got,
            Ok(Some(n)) if n.channel() == channel => got.push(n.payload().to_string()),
            Ok(Some(_)) => {}
            Err(e) => panic!("notification stream failed: {e:?}"),
            Ok(None) => panic!("the fence notification did not arrive within 15 s"),
        }
    }
}

#[test]
fn notify_byok_jobs_once_per_enqueuing_transaction() {
    let c = cluster();
    let mut listener = c.client();
    listener
        .batch_execute("LISTEN byok_jobs; LISTEN test_fence")
        .unwrap();
    let mut db = c.client();

    // Three keys in one transaction: exactly one notification.
    let mut tx = db.transaction().unwrap();
    for i in 0..3 {
        add_key(
            &mut tx,
            Uuid::new_v4(),
            "anthropic",
            &sample_key("anthropic", 1300 + i),
            None,
        )
        .unwrap();
    }
    tx.commit().unwrap();
    db.batch_execute("NOTIFY test_fence").unwrap();
    assert_eq!(
        drain_until_fence(&mut listener, "byok_jobs", "test_fence").len(),
        1,
        "3 adds in one transaction"
    );

    // Two transactions: two notifications.
    add_key(
        &mut db,
        Uuid::new_v4(),
        "openai",
        &sample_key("openai", 1310),
        None,
    )
    .unwrap();
    add_key(
        &mut db,
        Uuid::new_v4(),
        "openai",
        &sample_key("openai", 1311),
        None,
    )
    .unwrap();
    db.batch_execute("NOTIFY test_fence").unwrap();
    assert_eq!(
        drain_until_fence(&mut listener, "byok_jobs", "test_fence").len(),
        2,
        "two separate adds"
    );

    // Rolled back, refused or read-only: none.
    let mut tx = db.transaction().unwrap();
    add_key(
        &mut tx,
        Uuid::new_v4(),
        "anthropic",
        &sample_key("anthropic", 1320),
        None,
    )
    .unwrap();
    tx.rollback().unwrap();
    let _ = add_key(&mut db, Uuid::new_v4(), "anthropic", "hello", None);
    list_keys(&mut db, Uuid::new_v4()).unwrap();
    db.batch_execute("NOTIFY test_fence").unwrap();
    assert_eq!(
        drain_until_fence(&mut listener, "byok_jobs", "test_fence").len(),
        0,
        "no enqueue, no notification"
    );

    // The notification carries no key material.
    let key = sample_key("anthropic", 1330);
    add_key(&mut db, Uuid::new_v4(), "anthropic", &key, None).unwrap();
    db.batch_execute("NOTIFY test_fence").unwrap();
    let payloads = drain_until_fence(&mut listener, "byok_jobs", "test_fence");
    assert_eq!(payloads.len(), 1);
    assert_no_key_material(&payloads.join(" "), &[&key], "the NOTIFY payload");
}
