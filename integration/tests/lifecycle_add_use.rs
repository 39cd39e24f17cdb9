//! Key lifecycle (issue 2), the main path through API.md's public
//! contract: add, claim, finish and use across sessions, and which role
//! gets exactly which functions.

mod common;

use byok_integration::sample_key;
use common::lifecycle::*;
use common::*;
use uuid::Uuid;

#[test]
fn add_claim_finish_in_three_sessions_then_use_key_returns_normalised_key() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 101);
    // A copy-paste artifact: BOM, spaces, CRLF and a tab around the key.
    let pasted = format!("\u{feff}  \r\n\t{key} \r\n");

    // Session 1: add.
    let added = {
        let mut s1 = c.client();
        add_key(&mut s1, ws, "Anthropic", &pasted, Some("production key"))
            .unwrap_or_else(|e| c.fail("add_key", &e))
    };
    assert_eq!(added.workspace_id, ws);
    assert_eq!(added.vendor, "anthropic", "vendor stored lower-case");
    assert_eq!(added.status, "pending");
    assert_eq!(added.masked, mask(&key), "mask is '…' + last 4");
    assert_eq!(added.label.as_deref(), Some("production key"));
    assert!(added.validated_at.is_none() && added.revoked_at.is_none());

    // Not usable before validation.
    expect_state(
        use_key(&mut c.client(), ws, "anthropic"),
        "P0002",
        "use_key on a pending key",
    );

    // Session 2 (the sidecar's role): claim.
    let claim = {
        let mut s2 = c.client_as("sidecar");
        let claims =
            claim_jobs(&mut s2, "sidecar-a", 16, 60).unwrap_or_else(|e| c.fail("claim_jobs", &e));
        assert_eq!(claims.len(), 1, "{claims:?}");
        // Leased: a second claim gets nothing.
        let again = claim_jobs(&mut s2, "sidecar-b", 16, 60).unwrap();
        assert!(
            again.is_empty(),
            "a leased job is not claimed twice: {again:?}"
        );
        claims[0].clone()
    };
    assert_eq!(claim.key_id, added.id);
    assert_eq!(claim.workspace_id, ws);
    assert_eq!(claim.vendor, "anthropic");
    assert_eq!(
        claim.api_key, key,
        "claim_jobs hands the worker the normalised key"
    );
    assert_eq!(claim.attempt, 1, "attempt counted at claim");

    // Session 3: finish.
    {
        let mut s3 = c.client_as("sidecar");
        let st = finish_job(
            &mut s3,
            claim.job_id,
            claim.lease_token,
            "valid",
            Some("200 OK"),
            Some(200),
            None,
        )
        .unwrap_or_else(|e| c.fail("finish_job", &e));
        assert_eq!(st, "active");
        // Finished jobs are gone.
        assert!(claim_jobs(&mut s3, "sidecar-a", 16, 60).unwrap().is_empty());
    }
    let now = key_by_id(&mut c.client(), ws, added.id);
    assert_eq!(now.status, "active");
    assert!(now.validated_at.is_some());
    assert_eq!(now.masked, mask(&key));

    // use_key: exactly the normalised key, as superuser and as byok_consumer,
    // vendor case-insensitive.
    let as_super =
        use_key(&mut c.client(), ws, "anthropic").unwrap_or_else(|e| c.fail("use_key", &e));
    assert_eq!(as_super, key);
    assert_eq!(as_super.len(), 108);
    let as_consumer = use_key(&mut c.client_as("backend"), ws, "ANTHROPIC")
        .unwrap_or_else(|e| c.fail("use_key", &e));
    assert_eq!(as_consumer, key);

    // Another vendor in the same workspace is separate.
    expect_state(
        use_key(&mut c.client(), ws, "openai"),
        "P0002",
        "no openai key yet",
    );
    let okey = sample_key("openai", 102);
    add_active(&c, ws, "OpenAI", &format!("\r\n{okey}\n"));
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "openai").unwrap(),
        okey
    );
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "anthropic").unwrap(),
        key
    );
    // And another workspace has nothing.
    expect_state(
        use_key(&mut c.client(), Uuid::new_v4(), "anthropic"),
        "P0002",
        "other workspace",
    );
}

#[test]
fn roles_get_exactly_their_functions() {
    let c = cluster();
    create_login(&c, "nobody", &[]);
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 301);
    let info = add_active(&c, ws, "anthropic", &key);
    let other = add_key(
        &mut c.client(),
        Uuid::new_v4(),
        "anthropic",
        &sample_key("anthropic", 302),
        None,
    )
    .unwrap();

    // byok_worker: claim_jobs, finish_job, nothing else.
    let mut w = c.client_as("sidecar");
    expect_state(use_key(&mut w, ws, "anthropic"), "42501", "worker use_key");
    expect_state(
        add_key(&mut w, ws, "anthropic", &sample_key("anthropic", 303), None),
        "42501",
        "worker add_key",
    );
    expect_state(list_keys(&mut w, ws), "42501", "worker list_keys");
    expect_state(
        revoke_key(&mut w, info.id, None),
        "42501",
        "worker revoke_key",
    );
    expect_state(
        w.query("SELECT id FROM byok.keys", &[]),
        "42501",
        "worker SELECT byok.keys",
    );
    expect_state(
        w.query("SELECT ciphertext FROM byok.keys", &[]),
        "42501",
        "worker SELECT ciphertext",
    );
    expect_state(
        w.query("SELECT * FROM byok.audit_log", &[]),
        "42501",
        "worker SELECT audit_log",
    );

    // byok_consumer: use_key, nothing else.
    let mut b = c.client_as("backend");
    expect_state(
        claim_jobs(&mut b, "x", 1, 60),
        "42501",
        "consumer claim_jobs",
    );
    expect_state(
        finish_job(&mut b, 1, Uuid::new_v4(), "valid", None, None, None),
        "42501",
        "consumer finish_job",
    );
    expect_state(
        add_key(&mut b, ws, "anthropic", &sample_key("anthropic", 304), None),
        "42501",
        "consumer add_key",
    );
    expect_state(list_keys(&mut b, ws), "42501", "consumer list_keys");
    expect_state(
        revoke_key(&mut b, info.id, None),
        "42501",
        "consumer revoke_key",
    );
    expect_state(
        revalidate_key(&mut b, info.id),
        "42501",
        "consumer revalidate_key",
    );
    expect_state(
        b.query("SELECT ciphertext FROM byok.keys", &[]),
        "42501",
        "consumer SELECT ciphertext",
    );

    // PUBLIC: nothing at all.
    let mut n = c.client_as("nobody");
    expect_state(use_key(&mut n, ws, "anthropic"), "42501", "PUBLIC use_key");
    expect_state(
        add_key(&mut n, ws, "anthropic", &sample_key("anthropic", 305), None),
        "42501",
        "PUBLIC add_key",
    );
    expect_state(list_keys(&mut n, ws), "42501", "PUBLIC list_keys");
    expect_state(
        revoke_key(&mut n, info.id, None),
        "42501",
        "PUBLIC revoke_key",
    );
    expect_state(
        revoke_workspace(&mut n, ws, None),
        "42501",
        "PUBLIC revoke_workspace",
    );
    expect_state(
        revalidate_key(&mut n, other.id),
        "42501",
        "PUBLIC revalidate_key",
    );
    expect_state(claim_jobs(&mut n, "x", 1, 60), "42501", "PUBLIC claim_jobs");
    expect_state(
        n.query("SELECT byok.mask(api_key => 'sk-ant-api03-x')", &[]),
        "42501",
        "PUBLIC mask",
    );
    expect_state(
        n.query("SELECT byok.redact(input => 'x')", &[]),
        "42501",
        "PUBLIC redact",
    );
    expect_state(
        n.query(
            "SELECT byok.authorize(workspace_id => gen_random_uuid())",
            &[],
        ),
        "42501",
        "PUBLIC authorize",
    );
    expect_state(
        n.query("SELECT * FROM byok.keys", &[]),
        "42501",
        "PUBLIC SELECT byok.keys",
    );

    // Nothing changed: the key still serves, the other is still pending.
    assert_eq!(use_key(&mut c.client(), ws, "anthropic").unwrap(), key);
    assert_eq!(
        key_by_id(&mut c.client(), other.workspace_id, other.id).status,
        "pending"
    );
}
