//! Key lifecycle (issue 2), rotation and revocation: a new key supersedes
//! the old one in the same transaction, and invalid or revoked keys lose
//! their ciphertext.

mod common;

use byok_integration::sample_key;
use common::lifecycle::*;
use common::*;
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
