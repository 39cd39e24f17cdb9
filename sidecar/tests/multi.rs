//! Three sidecars over 1,000 jobs: every job finished exactly once, none lost.

mod common;

use std::time::Duration;

use common::*;
use uuid::Uuid;

#[test]
fn three_sidecars_finish_1000_jobs_exactly_once() {
    let mut env = setup(&[], MockOptions::default());
    let mut db = env.db();
    let mut ids = Vec::new();
    let mut tx = db.transaction().unwrap();
    for i in 0..1000u64 {
        let vendor = if i % 2 == 0 { "anthropic" } else { "openai" };
        let marker = if i % 10 == 0 { "mock401" } else { "" };
        let key = env.key(vendor, marker, i);
        let id: Uuid = tx
            .query_one(
                "SELECT (byok.add_key(workspace_id => $1, vendor => $2, api_key => $3)).id",
                &[&Uuid::new_v4(), &vendor, &key],
            )
            .unwrap()
            .get(0);
        ids.push(id);
    }
    tx.commit().unwrap();
    let sidecars: Vec<Sidecar> = ["one", "two", "three"]
        .iter()
        .map(|n| env.sidecar(n, &[("--concurrency", "8")]))
        .collect();
    wait_settled(&mut db, &ids, Duration::from_secs(240));

    let off: i64 = db
        .query_one(
            "SELECT count(*) FROM unnest($1::uuid[]) AS k(id)
              WHERE (SELECT count(*) FROM byok.audit_log a WHERE a.action = 'validate' AND a.key_id = k.id) <> 1",
            &[&ids],
        )
        .unwrap()
        .get(0);
    assert_eq!(off, 0, "keys not finished exactly once");
    let by_status: Vec<(String, i64)> = db
        .query(
            "SELECT status, count(*) FROM byok.keys WHERE id = ANY($1) GROUP BY 1 ORDER BY 1",
            &[&ids],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        by_status,
        [("active".to_owned(), 900), ("invalid".to_owned(), 100)]
    );
    let left: i64 = db
        .query_one("SELECT count(*) FROM byok.jobs", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "jobs left behind");
    let mut total = 0.0;
    for sc in &sidecars {
        let mine: f64 = ["valid", "invalid"]
            .iter()
            .flat_map(|o| {
                ["anthropic", "openai"].map(|v| {
                    sc.metric(&format!(
                        "byok_sidecar_jobs_total{{vendor=\"{v}\",outcome=\"{o}\"}}"
                    ))
                })
            })
            .sum();
        assert!(mine > 0.0, "sidecar {} did no work", sc.name);
        for v in ["anthropic", "openai"] {
            assert_eq!(
                sc.metric(&format!(
                    "byok_sidecar_jobs_total{{vendor=\"{v}\",outcome=\"stale\"}}"
                )),
                0.0,
                "{}",
                sc.name
            );
        }
        total += mine;
    }
    assert_eq!(total, 1000.0);
    env.mock.assert_no_malformed();
    env.assert_no_key_in_logs();
}
