//! Key lifecycle (issue 2), rotation and revocation: a new key supersedes
//! the old one in the same transaction, and invalid or revoked keys lose
//! their ciphertext.

mod common;

use byok_integration::{sample_key, wait_until};
use common::lifecycle::*;
use common::*;
use std::time::Duration;
use uuid::Uuid;

#[test]
fn rotation_supersedes_old_key_in_the_same_transaction() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let old_key = sample_key("anthropic", 401);
    let new_key = sample_key("anthropic", 402);
    let old = add_active(&c, ws, "anthropic", &old_key);

    let new = add_key(
        &mut c.client(),
        ws,
        "anthropic",
        &new_key,
        Some("rotated in"),
    )
    .unwrap();
    assert_eq!(new.status, "pending");
    // Until the new key validates, the old one keeps serving.
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "anthropic").unwrap(),
        old_key
    );
    let keys = list_keys(&mut c.client(), ws).unwrap();
    assert_eq!(keys.iter().filter(|k| k.status == "active").count(), 1);

    let mut w = c.client_as("sidecar");
    let claims = claim_jobs(&mut w, "sidecar-1", 16, 60).unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].key_id, new.id);
    // Still serving the old key while the new one is being validated.
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "anthropic").unwrap(),
        old_key
    );

    let mut tx = w.transaction().unwrap();
    let st = finish_job(
        &mut tx,
        claims[0].job_id,
        claims[0].lease_token,
        "valid",
        None,
        Some(200),
        None,
    )
    .unwrap();
    assert_eq!(st, "active");
    // Uncommitted: other sessions still see the old state, and the old key serves.
    {
        let mut observer = c.client();
        let seen = list_keys(&mut observer, ws).unwrap();
        assert_eq!(
            seen.iter().find(|k| k.id == old.id).unwrap().status,
            "active"
        );
        assert_eq!(
            seen.iter().find(|k| k.id == new.id).unwrap().status,
            "pending"
        );
        assert_eq!(use_key(&mut observer, ws, "anthropic").unwrap(), old_key);
    }
    tx.commit().unwrap();

    // Committed: both changes at once.
    let mut db = c.client();
    let keys = list_keys(&mut db, ws).unwrap();
    let o = keys.iter().find(|k| k.id == old.id).unwrap();
    let n = keys.iter().find(|k| k.id == new.id).unwrap();
    assert_eq!(o.status, "revoked");
    assert!(o.revoked_at.is_some());
    let detail = o.status_detail.clone().unwrap_or_default().to_lowercase();
    assert!(
        detail.contains("rotat"),
        "status_detail mentions rotation: {detail:?}"
    );
    assert_eq!(n.status, "active");
    assert_eq!(
        keys.iter().filter(|k| k.status == "active").count(),
        1,
        "only one active key"
    );
    assert_eq!(
        ciphertext(&mut db, old.id),
        None,
        "superseded key's ciphertext erased"
    );
    assert!(ciphertext(&mut db, new.id).is_some());
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "anthropic").unwrap(),
        new_key
    );

    // A third key that turns out invalid does not disturb the active one.
    let bad = add_key(
        &mut db,
        ws,
        "anthropic",
        &sample_key("anthropic", 403),
        None,
    )
    .unwrap();
    let cl = claim_jobs(&mut w, "sidecar-1", 16, 60).unwrap();
    assert_eq!(cl.len(), 1);
    assert_eq!(
        finish_job(
            &mut w,
            cl[0].job_id,
            cl[0].lease_token,
            "invalid",
            Some("invalid x-api-key"),
            Some(401),
            None
        )
        .unwrap(),
        "invalid"
    );
    assert_eq!(key_by_id(&mut db, ws, bad.id).status, "invalid");
    assert_eq!(key_by_id(&mut db, ws, new.id).status, "active");
    assert_eq!(use_key(&mut db, ws, "anthropic").unwrap(), new_key);
}

#[test]
fn invalid_and_revoked_keys_lose_their_ciphertext() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let mut db = c.client();
    let bad = add_key(
        &mut db,
        ws,
        "anthropic",
        &sample_key("anthropic", 1201),
        None,
    )
    .unwrap();
    assert!(ciphertext(&mut db, bad.id).is_some());
    let mut w = c.client_as("sidecar");
    let cl = claim_jobs(&mut w, "w", 16, 60).unwrap();
    assert_eq!(cl.len(), 1);
    let st = finish_job(
        &mut w,
        cl[0].job_id,
        cl[0].lease_token,
        "invalid",
        Some("authentication_error: invalid x-api-key"),
        Some(401),
        None,
    )
    .unwrap();
    assert_eq!(st, "invalid");
    let k = key_by_id(&mut db, ws, bad.id);
    assert_eq!(k.status, "invalid");
    assert!(k.status_detail.is_some(), "status_detail says why");
    assert_eq!(
        ciphertext(&mut db, bad.id),
        None,
        "invalid → ciphertext erased"
    );
    expect_state(
        use_key(&mut db, ws, "anthropic"),
        "P0002",
        "invalid key is not usable",
    );

    let key = sample_key("anthropic", 1202);
    let good = add_active(&c, ws, "anthropic", &key);
    let r = revoke_key(&mut db, good.id, None).unwrap();
    assert_eq!(r.status, "revoked");
    assert!(r.revoked_at.is_some());
    assert_eq!(
        r.status_detail.as_deref(),
        Some("revoked by user"),
        "the documented default reason"
    );
    assert_eq!(
        ciphertext(&mut db, good.id),
        None,
        "revoked → ciphertext erased"
    );
    expect_state(
        use_key(&mut db, ws, "anthropic"),
        "P0002",
        "revoked key is not usable",
    );

    // revoke_key with a reason, on a pending key: its job is cancelled.
    let p = add_key(&mut db, ws, "openai", &sample_key("openai", 1203), None).unwrap();
    let r = revoke_key(&mut db, p.id, Some("customer asked")).unwrap();
    assert_eq!(r.status, "revoked");
    assert!(r
        .status_detail
        .unwrap_or_default()
        .contains("customer asked"));
    assert!(
        claim_jobs(&mut w, "w", 16, 60).unwrap().is_empty(),
        "a revoked key's job is cancelled"
    );

    // revoke_workspace: every live key, returns the count.
    let ws2 = Uuid::new_v4();
    add_active(&c, ws2, "anthropic", &sample_key("anthropic", 1204));
    add_key(&mut db, ws2, "openai", &sample_key("openai", 1205), None).unwrap();
    assert_eq!(
        revoke_workspace(&mut db, ws2, Some("offboarding")).unwrap(),
        2
    );
    assert!(list_keys(&mut db, ws2)
        .unwrap()
        .iter()
        .all(|k| k.status == "revoked"));
    assert_eq!(count(&mut db, &format!("SELECT count(*) FROM byok.keys WHERE workspace_id = '{ws2}' AND ciphertext IS NOT NULL")), 0);
    assert_eq!(
        revoke_workspace(&mut db, ws2, None).unwrap(),
        0,
        "nothing left to revoke"
    );
}

/// use_key reads its row with the snapshot a query in its place would use
/// (src/active_key.rs): a revoke another session commits is seen by the
/// caller's next statement in READ COMMITTED, and not within a REPEATABLE
/// READ transaction that began before it; a revoke in the caller's own
/// transaction is seen at once, in the same statement too.
#[test]
fn use_key_sees_revocations_as_a_query_would() {
    let c = cluster();
    let vendor = "openai";
    let (ws_rc, ws_rr, ws_own) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let key_rc = sample_key(vendor, 411);
    let key_rr = sample_key(vendor, 412);
    let key_own = sample_key(vendor, 413);
    let rc = add_active(&c, ws_rc, vendor, &key_rc);
    let rr = add_active(&c, ws_rr, vendor, &key_rr);
    let own = add_active(&c, ws_own, vendor, &key_own);
    let mut revoker = c.client();
    // Until the usage worker serves the database, a use is written through
    // (keys.last_used_at), and the caller's open transaction would hold the
    // row lock the revoke waits for.
    let mut admin = c.client();
    wait_until(
        "the usage worker serves database byok",
        Duration::from_secs(60),
        || {
            admin
                .query_one(
                    "SELECT flusher_database_oid = (SELECT oid FROM pg_database WHERE datname = 'byok')
                       FROM byok.usage_status()",
                    &[],
                )
                .map(|r| r.get::<_, Option<bool>>(0) == Some(true))
                .unwrap_or(false)
        },
    );

    let mut backend = c.client_as("backend");
    let mut tx = backend.transaction().unwrap();
    assert_eq!(use_key(&mut tx, ws_rc, vendor).unwrap(), key_rc);
    revoke_key(&mut revoker, rc.id, None).unwrap();
    expect_state(
        use_key(&mut tx, ws_rc, vendor),
        "P0002",
        "READ COMMITTED: the next statement sees a committed revoke",
    );
    drop(tx);

    let mut tx = backend
        .build_transaction()
        .isolation_level(byok_integration::postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    assert_eq!(use_key(&mut tx, ws_rr, vendor).unwrap(), key_rr);
    revoke_key(&mut revoker, rr.id, None).unwrap();
    assert_eq!(
        use_key(&mut tx, ws_rr, vendor).unwrap(),
        key_rr,
        "REPEATABLE READ: the transaction's snapshot predates the revoke"
    );
    drop(tx);
    expect_state(
        use_key(&mut backend, ws_rr, vendor),
        "P0002",
        "a new transaction sees the revoke",
    );

    // The caller's own revoke, in one transaction and in one statement.
    let mut su = c.client();
    let mut tx = su.transaction().unwrap();
    assert_eq!(use_key(&mut tx, ws_own, vendor).unwrap(), key_own);
    let r = tx.query_one(
        // OFFSET 0 keeps the subquery (the revoke) running before the
        // outer target list (use_key) in the same statement.
        "SELECT r.status, byok.use_key($2, 'openai')
           FROM (SELECT (byok.revoke_key($1)).status OFFSET 0) r",
        &[&own.id, &ws_own],
    );
    expect_state(r, "P0002", "use_key after a revoke in the same statement");
    drop(tx);
    let mut tx = su.transaction().unwrap();
    revoke_key(&mut tx, own.id, None).unwrap();
    expect_state(
        use_key(&mut tx, ws_own, vendor),
        "P0002",
        "use_key after a revoke in the same transaction",
    );
}
