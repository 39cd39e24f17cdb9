//! SIGTERM: stop claiming, finish in-flight calls within the grace period,
//! hand the rest back without spending their attempt.

mod common;

use std::time::Duration;

use byok_integration::wait_until;
use common::*;
use uuid::Uuid;

#[test]
fn sigterm_finishes_in_flight_jobs_within_the_grace_period() {
    let mut env = setup(
        &[],
        MockOptions {
            slow: Duration::from_millis(2000),
            ..Default::default()
        },
    );
    let mut db = env.db();
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let key = env.key("openai", "mockslow", i);
        ids.push(add_key(&mut db, Uuid::new_v4(), "openai", &key));
    }
    let mut sc = env.sidecar("graceful", &[("--grace-period", "10")]);
    wait_until("jobs in flight", Duration::from_secs(20), || {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM byok.jobs WHERE leased_by = 'graceful'",
                &[],
            )
            .unwrap()
            .get(0);
        n == 6
    });
    let status_code = sc.terminate(Duration::from_secs(10));
    assert!(status_code.success(), "exit status {status_code:?}");
    for id in &ids {
        assert_eq!(
            status(&mut db, *id).0,
            "active",
            "an in-flight job was not finished before exit"
        );
    }
    // Stopped means stopped: a new key is not validated by it.
    let late = env.key("openai", "", 99);
    let late_id = add_key(&mut db, Uuid::new_v4(), "openai", &late);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(status(&mut db, late_id).0, "pending");
    env.assert_no_key_in_logs();
}

#[test]
fn sigterm_hands_back_what_the_grace_period_cannot_finish() {
    let mut env = setup(
        &[],
        MockOptions {
            hang: Duration::from_secs(120),
            ..Default::default()
        },
    );
    let mut db = env.db();
    let mut ids = Vec::new();
    for i in 0..4u64 {
        let key = env.key("anthropic", "mockhang", i);
        ids.push(add_key(&mut db, Uuid::new_v4(), "anthropic", &key));
    }
    let flags = [
        ("--grace-period", "1"),
        ("--request-timeout", "30"),
        ("--lease-seconds", "60"),
    ];
    let mut sc = env.sidecar("impatient", &flags);
    wait_until("jobs in flight", Duration::from_secs(20), || {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM byok.jobs WHERE leased_by = 'impatient'",
                &[],
            )
            .unwrap()
            .get(0);
        n == 4
    });
    std::thread::sleep(Duration::from_millis(300));
    let code = sc.terminate(Duration::from_secs(15));
    assert!(code.success(), "exit status {code:?}");
    let rows = db
        .query("SELECT attempts, lease_token IS NULL, run_after <= now() + interval '1 second' FROM byok.jobs WHERE key_id = ANY($1)", &[&ids])
        .unwrap();
    assert_eq!(rows.len(), 4, "every job is still queued");
    for r in rows {
        assert_eq!(
            r.get::<_, i32>(0),
            0,
            "a handed-back job kept its spent attempt"
        );
        assert!(r.get::<_, bool>(1), "a handed-back job is still leased");
        assert!(
            r.get::<_, bool>(2),
            "a handed-back job is not claimable at once"
        );
    }
    for id in &ids {
        assert_eq!(status(&mut db, *id).0, "pending");
    }
    assert!(sc.log_text().contains("handed back"));
    env.assert_no_key_in_logs();
}
