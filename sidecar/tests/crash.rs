//! kill -9 mid-job: the dead sidecar's leases run out, another sidecar
//! reclaims the jobs and finishes each exactly once.

mod common;

use std::time::Duration;

use byok_integration::wait_until;
use common::*;
use uuid::Uuid;

#[test]
fn kill_9_mid_job_is_reclaimed_after_the_lease_and_finished_once() {
    let mut env = setup(
        &[],
        MockOptions {
            slow: Duration::from_millis(4000),
            ..Default::default()
        },
    );
    let mut db = env.db();
    let mut ids = Vec::new();
    for i in 0..10u64 {
        let vendor = if i % 2 == 0 { "anthropic" } else { "openai" };
        let key = env.key(vendor, "mockslow", i);
        ids.push(add_key(&mut db, Uuid::new_v4(), vendor, &key));
    }
    let flags = [
        ("--request-timeout", "5"),
        ("--lease-seconds", "10"),
        ("--concurrency", "16"),
    ];
    let mut a = env.sidecar("doomed", &flags);
    wait_until(
        "all jobs leased by the doomed sidecar",
        Duration::from_secs(20),
        || {
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM byok.jobs WHERE leased_by = 'doomed'",
                    &[],
                )
                .unwrap()
                .get(0);
            n == 10
        },
    );
    std::thread::sleep(Duration::from_millis(500)); // vendor calls in flight
    a.kill9();
    assert!(
        !a.log_text().contains("verdict recorded"),
        "the doomed sidecar finished a job before kill -9"
    );
    let pending: i64 = db
        .query_one(
            "SELECT count(*) FROM byok.keys WHERE id = ANY($1) AND status = 'pending'",
            &[&ids],
        )
        .unwrap()
        .get(0);
    assert_eq!(pending, 10);

    let b = env.sidecar("heir", &flags);
    wait_settled(&mut db, &ids, Duration::from_secs(60));
    for id in &ids {
        assert_eq!(status(&mut db, *id).0, "active");
        assert_eq!(
            verdicts(&mut db, *id),
            1,
            "key {id} finished more than once"
        );
    }
    let left: i64 = db
        .query_one("SELECT count(*) FROM byok.jobs", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(
        b.metric("byok_sidecar_jobs_total{vendor=\"anthropic\",outcome=\"valid\"}"),
        5.0
    );
    assert_eq!(
        b.metric("byok_sidecar_jobs_total{vendor=\"openai\",outcome=\"valid\"}"),
        5.0
    );
    env.mock.assert_no_malformed();
    env.assert_no_key_in_logs();
}
