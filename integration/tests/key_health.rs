//! Keys that stop working (lifecycle issue): failure reports from the app,
//! key status events on `byok_key_events`, scheduled revalidation, the
//! vendor account behind a key, and `byok.key_health`. Each test runs on a
//! real cluster with the installed extension, as the documented roles.

mod common;

use byok_integration::postgres::fallible_iterator::FallibleIterator;
use byok_integration::postgres::Client;
use byok_integration::{sample_key, Cluster, ClusterOptions};
use common::*;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

fn cluster() -> Cluster {
    let c = Cluster::start(ClusterOptions::default());
    create_login(&c, "sidecar", &["byok_worker"]);
    create_login(&c, "backend", &["byok_consumer"]);
    create_login(&c, "stranger", &[]);
    c
}

/// Claim every ready job as the sidecar and finish it with `outcome`,
/// naming `account` as the vendor account; returns the key ids finished.
fn finish_ready(c: &Cluster, outcome: &str, account: Option<&str>) -> Vec<Uuid> {
    let mut w = c.client_as("sidecar");
    let claims = claim_jobs(&mut w, "sidecar-1", 100, 60).unwrap_or_else(|e| c.fail("claim", &e));
    for cl in &claims {
        w.query_one(
            "SELECT byok.finish_job(job_id => $1, lease_token => $2, outcome => $3, \
                                    http_status => $4, vendor_account => $5)",
            &[
                &cl.job_id,
                &cl.lease_token,
                &outcome,
                &Some(200i32),
                &account,
            ],
        )
        .unwrap_or_else(|e| c.fail("finish_job", &e));
    }
    claims.iter().map(|cl| cl.key_id).collect()
}

fn add_active(c: &Cluster, ws: Uuid, vendor: &str, seed: u64, account: Option<&str>) -> Uuid {
    let info = add_key(&mut c.client(), ws, vendor, &sample_key(vendor, seed), None)
        .unwrap_or_else(|e| c.fail("add_key", &e));
    assert_eq!(finish_ready(c, "valid", account), vec![info.id]);
    info.id
}

fn status(db: &mut Client, key_id: Uuid) -> String {
    db.query_one("SELECT status FROM byok.keys WHERE id = $1", &[&key_id])
        .unwrap()
        .get(0)
}

fn jobs_for(db: &mut Client, key_id: Uuid) -> i64 {
    db.query_one(
        "SELECT count(*) FROM byok.jobs WHERE key_id = $1",
        &[&key_id],
    )
    .unwrap()
    .get(0)
}

fn report(
    db: &mut Client,
    ws: Uuid,
    vendor: &str,
    http_status: Option<i32>,
    detail: Option<&str>,
) -> Result<KeyInfo, byok_integration::postgres::Error> {
    db.query_one(
        &format!(
            "SELECT {KEY_INFO} FROM byok.report_key_failure(workspace_id => $1, vendor => $2, \
                                                           http_status => $3, detail => $4)"
        ),
        &[&ws, &vendor, &http_status, &detail],
    )
    .map(|r| KeyInfo::from_row(&r))
}

/// Make a key look last checked `hours` ago (superuser; RLS is bypassed).
fn backdate_check(db: &mut Client, key_id: Uuid, hours: i32) {
    db.execute(
        "UPDATE byok.keys SET checked_at = clock_timestamp() - make_interval(hours => $2) \
          WHERE id = $1",
        &[&key_id, &hours],
    )
    .unwrap();
}

fn enqueue(c: &Cluster) -> i32 {
    c.client_as("sidecar")
        .query_one(
            "SELECT byok.enqueue_due_revalidations(max_keys => 100)",
            &[],
        )
        .unwrap_or_else(|e| c.fail("enqueue_due_revalidations", &e))
        .get(0)
}

#[test]
fn a_failure_report_is_audited_and_requeues_the_key_without_demoting_it() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 7);
    let info = add_key(&mut c.client(), ws, "openai", &key, None).unwrap();
    assert_eq!(finish_ready(&c, "valid", None), vec![info.id]);
    let mut backend = c.client_as("backend");
    let mut db = c.client();

    // The agent's body echoes the key and runs long: redacted, then cut.
    let body = format!("Incorrect API key provided: {key}. {}", "x".repeat(2000));
    let got = report(&mut backend, ws, "OpenAI", Some(401), Some(&body))
        .unwrap_or_else(|e| c.fail("report_key_failure", &e));
    assert_eq!(got.id, info.id);
    assert_eq!(got.status, "active", "a report alone never demotes");
    assert_eq!(status(&mut db, info.id), "active");
    assert_eq!(use_key(&mut backend, ws, "openai").unwrap(), key);
    assert_eq!(
        jobs_for(&mut db, info.id),
        1,
        "the key is re-checked at once"
    );

    let row = db
        .query_one(
            "SELECT actor_role, outcome, detail FROM byok.audit_log \
              WHERE action = 'report_failure' AND key_id = $1",
            &[&info.id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "backend");
    assert_eq!(row.get::<_, String>(1), "http 401");
    let detail: String = row.get(2);
    assert!(
        detail.starts_with("Incorrect API key provided: "),
        "{detail}"
    );
    assert!(detail.chars().count() <= 500, "detail is cut to 500");
    assert_no_key_material(&detail, &[&key], "the report's audit detail");

    // A second report while the check is queued adds no second job.
    report(&mut backend, ws, "openai", Some(403), None).unwrap();
    assert_eq!(jobs_for(&mut db, info.id), 1);

    // The vendor's own answer to the sidecar is what demotes it.
    assert_eq!(finish_ready(&c, "invalid", None), vec![info.id]);
    assert_eq!(status(&mut db, info.id), "invalid");
    assert_eq!(ciphertext(&mut db, info.id), None);
    expect_state(
        use_key(&mut backend, ws, "openai"),
        "P0002",
        "use after invalid",
    );
    expect_state(
        report(&mut backend, ws, "openai", Some(401), None),
        "P0002",
        "report without an active key",
    );
}

#[test]
fn failure_reports_check_their_arguments_and_caller() {
    let c = cluster();
    let ws = Uuid::new_v4();
    add_active(&c, ws, "anthropic", 3, None);
    let mut backend = c.client_as("backend");
    for s in [200, 400, 404, 429, 500, 503] {
        let e = expect_state(
            report(&mut backend, ws, "anthropic", Some(s), None),
            "22023",
            &format!("http_status {s}"),
        );
        assert!(
            error_text(&e).contains("Report only 401 and 403"),
            "hint: {}",
            error_text(&e)
        );
    }
    expect_state(
        report(&mut backend, ws, "anthropic", None, None),
        "22004",
        "NULL status",
    );
    expect_state(
        report(&mut backend, ws, "gemini", Some(401), None),
        "22023",
        "vendor",
    );
    // A role without byok_consumer: not granted (42501 from Postgres), and
    // the function's own check for one granted EXECUTE by mistake.
    let mut stranger = c.client_as("stranger");
    expect_state(
        report(&mut stranger, ws, "anthropic", Some(401), None),
        "42501",
        "stranger",
    );
    c.client()
        .batch_execute(
            "GRANT USAGE ON SCHEMA byok TO stranger; \
             GRANT EXECUTE ON FUNCTION byok.report_key_failure(uuid, text, integer, text) TO stranger",
        )
        .unwrap();
    let e = expect_state(
        report(&mut stranger, ws, "anthropic", Some(401), None),
        "42501",
        "stranger granted EXECUTE",
    );
    assert!(error_text(&e).contains("byok_consumer"));
    let audited: i64 = c
        .client()
        .query_one(
            "SELECT count(*) FROM byok.audit_log WHERE action = 'report_failure'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, 0, "refused reports leave no audit row");
}

/// Read `byok_key_events` payloads until the fence notification arrives.
fn events_until_fence(listener: &mut Client) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(15));
    loop {
        match it.next() {
            Ok(Some(n)) if n.channel() == "test_fence" => return got,
            Ok(Some(n)) if n.channel() == "byok_key_events" => {
                got.push(serde_json::from_str(n.payload()).expect("payload is JSON"))
            }
            Ok(Some(_)) => {}
            Err(e) => panic!("notification stream failed: {e:?}"),
            Ok(None) => panic!("the fence notification did not arrive within 15 s"),
        }
    }
}

#[test]
fn key_status_changes_are_notified_with_ids_and_statuses_only() {
    let c = cluster();
    let mut listener = c.client();
    listener
        .batch_execute("LISTEN byok_key_events; LISTEN test_fence")
        .unwrap();
    let mut db = c.client();
    let ws = Uuid::new_v4();
    let k1 = sample_key("anthropic", 11);
    let k2 = sample_key("anthropic", 12);
    let first = add_key(&mut db, ws, "anthropic", &k1, Some("label-not-in-events")).unwrap();
    finish_ready(&c, "valid", Some("org-a")); // pending → active
    let second = add_key(&mut db, ws, "anthropic", &k2, None).unwrap();
    finish_ready(&c, "unverified", None); // pending → unverified
    revalidate_key(&mut db, second.id).unwrap(); // → pending: not an event
    finish_ready(&c, "valid", None); // → active, first → revoked (rotated)
    revoke_key(&mut db, second.id, None).unwrap(); // → revoked
    db.batch_execute("NOTIFY test_fence").unwrap();

    let events = events_until_fence(&mut listener);
    let seen: Vec<(Uuid, String, Option<String>)> = events
        .iter()
        .map(|e| {
            let fields: Vec<&String> = e.as_object().unwrap().keys().collect();
            assert_eq!(
                fields,
                [
                    "key_id",
                    "previous_status",
                    "status",
                    "vendor",
                    "workspace_id"
                ],
                "documented fields only: {e}"
            );
            assert_eq!(e["workspace_id"], ws.to_string());
            assert_eq!(e["vendor"], "anthropic");
            (
                e["key_id"].as_str().unwrap().parse().unwrap(),
                e["status"].as_str().unwrap().to_string(),
                e["previous_status"].as_str().map(str::to_string),
            )
        })
        .collect();
    let ev = |id: Uuid, s: &str, p: &str| (id, s.to_string(), Some(p.to_string()));
    assert_eq!(
        seen,
        vec![
            ev(first.id, "active", "pending"),
            ev(second.id, "unverified", "pending"),
            ev(first.id, "revoked", "active"),
            ev(second.id, "active", "pending"),
            ev(second.id, "revoked", "active"),
        ]
    );
    for e in &events {
        let text = e.to_string();
        assert_no_key_material(&text, &[&k1, &k2], "a key event");
        assert!(
            !text.contains(&mask(&k1)) && !text.contains(&mask(&k2)),
            "no mask: {text}"
        );
        assert!(!text.contains("label-not-in-events") && !text.contains("org-a"));
    }
}

#[test]
fn due_active_keys_are_rechecked_and_only_the_vendors_refusal_demotes_them() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let mut db = c.client();
    let due = add_active(&c, ws, "anthropic", 21, None);
    let fresh = add_active(&c, ws, "openai", 22, None);
    assert_eq!(enqueue(&c), 0, "nothing is due right after validation");

    backdate_check(&mut db, due, 25);
    assert_eq!(enqueue(&c), 1, "one key checked more than 24 h ago");
    assert_eq!(
        enqueue(&c),
        0,
        "a key with a queued job is not queued twice"
    );
    assert_eq!(jobs_for(&mut db, fresh), 0);
    let scheduled: i64 = db
        .query_one(
            "SELECT count(*) FROM byok.audit_log WHERE action = 'revalidate' \
               AND outcome = 'scheduled' AND key_id = $1 AND actor_role = 'sidecar'",
            &[&due],
        )
        .unwrap()
        .get(0);
    assert_eq!(scheduled, 1, "the audit trail says why it was checked");

    // A transient failure keeps the key active and restarts the interval.
    assert_eq!(finish_ready(&c, "unverified", None), vec![due]);
    assert_eq!(status(&mut db, due), "active");
    assert_eq!(enqueue(&c), 0, "the unverified check counts as a check");
    // So does running out of attempts on retries.
    backdate_check(&mut db, due, 25);
    db.batch_execute("ALTER SYSTEM SET byok.max_attempts = 1")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(enqueue(&c), 1);
    finish_ready(&c, "retry", None);
    assert_eq!(
        status(&mut db, due),
        "active",
        "retries past the limit never demote"
    );
    db.batch_execute("ALTER SYSTEM RESET byok.max_attempts")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();

    // The vendor refusing it: invalid, erased, and the trail says when and why.
    backdate_check(&mut db, due, 25);
    assert_eq!(enqueue(&c), 1);
    let mut w = c.client_as("sidecar");
    let cl = claim_jobs(&mut w, "sidecar-1", 10, 60).unwrap().remove(0);
    finish_job(
        &mut w,
        cl.job_id,
        cl.lease_token,
        "invalid",
        Some("authentication_error: invalid x-api-key"),
        Some(401),
        None,
    )
    .unwrap();
    assert_eq!(status(&mut db, due), "invalid");
    assert_eq!(ciphertext(&mut db, due), None);
    let row = db
        .query_one(
            "SELECT at, detail FROM byok.audit_log WHERE action = 'validate' AND key_id = $1 \
               AND outcome = 'invalid'",
            &[&due],
        )
        .unwrap();
    let at: SystemTime = row.get(0);
    assert!(at.elapsed().unwrap() < Duration::from_secs(60));
    assert_eq!(
        row.get::<_, String>(1),
        "http 401 authentication_error: invalid x-api-key"
    );

    // byok.revalidate_interval: a shorter interval makes the fresh key due;
    // 0 turns the schedule off.
    backdate_check(&mut db, fresh, 2);
    assert_eq!(enqueue(&c), 0);
    db.batch_execute("ALTER ROLE sidecar SET byok.revalidate_interval = '1h'")
        .unwrap();
    let mut w = c.client_as("sidecar");
    assert_eq!(
        w.query_one("SELECT byok.enqueue_due_revalidations()", &[])
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    finish_ready(&c, "valid", None);
    backdate_check(&mut db, fresh, 2);
    db.batch_execute("ALTER ROLE sidecar SET byok.revalidate_interval = 0")
        .unwrap();
    let mut w = c.client_as("sidecar");
    assert_eq!(
        w.query_one("SELECT byok.enqueue_due_revalidations()", &[])
            .unwrap()
            .get::<_, i32>(0),
        0
    );
    expect_state(
        w.query_one("SELECT byok.enqueue_due_revalidations(0)", &[]),
        "22023",
        "max_keys 0",
    );
    expect_state(
        c.client_as("backend")
            .query_one("SELECT byok.enqueue_due_revalidations()", &[]),
        "42501",
        "the consumer may not schedule",
    );
}

#[test]
fn a_replacement_key_from_another_vendor_account_is_flagged_not_refused() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let mut db = c.client();
    let first = add_active(&c, ws, "anthropic", 31, Some("org-aaaa"));
    let listed = db
        .query_one(
            "SELECT vendor_account, status_detail FROM byok.list_keys(workspace_id => $1) WHERE id = $2",
            &[&ws, &first],
        )
        .unwrap();
    assert_eq!(
        listed.get::<_, Option<String>>(0).as_deref(),
        Some("org-aaaa")
    );

    // Same account: an ordinary rotation.
    let second = add_active(&c, ws, "anthropic", 32, Some("org-aaaa"));
    let rotate: String = db
        .query_one(
            "SELECT outcome FROM byok.audit_log WHERE action = 'rotate' AND key_id = $1",
            &[&second],
        )
        .unwrap()
        .get(0);
    assert_eq!(rotate, "active");

    // Another account: activated all the same, and flagged.
    let third = add_active(&c, ws, "anthropic", 33, Some("org-bbbb"));
    assert_eq!(status(&mut db, third), "active");
    assert_eq!(status(&mut db, second), "revoked");
    let row = db
        .query_one(
            "SELECT vendor_account, status_detail FROM byok.list_keys(workspace_id => $1) WHERE id = $2",
            &[&ws, &third],
        )
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("org-bbbb"));
    let detail: String = row.get(1);
    assert!(
        detail.contains("vendor account changed: org-bbbb replaces key")
            && detail.contains("of account org-aaaa"),
        "{detail}"
    );
    let audit = db
        .query_one(
            "SELECT outcome, detail FROM byok.audit_log WHERE action = 'rotate' AND key_id = $1",
            &[&third],
        )
        .unwrap();
    assert_eq!(audit.get::<_, String>(0), "account_changed");
    assert!(audit.get::<_, String>(1).contains("org-aaaa"));

    // A check that names no account keeps the one recorded.
    db.query_one("SELECT byok.revalidate_key($1)", &[&third])
        .unwrap();
    finish_ready(&c, "valid", None);
    let acct: Option<String> = db
        .query_one(
            "SELECT vendor_account FROM byok.keys WHERE id = $1",
            &[&third],
        )
        .unwrap()
        .get(0);
    assert_eq!(acct.as_deref(), Some("org-bbbb"));

    // An 0.1.0 sidecar's positional six-argument call still works.
    db.query_one("SELECT byok.revalidate_key($1)", &[&third])
        .unwrap();
    let mut w = c.client_as("sidecar");
    let cl = claim_jobs(&mut w, "old-sidecar", 10, 60).unwrap().remove(0);
    let st: String = w
        .query_one(
            "SELECT byok.finish_job($1, $2, $3, $4, $5, $6)",
            &[
                &cl.job_id,
                &cl.lease_token,
                &"valid",
                &None::<String>,
                &Some(200i32),
                &None::<i32>,
            ],
        )
        .unwrap()
        .get(0);
    assert_eq!(st, "active");

    // vendor_account is bounded like any caller text.
    let fourth = add_key(&mut db, ws, "anthropic", &sample_key("anthropic", 34), None).unwrap();
    let cl = claim_jobs(&mut w, "sidecar-1", 10, 60).unwrap().remove(0);
    assert_eq!(cl.key_id, fourth.id);
    expect_state(
        w.query_one(
            "SELECT byok.finish_job(job_id => $1, lease_token => $2, outcome => 'valid', vendor_account => $3)",
            &[&cl.job_id, &cl.lease_token, &"o".repeat(201)],
        ),
        "22023",
        "vendor_account of 201 characters",
    );
}

#[test]
fn key_health_reports_checks_use_and_idle_keys() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let mut db = c.client();
    let active = add_active(&c, ws, "anthropic", 41, Some("org-h"));
    let pending = add_key(&mut db, ws, "openai", &sample_key("openai", 42), None)
        .unwrap()
        .id;
    let health = |db: &mut Client| {
        db.query(
            "SELECT key_id, vendor, masked, status, vendor_account, last_checked_at, last_outcome, \
                    next_check_due, last_used_at, idle \
               FROM byok.key_health(workspace_id => $1)",
            &[&ws],
        )
        .unwrap_or_else(|e| c.fail("key_health", &e))
    };
    let rows = health(&mut db);
    assert_eq!(rows.len(), 2);
    let a = rows.iter().find(|r| r.get::<_, Uuid>(0) == active).unwrap();
    assert_eq!(a.get::<_, String>(3), "active");
    assert_eq!(a.get::<_, Option<String>>(4).as_deref(), Some("org-h"));
    assert_eq!(a.get::<_, Option<String>>(6).as_deref(), Some("valid"));
    let checked: SystemTime = a.get(5);
    let due: SystemTime = a.get(7);
    assert_eq!(
        due.duration_since(checked).unwrap(),
        Duration::from_secs(86_400)
    );
    assert_eq!(a.get::<_, Option<SystemTime>>(8), None, "never used");
    assert!(!a.get::<_, bool>(9), "just validated: not idle");
    let p = rows
        .iter()
        .find(|r| r.get::<_, Uuid>(0) == pending)
        .unwrap();
    assert_eq!(p.get::<_, Option<String>>(6), None, "not checked yet");
    assert!(
        p.get::<_, Option<SystemTime>>(7).is_some(),
        "its queued job is the next check"
    );

    // Use sets last_used_at; a key unused for 90 days is idle.
    use_key(&mut c.client_as("backend"), ws, "anthropic").unwrap();
    let used: Option<SystemTime> = health(&mut db)
        .iter()
        .find(|r| r.get::<_, Uuid>(0) == active)
        .unwrap()
        .get(8);
    assert!(used.unwrap().elapsed().unwrap() < Duration::from_secs(60));
    // The use is counted in shared memory until the worker flushes it into
    // byok.key_usage and keys.last_used_at (byok.usage_flush_interval).
    byok_integration::wait_until("the use is flushed", Duration::from_secs(60), || {
        db.query_one(
            "SELECT count(*) = 0 FROM byok.key_usage_live WHERE key_id = $1",
            &[&active],
        )
        .unwrap()
        .get(0)
    });
    db.execute(
        "UPDATE byok.keys SET last_used_at = clock_timestamp() - interval '91 days' WHERE id = $1",
        &[&active],
    )
    .unwrap();
    db.execute(
        "UPDATE byok.key_usage SET last_used_at = last_used_at - interval '91 days',
                                   hour = hour - interval '91 days' WHERE key_id = $1",
        &[&active],
    )
    .unwrap();
    let idle = |db: &mut Client| -> bool {
        health(db)
            .iter()
            .find(|r| r.get::<_, Uuid>(0) == active)
            .unwrap()
            .get(9)
    };
    assert!(idle(&mut db));
    db.batch_execute("SET byok.idle_key_days = 120").unwrap();
    assert!(!idle(&mut db), "byok.idle_key_days moves the line");
    db.batch_execute("RESET byok.idle_key_days").unwrap();
    // A new use counts at once (from shared memory, before any flush).
    use_key(&mut c.client_as("backend"), ws, "anthropic").unwrap();
    assert!(!idle(&mut db));

    expect_state(
        c.client_as("stranger")
            .query("SELECT * FROM byok.key_health($1)", &[&ws]),
        "42501",
        "a stranger",
    );
    expect_state(
        db.query("SELECT * FROM byok.key_health(NULL)", &[]),
        "22004",
        "NULL workspace",
    );
}
