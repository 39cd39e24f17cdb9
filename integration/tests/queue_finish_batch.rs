//! The validation queue (issue 11): `byok.finish_jobs`, many verdicts in one
//! call. Each verdict is exactly `finish_job`'s (lease tokens, transitions,
//! audit rows, the check columns); one bad verdict writes nothing; only
//! byok_worker may call it.

mod common;

use byok_integration::sample_key;
use common::lifecycle::*;
use common::*;
use uuid::Uuid;

const CALL: &str = "SELECT job_id, status FROM byok.finish_jobs($1, $2, $3, $4, $5, $6, $7)";

#[test]
fn a_batch_applies_each_verdict_like_finish_job() {
    let c = cluster();
    let mut su = c.client();
    let ws = Uuid::new_v4();
    let other = Uuid::new_v4();
    let valid = add_key(&mut su, ws, "openai", &sample_key("openai", 1), None).unwrap();
    let bad = add_key(&mut su, other, "openai", &sample_key("openai", 2), None).unwrap();
    let later = add_key(
        &mut su,
        other,
        "anthropic",
        &sample_key("anthropic", 3),
        None,
    )
    .unwrap();
    let stale = add_key(
        &mut su,
        Uuid::new_v4(),
        "anthropic",
        &sample_key("anthropic", 4),
        None,
    )
    .unwrap();
    let mut w = c.client_as("sidecar");
    let claims = claim_jobs(&mut w, "batch-worker", 10, 60).unwrap();
    assert_eq!(claims.len(), 4);
    let job = |id: Uuid| claims.iter().find(|cl| cl.key_id == id).unwrap();
    let order = [valid.id, bad.id, later.id, stale.id];
    let ids: Vec<i64> = order.iter().map(|&k| job(k).job_id).collect();
    let tokens: Vec<Uuid> = order
        .iter()
        .map(|&k| {
            if k == stale.id {
                Uuid::new_v4()
            } else {
                job(k).lease_token
            }
        })
        .collect();
    let outcomes = vec!["valid", "invalid", "retry", "invalid"];
    let details = vec![None, Some("401 from the vendor"), Some("503"), None::<&str>];
    let statuses = vec![Some(200), Some(401), Some(503), Some(401)];
    let retry = vec![None, None, Some(30), None::<i32>];
    let accounts = vec![Some("org-batch"), None, None, None::<&str>];
    let rows = w
        .query(
            CALL,
            &[
                &ids, &tokens, &outcomes, &details, &statuses, &retry, &accounts,
            ],
        )
        .unwrap();
    let got: std::collections::BTreeMap<i64, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got.len(), 4, "one row per job: {got:?}");
    assert_eq!(got[&job(valid.id).job_id], "active");
    assert_eq!(got[&job(bad.id).job_id], "invalid");
    assert_eq!(
        got[&job(later.id).job_id],
        "pending",
        "a retry leaves the key pending"
    );
    assert_eq!(got[&job(stale.id).job_id], "stale");

    let row = su
        .query_one(
            "SELECT status, vendor_account, check_outcome, checked_at IS NOT NULL,
                    checked_at = validated_at
               FROM byok.keys WHERE id = $1",
            &[&valid.id],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<String>>(2),
            row.get::<_, bool>(3),
            row.get::<_, bool>(4)
        ),
        (
            "active".into(),
            Some("org-batch".into()),
            Some("valid".into()),
            true,
            true
        )
    );
    assert!(
        ciphertext(&mut su, bad.id).is_none(),
        "an invalid key is erased"
    );
    assert!(
        ciphertext(&mut su, stale.id).is_some(),
        "a stale verdict changes nothing"
    );
    assert_eq!(key_by_id(&mut su, other, later.id).status, "pending");
    let audits = count(
        &mut su,
        &format!(
            "SELECT count(*) FROM byok.audit_log WHERE action = 'validate'
              AND key_id IN ('{}', '{}', '{}', '{}')",
            valid.id, bad.id, later.id, stale.id
        ),
    );
    assert_eq!(
        audits, 2,
        "one audit row per verdict that is not a retry or stale"
    );
    let requeued = count(
        &mut su,
        &format!(
            "SELECT count(*) FROM byok.jobs WHERE key_id = '{}' AND lease_token IS NULL
              AND run_after > now() + interval '20 seconds'",
            later.id
        ),
    );
    assert_eq!(requeued, 1, "the retry is rescheduled after Retry-After");
}

#[test]
fn one_bad_verdict_writes_nothing_and_arguments_are_checked() {
    let c = cluster();
    let mut su = c.client();
    let a = add_key(
        &mut su,
        Uuid::new_v4(),
        "openai",
        &sample_key("openai", 11),
        None,
    )
    .unwrap();
    let b = add_key(
        &mut su,
        Uuid::new_v4(),
        "openai",
        &sample_key("openai", 12),
        None,
    )
    .unwrap();
    let mut w = c.client_as("sidecar");
    let claims = claim_jobs(&mut w, "batch-worker", 10, 60).unwrap();
    let ids: Vec<i64> = claims.iter().map(|cl| cl.job_id).collect();
    let tokens: Vec<Uuid> = claims.iter().map(|cl| cl.lease_token).collect();
    let none_t: Option<Vec<&str>> = None;
    let none_i: Option<Vec<i32>> = None;

    let r = w.query(
        CALL,
        &[
            &ids,
            &tokens,
            &vec!["valid", "maybe"],
            &none_t,
            &none_i,
            &none_i,
            &none_t,
        ],
    );
    expect_state(r, "22023", "an unknown outcome in the batch");
    for id in [a.id, b.id] {
        let status: String = su
            .query_one("SELECT status FROM byok.keys WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        assert_eq!(status, "pending", "nothing written");
    }

    let r = w.query(
        CALL,
        &[
            &ids,
            &tokens,
            &vec!["valid"],
            &none_t,
            &none_i,
            &none_i,
            &none_t,
        ],
    );
    expect_state(r, "22023", "arrays of different lengths");
    let r = w.query(
        CALL,
        &[
            &ids,
            &tokens,
            &vec!["valid", "valid"],
            &none_t,
            &Some(vec![200]),
            &none_i,
            &none_t,
        ],
    );
    expect_state(r, "22023", "an optional array of another length");
    let r = w.query(
        CALL,
        &[
            &None::<Vec<i64>>,
            &tokens,
            &vec!["valid", "valid"],
            &none_t,
            &none_i,
            &none_i,
            &none_t,
        ],
    );
    expect_state(r, "22004", "job_ids NULL");
    let many: Vec<i64> = (0..1001).collect();
    let many_t: Vec<Uuid> = (0..1001).map(|_| Uuid::new_v4()).collect();
    let many_o: Vec<&str> = vec!["valid"; 1001];
    let r = w.query(
        CALL,
        &[&many, &many_t, &many_o, &none_t, &none_i, &none_i, &none_t],
    );
    expect_state(r, "22023", "more than 1000 verdicts");

    // Not for other roles: byok_consumer (and PUBLIC) cannot call it.
    let mut backend = c.client_as("backend");
    let r = backend.query(
        CALL,
        &[
            &ids,
            &tokens,
            &vec!["valid", "valid"],
            &none_t,
            &none_i,
            &none_i,
            &none_t,
        ],
    );
    expect_state(r, "42501", "finish_jobs as byok_consumer");

    // An empty batch is a no-op; the right one goes through.
    let empty: Vec<i64> = Vec::new();
    let rows = w
        .query(
            CALL,
            &[
                &empty,
                &Vec::<Uuid>::new(),
                &Vec::<&str>::new(),
                &none_t,
                &none_i,
                &none_i,
                &none_t,
            ],
        )
        .unwrap();
    assert!(rows.is_empty());
    let rows = w
        .query(
            CALL,
            &[
                &ids,
                &tokens,
                &vec!["valid", "valid"],
                &none_t,
                &none_i,
                &none_i,
                &none_t,
            ],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
}
