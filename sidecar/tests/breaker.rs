//! A vendor outage long enough to open the breaker: no key is marked
//! invalid or loses attempts to it, the vendor is reported degraded in SQL
//! and in metrics, and the breaker closes once the vendor recovers.

mod common;

use std::time::{Duration, Instant};

use byok_integration::wait_until;
use common::*;
use uuid::Uuid;

fn vendor_state(env: &Env, vendor: &str) -> Option<String> {
    env.db()
        .query_opt(
            "SELECT state FROM byok.vendor_status WHERE vendor = $1",
            &[&vendor],
        )
        .unwrap()
        .map(|r| r.get(0))
}

#[test]
fn vendor_outage_opens_then_closes_the_breaker_without_burning_keys() {
    let mut env = setup(&["byok.max_attempts = 3"], MockOptions::default());
    env.mock.outage("anthropic", 529, 12.0);
    let outage_ends = Instant::now() + Duration::from_secs(12);
    let mut db = env.db();
    let mut anthropic = Vec::new();
    for i in 0..8u64 {
        let key = env.key("anthropic", "", i);
        anthropic.push(add_key(&mut db, Uuid::new_v4(), "anthropic", &key));
    }
    let mut openai = Vec::new();
    for i in 0..2u64 {
        let key = env.key("openai", "", 100 + i);
        openai.push(add_key(&mut db, Uuid::new_v4(), "openai", &key));
    }
    let sc = env.sidecar(
        "breaker",
        &[
            ("--breaker-workspaces", "3"),
            ("--breaker-window", "30"),
            ("--breaker-open", "3"),
            ("--request-timeout", "2"),
            ("--queue-depth-interval", "0.5"),
        ],
    );
    wait_until(
        "the anthropic breaker opens",
        Duration::from_secs(20),
        || vendor_state(&env, "anthropic").as_deref() == Some("open"),
    );
    assert_eq!(
        sc.metric("byok_sidecar_breaker_state{vendor=\"anthropic\"}"),
        2.0
    );
    let detail: String = db
        .query_one(
            "SELECT detail FROM byok.vendor_status WHERE vendor = 'anthropic'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(detail.contains("workspace"), "{detail}");
    // The other vendor is unaffected.
    wait_settled(&mut db, &openai, Duration::from_secs(20));

    // Throughout the outage: nothing invalid or given up, and attempts are
    // not spent while the breaker is open (3 allowed; without the breaker
    // the retries would exhaust them within the outage).
    let mut most_waiting = 0.0f64;
    while Instant::now() < outage_ends {
        most_waiting = most_waiting
            .max(sc.metric("byok_sidecar_queue_depth{vendor=\"anthropic\",state=\"waiting\"}"));
        let bad: i64 = db
            .query_one(
                "SELECT count(*) FROM byok.keys WHERE id = ANY($1) AND status <> 'pending'",
                &[&anthropic],
            )
            .unwrap()
            .get(0);
        assert_eq!(bad, 0, "a key was judged during the vendor outage");
        let max_attempts: Option<i32> = db
            .query_one("SELECT max(attempts) FROM byok.jobs", &[])
            .unwrap()
            .get(0);
        assert!(
            max_attempts.unwrap_or(0) <= 2,
            "attempts burned during the outage: {max_attempts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        most_waiting >= 1.0,
        "deferred jobs never showed in the queue-depth gauge"
    );
    wait_until(
        "the anthropic breaker closes",
        Duration::from_secs(30),
        || vendor_state(&env, "anthropic").as_deref() == Some("closed"),
    );
    wait_settled(&mut db, &anthropic, Duration::from_secs(60));
    for id in anthropic.iter().chain(&openai) {
        assert_eq!(status(&mut db, *id).0, "active", "key {id}");
        assert_eq!(verdicts(&mut db, *id), 1);
    }
    assert_eq!(
        sc.metric("byok_sidecar_breaker_state{vendor=\"anthropic\"}"),
        0.0
    );
    assert!(
        sc.metric("byok_sidecar_jobs_total{vendor=\"anthropic\",outcome=\"deferred\"}") >= 1.0,
        "{}",
        sc.metrics_text()
    );
    let stats = env.mock.stats();
    let during = stats["requests"]["anthropic"]["outage"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        during < 20,
        "the vendor was hammered during its outage: {during} calls"
    );
    env.mock.assert_no_malformed();
    env.assert_no_key_in_logs();
}
