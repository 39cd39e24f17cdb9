//! Keys that stop working, end to end: the real `byok-sidecar` queues the
//! scheduled re-checks itself (`--revalidate-every`), records the vendor
//! account the mock names in its headers, and a key the mock starts to
//! refuse after it was active becomes `invalid`, erased and audited; an
//! outage during a re-check never demotes an active key.

mod common;

use std::time::Duration;

use byok_integration::postgres::Client;
use byok_integration::wait_until;
use common::*;
use uuid::Uuid;

fn account(db: &mut Client, id: Uuid) -> Option<String> {
    db.query_one("SELECT vendor_account FROM byok.keys WHERE id = $1", &[&id])
        .unwrap()
        .get(0)
}

/// Makes the key look last checked a day and an hour ago.
fn make_due(db: &mut Client, id: Uuid) {
    db.execute(
        "UPDATE byok.keys SET checked_at = clock_timestamp() - interval '25 hours' WHERE id = $1",
        &[&id],
    )
    .unwrap();
}

fn checks(db: &mut Client, id: Uuid, outcome: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM byok.audit_log WHERE action = 'validate' AND key_id = $1 AND outcome = $2",
        &[&id, &outcome],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_key_the_vendor_starts_refusing_is_found_by_the_scheduled_recheck() {
    let mut env = setup(&[], MockOptions::default());
    let mut db = env.db();
    let ws = Uuid::new_v4();
    let ka = env.key("anthropic", "", 1);
    let ko = env.key("openai", "", 2);
    env.mock
        .script_key("openai", &ko[ko.len() - 8..], false, Some("org-o/proj_1"));
    let a = add_key(&mut db, ws, "anthropic", &ka);
    let o = add_key(&mut db, ws, "openai", &ko);
    let _sc = env.sidecar("s1", &[("--revalidate-every", "0.3")]);
    wait_settled(&mut db, &[a, o], Duration::from_secs(30));
    assert_eq!(status(&mut db, a).0, "active");
    assert_eq!(account(&mut db, a).as_deref(), Some("org-mock-default"));
    assert_eq!(account(&mut db, o).as_deref(), Some("org-o/proj_1"));

    // A vendor outage during the re-check: the key stays active.
    env.mock.outage("anthropic", 503, 3600.0);
    make_due(&mut db, a);
    wait_until(
        "the re-check meets the outage",
        Duration::from_secs(30),
        || {
            db.query_one(
            "SELECT count(*) FROM byok.audit_log WHERE action = 'revalidate' AND outcome = 'scheduled' AND key_id = $1",
            &[&a],
        )
        .unwrap()
        .get::<_, i64>(0)
            >= 1
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&mut db, a).0, "active", "an outage never demotes");
    env.mock.outage("anthropic", 503, 0.0);
    // Let the deferred re-check finish before scripting the refusal.
    wait_until("the re-check finishes", Duration::from_secs(60), || {
        db.query_one("SELECT count(*) FROM byok.jobs WHERE key_id = $1", &[&a])
            .unwrap()
            .get::<_, i64>(0)
            == 0
    });
    assert_eq!(status(&mut db, a).0, "active");

    // The key is revoked in the vendor's console.
    env.mock
        .script_key("anthropic", &ka[ka.len() - 8..], true, None);
    make_due(&mut db, a);
    wait_until(
        "the revoked key is found invalid",
        Duration::from_secs(30),
        || status(&mut db, a).0 == "invalid",
    );
    let why: String = db
        .query_one(
            "SELECT detail FROM byok.audit_log WHERE action = 'validate' AND key_id = $1 AND outcome = 'invalid'",
            &[&a],
        )
        .unwrap()
        .get(0);
    assert!(why.starts_with("http 401"), "the audit row says why: {why}");
    let erased: bool = db
        .query_one(
            "SELECT ciphertext IS NULL FROM byok.keys WHERE id = $1",
            &[&a],
        )
        .unwrap()
        .get(0);
    assert!(erased);
    assert_eq!(
        checks(&mut db, a, "invalid"),
        1,
        "the audit trail says when and why"
    );
    assert_eq!(status(&mut db, o).0, "active", "the other key is untouched");
    env.mock.assert_no_malformed();
    env.assert_no_key_in_logs();
}
