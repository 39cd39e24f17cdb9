//! Issue 2: the whole key lifecycle against a real cluster with the
//! installed extension, through the public contract of API.md (named
//! arguments, documented columns, statuses, mask format and SQLSTATEs).

mod common;

use byok_integration::postgres::fallible_iterator::FallibleIterator;
use byok_integration::postgres::Client;
use byok_integration::{grep_dir, random_master_key_hex, sample_key, Cluster, ClusterOptions};
use common::*;
use std::time::Duration;
use uuid::Uuid;

/// A cluster with a LOGIN role for the sidecar (byok_worker) and one for the
/// backend that makes vendor calls (byok_consumer).
fn cluster_with(opts: ClusterOptions) -> Cluster {
    let c = Cluster::start(opts);
    create_login(&c, "sidecar", &["byok_worker"]);
    create_login(&c, "backend", &["byok_consumer"]);
    c
}

fn cluster() -> Cluster {
    cluster_with(ClusterOptions::default())
}

/// Add a key as superuser and validate it through the queue as the sidecar.
fn add_active(c: &Cluster, ws: Uuid, vendor: &str, key: &str) -> KeyInfo {
    let info =
        add_key(&mut c.client(), ws, vendor, key, None).unwrap_or_else(|e| c.fail("add_key", &e));
    let mut w = c.client_as("sidecar");
    let claims =
        claim_jobs(&mut w, "sidecar-1", 16, 60).unwrap_or_else(|e| c.fail("claim_jobs", &e));
    let mine: Vec<_> = claims.iter().filter(|cl| cl.key_id == info.id).collect();
    assert_eq!(mine.len(), 1, "the new key's job is claimable: {claims:?}");
    for cl in &claims {
        let st = finish_job(
            &mut w,
            cl.job_id,
            cl.lease_token,
            "valid",
            None,
            Some(200),
            None,
        )
        .unwrap_or_else(|e| c.fail("finish_job", &e));
        assert_eq!(st, "active");
    }
    key_by_id(&mut c.client(), ws, info.id)
}

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

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
fn every_accepted_key_shape_round_trips() {
    let c = cluster();
    for (i, (vendor, shape)) in [
        ("anthropic", "anthropic"),
        ("openai", "openai"),
        ("openai", "openai-svcacct"),
        ("openai", "openai-legacy"),
    ]
    .iter()
    .enumerate()
    {
        let ws = Uuid::new_v4();
        let key = sample_key(shape, 200 + i as u64);
        let info = add_active(&c, ws, vendor, &key);
        assert_eq!(info.status, "active", "{shape}");
        assert_eq!(info.masked, mask(&key), "{shape}");
        assert_eq!(
            use_key(&mut c.client_as("backend"), ws, vendor).unwrap(),
            key,
            "{shape}"
        );
    }
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
fn flipped_ciphertext_byte_fails_xx001_at_every_position() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 501);
    let info = add_active(&c, ws, "anthropic", &key);
    let mut db = c.client();
    let len: i32 = db
        .query_one(
            "SELECT length(ciphertext) FROM byok.keys WHERE id = $1",
            &[&info.id],
        )
        .unwrap()
        .get(0);
    assert!(len > key.len() as i32, "ciphertext length {len}");
    for n in 0..len {
        for mask_bit in [1i32, 0x80] {
            let mut tx = db.transaction().unwrap();
            let updated = tx
                .execute(
                    "UPDATE byok.keys SET ciphertext = set_byte(ciphertext, $2, get_byte(ciphertext, $2) # $3) WHERE id = $1",
                    &[&info.id, &n, &mask_bit],
                )
                .unwrap();
            assert_eq!(updated, 1);
            let e = expect_state(
                use_key(&mut tx, ws, "anthropic"),
                "XX001",
                &format!("byte {n} xor {mask_bit}"),
            );
            assert_no_key_material(&error_text(&e), &[&key], "the XX001 error");
            tx.rollback().unwrap();
        }
    }
    // Untampered, it still opens: the failures above came from the flips.
    assert_eq!(use_key(&mut db, ws, "anthropic").unwrap(), key);
}

#[test]
fn ciphertext_moved_to_another_row_fails_xx001() {
    let c = cluster();
    let ws1 = Uuid::new_v4();
    let ws2 = Uuid::new_v4();
    let k1 = sample_key("anthropic", 601);
    let k2 = sample_key("anthropic", 602);
    let k3 = sample_key("openai", 603);
    let a = add_active(&c, ws1, "anthropic", &k1);
    let b = add_active(&c, ws2, "anthropic", &k2);
    let o = add_active(&c, ws1, "openai", &k3);
    let mut db = c.client();

    // Copy one row's ciphertext onto another, inside a rolled-back
    // transaction: opening the target must fail authentication.
    let moved_fails = |db: &mut Client,
                       from: Uuid,
                       to: Uuid,
                       ws: Uuid,
                       vendor: &str,
                       what: &str| {
        let mut tx = db.transaction().unwrap();
        tx.execute(
            "UPDATE byok.keys SET ciphertext = (SELECT ciphertext FROM byok.keys WHERE id = $2) WHERE id = $1",
            &[&to, &from],
        )
        .unwrap();
        expect_state(use_key(&mut tx, ws, vendor), "XX001", what);
        tx.rollback().unwrap();
    };
    moved_fails(
        &mut db,
        b.id,
        a.id,
        ws1,
        "anthropic",
        "ciphertext from another workspace",
    );
    moved_fails(
        &mut db,
        o.id,
        a.id,
        ws1,
        "anthropic",
        "ciphertext from the other vendor's row",
    );

    // Swap two rows' ciphertexts: both fail.
    let mut tx = db.transaction().unwrap();
    tx.batch_execute(&format!(
        "UPDATE byok.keys k SET ciphertext = s.ct FROM (VALUES ('{a}'::uuid, (SELECT ciphertext FROM byok.keys WHERE id = '{b}')), \
                                                           ('{b}'::uuid, (SELECT ciphertext FROM byok.keys WHERE id = '{a}'))) s(id, ct) \
          WHERE k.id = s.id",
        a = a.id,
        b = b.id
    ))
    .unwrap();
    expect_state(
        use_key(&mut tx, ws1, "anthropic"),
        "XX001",
        "swapped ciphertext (ws1)",
    );
    tx.rollback().unwrap();
    moved_fails(
        &mut db,
        a.id,
        b.id,
        ws2,
        "anthropic",
        "ciphertext moved into ws2",
    );

    // Each row, as stored, opens to its own key.
    assert_eq!(use_key(&mut db, ws1, "anthropic").unwrap(), k1);
    assert_eq!(use_key(&mut db, ws2, "anthropic").unwrap(), k2);
    assert_eq!(use_key(&mut db, ws1, "openai").unwrap(), k3);
}

/// True when `text` names `version` as a number of its own (not inside a
/// longer run of hex digits, such as a uuid).
fn names_version(text: &str, version: &str) -> bool {
    text.match_indices(version).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + version.len()..].chars().next();
        !before.is_some_and(|ch| ch.is_ascii_alphanumeric())
            && !after.is_some_and(|ch| ch.is_ascii_alphanumeric())
    })
}

#[test]
fn names_version_helper() {
    assert!(names_version(
        "master key version 90817 is missing",
        "90817"
    ));
    assert!(names_version("version 90817.", "90817"));
    assert!(!names_version("id a90817b", "90817"));
    assert!(!names_version("908170", "90817"));
}

#[test]
fn other_master_key_or_missing_version_gives_55000_and_listing_still_works() {
    let v1_hex = random_master_key_hex();
    let mut c = cluster_with(ClusterOptions {
        keyring: Some(format!("# test keyring\n90817 {v1_hex}\n")),
        ..Default::default()
    });
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 701);
    let info = add_active(&c, ws, "anthropic", &key);
    let pending = add_key(
        &mut c.client(),
        ws,
        "openai",
        &sample_key("openai", 702),
        Some("pending one"),
    )
    .unwrap();
    assert_eq!(use_key(&mut c.client(), ws, "anthropic").unwrap(), key);

    // Same version number, different key material.
    c.set_keyring(&format!("90817 {}\n", random_master_key_hex()));
    c.restart();
    let listed = list_keys(&mut c.client(), ws)
        .unwrap_or_else(|e| c.fail("list_keys under another master key", &e));
    assert_eq!(listed.len(), 2);
    let a = listed.iter().find(|k| k.id == info.id).unwrap();
    assert_eq!(
        (a.status.as_str(), a.masked.as_str()),
        ("active", mask(&key).as_str())
    );
    assert_eq!(
        listed.iter().find(|k| k.id == pending.id).unwrap().status,
        "pending"
    );
    let e = expect_state(
        use_key(&mut c.client(), ws, "anthropic"),
        "55000",
        "use_key under another master key",
    );
    assert_no_key_material(&error_text(&e), &[&key], "55000 error");
    let e = expect_state(
        use_key(&mut c.client_as("backend"), ws, "anthropic"),
        "55000",
        "consumer, other master key",
    );
    assert_no_key_material(&error_text(&e), &[&key], "55000 error");

    // A keyring without version 90817 at all: 55000 naming the version.
    c.set_keyring(&format!("90818 {}\n", random_master_key_hex()));
    c.restart();
    assert_eq!(list_keys(&mut c.client(), ws).unwrap().len(), 2);
    let e = expect_state(
        use_key(&mut c.client(), ws, "anthropic"),
        "55000",
        "use_key with the version missing",
    );
    assert!(
        names_version(&error_text(&e), "90817"),
        "the error names the missing version 90817: {}",
        error_text(&e)
    );
    // A queued key needing the absent version does not block the queue: the
    // claim succeeds without it, its attempt is not spent, it stays pending.
    let attempts_before = count(
        &mut c.client(),
        &format!(
            "SELECT attempts::bigint FROM byok.jobs WHERE key_id = '{}'",
            pending.id
        ),
    );
    let claimed = claim_jobs(&mut c.client_as("sidecar"), "sidecar-1", 16, 60)
        .unwrap_or_else(|e| c.fail("claim_jobs with a version missing", &e));
    assert!(
        claimed.is_empty(),
        "the undecryptable job is not handed out: {claimed:?}"
    );
    assert_eq!(
        count(
            &mut c.client(),
            &format!(
                "SELECT attempts::bigint FROM byok.jobs WHERE key_id = '{}' AND run_after > now()",
                pending.id
            )
        ),
        attempts_before,
        "the job is deferred with its attempt count unchanged"
    );
    assert_eq!(key_by_id(&mut c.client(), ws, pending.id).status, "pending");
    c.client()
        .execute("UPDATE byok.jobs SET run_after = now()", &[])
        .unwrap();

    // Both versions present: old keys decrypt again; new keys are sealed
    // under the highest version (the primary) and decrypt too.
    c.set_keyring(&format!("90817 {v1_hex}\n{}", c.keyring_text()));
    c.restart();
    assert_eq!(use_key(&mut c.client(), ws, "anthropic").unwrap(), key);
    let ws2 = Uuid::new_v4();
    let key2 = sample_key("anthropic", 703);
    add_active(&c, ws2, "anthropic", &key2); // also validates the old pending key
    assert_eq!(key_by_id(&mut c.client(), ws, pending.id).status, "active");
    assert_eq!(use_key(&mut c.client(), ws2, "anthropic").unwrap(), key2);
    assert!(
        !c.server_log().contains(&key) && !c.server_log().contains(&key2),
        "no key in the server log"
    );
}

#[test]
fn no_master_key_at_all_gives_55000() {
    // Started with BYOK_MASTER_KEY only, then restarted with neither it nor a file.
    let mk = random_master_key_hex();
    let mut c = cluster_with(ClusterOptions {
        master_key_env: Some(mk.clone()),
        ..Default::default()
    });
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 801);
    add_active(&c, ws, "openai", &key);
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "openai").unwrap(),
        key,
        "BYOK_MASTER_KEY works"
    );
    // The master key is not readable from SQL, not even by a superuser.
    let mut db = c.client();
    let settings: Vec<String> = db
        .query(
            "SELECT coalesce(setting, '') || ' ' || coalesce(reset_val, '') FROM pg_settings",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !settings.iter().any(|s| s.contains(&mk)),
        "master key visible in pg_settings"
    );
    // Nor in any server process's environment, as /proc shows it.
    let backend: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let pid_file = std::fs::read_to_string(c.data_dir().join("postmaster.pid")).unwrap();
    let postmaster = pid_file.lines().next().unwrap().trim().to_string();
    for pid in [postmaster, backend.to_string()] {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !environ.windows(mk.len()).any(|w| w == mk.as_bytes()),
            "BYOK_MASTER_KEY still in /proc/{pid}/environ"
        );
    }
    drop(db);

    c.set_master_key_env(None);
    c.restart();
    let mut db = c.client();
    assert_eq!(
        list_keys(&mut db, ws).unwrap().len(),
        1,
        "listing works without a master key"
    );
    expect_state(
        use_key(&mut db, ws, "openai"),
        "55000",
        "use_key without a master key",
    );
    let e = expect_state(
        add_key(
            &mut db,
            Uuid::new_v4(),
            "anthropic",
            &sample_key("anthropic", 802),
            None,
        ),
        "55000",
        "add_key without a master key",
    );
    assert_no_key_material(
        &error_text(&e),
        &[&sample_key("anthropic", 802)],
        "55000 error",
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM byok.keys"),
        1,
        "the refused add left no row"
    );
    drop(db);

    // And the key comes back with the master key.
    c.set_master_key_env(Some(mk));
    c.restart();
    assert_eq!(use_key(&mut c.client(), ws, "openai").unwrap(), key);
}

#[test]
fn world_readable_keyring_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 851);
    add_active(&c, ws, "anthropic", &key);
    c.stop();
    std::fs::set_permissions(c.keyring_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    match c.try_start_again() {
        // Refusing to start is a clear refusal if the log says why.
        Err(msg) => assert!(
            msg.contains(&c.keyring_path().to_string_lossy().to_string())
                || msg.to_lowercase().contains("readable"),
            "the refusal names the file or the permission problem: {msg}"
        ),
        // Starting is fine too, but then the key must not be used.
        Ok(()) => {
            let e = expect_state(
                use_key(&mut c.client(), ws, "anthropic"),
                "55000",
                "use_key with a world-readable keyring",
            );
            let t = error_text(&e).to_lowercase();
            assert!(
                t.contains("readable") || t.contains("permission") || t.contains("mode"),
                "clear error: {t}"
            );
            c.stop();
        }
    }
    std::fs::set_permissions(c.keyring_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    c.start_again();
    assert_eq!(use_key(&mut c.client(), ws, "anthropic").unwrap(), key);
}

#[test]
fn no_plaintext_key_on_disk_after_checkpoint() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let keys = [
        sample_key("anthropic", 901),
        sample_key("openai", 902),
        sample_key("anthropic", 903),
    ];
    // Active, used, rotated (revoked) and invalid keys, plus a pending one.
    add_active(&c, ws, "anthropic", &format!("  {}\r\n", keys[0]));
    add_active(&c, ws, "openai", &keys[1]);
    let mut db = c.client();
    assert_eq!(use_key(&mut db, ws, "anthropic").unwrap(), keys[0]);
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "openai").unwrap(),
        keys[1]
    );
    add_active(&c, ws, "anthropic", &keys[2]); // rotates keys[0] out
    let invalid_key = sample_key("openai", 904);
    add_key(&mut db, Uuid::new_v4(), "openai", &invalid_key, None).unwrap();
    let mut w = c.client_as("sidecar");
    for cl in claim_jobs(&mut w, "s", 16, 60).unwrap() {
        finish_job(
            &mut w,
            cl.job_id,
            cl.lease_token,
            "invalid",
            None,
            Some(401),
            None,
        )
        .unwrap();
    }
    let pending_key = sample_key("anthropic", 905);
    add_key(
        &mut db,
        Uuid::new_v4(),
        "anthropic",
        &pending_key,
        Some("pending"),
    )
    .unwrap();
    // A control value that does go through a table: the scan must see it.
    let marker = format!("control-marker-{}", Uuid::new_v4().simple());
    db.execute("CREATE TABLE public.control(v text)", &[])
        .unwrap();
    db.execute("INSERT INTO public.control VALUES ($1)", &[&marker])
        .unwrap();
    db.batch_execute("CHECKPOINT").unwrap();

    let control_hits = grep_dir(c.data_dir(), marker.as_bytes());
    assert!(
        control_hits
            .iter()
            .any(|p| p.starts_with(c.data_dir().join("pg_wal"))),
        "scan sees the WAL: {control_hits:?}"
    );
    assert!(
        control_hits
            .iter()
            .any(|p| p.starts_with(c.data_dir().join("base"))),
        "scan sees the heap: {control_hits:?}"
    );

    for key in keys.iter().chain([&invalid_key, &pending_key]) {
        let hits = grep_dir(c.data_dir(), key.as_bytes());
        assert!(
            hits.is_empty(),
            "plaintext key {} found in {hits:?}",
            mask(key)
        );
        // Nor its body without the prefix.
        let body = &key[key.len() - 60..];
        let hits = grep_dir(c.data_dir(), body.as_bytes());
        assert!(hits.is_empty(), "key body {} found in {hits:?}", mask(key));
    }
    let log = c.server_log();
    assert_no_key_material(
        &log,
        &[&keys[0], &keys[1], &keys[2], &invalid_key, &pending_key],
        "the server log",
    );
}

#[test]
fn stale_lease_token_changes_nothing() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 1001);
    let info = add_key(&mut c.client(), ws, "anthropic", &key, None).unwrap();
    let mut w1 = c.client_as("sidecar");
    let first = claim_jobs(&mut w1, "worker-1", 1, 5).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);

    // A made-up token: 'stale', nothing changes.
    let st = finish_job(
        &mut w1,
        first[0].job_id,
        Uuid::new_v4(),
        "invalid",
        Some("x"),
        Some(401),
        None,
    )
    .unwrap();
    assert_eq!(st, "stale");
    let mut db = c.client();
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "pending");
    assert!(ciphertext(&mut db, info.id).is_some());

    // The lease (5 s) runs out; another worker takes the job over.
    let mut w2 = c.client_as("sidecar");
    let mut second = Vec::new();
    byok_integration::wait_until(
        "the expired lease makes the job claimable",
        Duration::from_secs(60),
        || {
            second = claim_jobs(&mut w2, "worker-2", 1, 60).unwrap();
            !second.is_empty()
        },
    );
    assert_eq!(second[0].job_id, first[0].job_id);
    assert_eq!(second[0].attempt, 2, "the take-over is a second attempt");
    assert_ne!(second[0].lease_token, first[0].lease_token);

    // The first worker comes back late with a verdict: stale, nothing changes.
    let st = finish_job(
        &mut w1,
        first[0].job_id,
        first[0].lease_token,
        "invalid",
        Some("late"),
        Some(401),
        None,
    )
    .unwrap();
    assert_eq!(st, "stale");
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "pending");
    assert!(
        ciphertext(&mut db, info.id).is_some(),
        "a stale 'invalid' must not erase the key"
    );
    let st = finish_job(
        &mut w1,
        first[0].job_id,
        first[0].lease_token,
        "valid",
        None,
        Some(200),
        None,
    )
    .unwrap();
    assert_eq!(st, "stale");
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "pending");

    // The current lease holder finishes.
    let st = finish_job(
        &mut w2,
        second[0].job_id,
        second[0].lease_token,
        "valid",
        None,
        Some(200),
        None,
    )
    .unwrap();
    assert_eq!(st, "active");
    // After the job is finished, any token is stale.
    let st = finish_job(
        &mut w2,
        second[0].job_id,
        second[0].lease_token,
        "invalid",
        None,
        Some(401),
        None,
    )
    .unwrap();
    assert_eq!(st, "stale");
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "active");
    assert_eq!(use_key(&mut db, ws, "anthropic").unwrap(), key);
}

/// Make every waiting job due now. Couples to the queue table's column
/// `byok.jobs.run_after` (ARCHITECTURE.md's queue), which API.md leaves
/// open; the alternative is waiting out real backoff delays.
fn make_jobs_due(db: &mut Client) {
    db.execute("UPDATE byok.jobs SET run_after = clock_timestamp() - interval '1 second' WHERE lease_token IS NULL", &[])
        .expect("make jobs due (byok.jobs.run_after, lease_token)");
}

#[test]
fn retry_reschedules_and_attempt_limit_makes_unverified() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 1101);
    let info = add_key(&mut c.client(), ws, "openai", &key, None).unwrap();
    let mut w = c.client_as("sidecar");
    let mut db = c.client();
    let limit: Option<i32> = db
        .query_one(
            "SELECT nullif(current_setting('byok.max_attempts', true), '')::int",
            &[],
        )
        .unwrap()
        .get(0);

    let mut attempts = Vec::new();
    let mut final_status = String::new();
    for i in 1..=30 {
        let cl = claim_jobs(&mut w, "w", 16, 60).unwrap();
        assert_eq!(
            cl.len(),
            1,
            "attempt {i}: the job is claimable once due: {cl:?}"
        );
        assert_eq!(cl[0].key_id, info.id);
        attempts.push(cl[0].attempt);
        let st = finish_job(
            &mut w,
            cl[0].job_id,
            cl[0].lease_token,
            "retry",
            Some("HTTP 529 overloaded_error"),
            Some(529),
            None,
        )
        .unwrap();
        if st == "unverified" {
            final_status = st;
            break;
        }
        assert_eq!(st, "pending", "a retry keeps the key pending");
        // Rescheduled for later: not claimable right now.
        assert!(
            claim_jobs(&mut w, "w", 16, 60).unwrap().is_empty(),
            "retry {i} runs later, not now"
        );
        assert_eq!(key_by_id(&mut db, ws, info.id).status, "pending");
        make_jobs_due(&mut db);
    }
    assert_eq!(
        final_status, "unverified",
        "the key becomes unverified after the attempt limit"
    );
    let expected: Vec<i32> = (1..=attempts.len() as i32).collect();
    assert_eq!(attempts, expected, "attempt counted at each claim");
    assert!(
        attempts.len() >= 2,
        "vendor trouble is retried before giving up"
    );
    if let Some(limit) = limit {
        assert_eq!(
            attempts.len() as i32,
            limit,
            "gives up exactly at byok.max_attempts"
        );
    }
    let k = key_by_id(&mut db, ws, info.id);
    assert_eq!(k.status, "unverified");
    assert!(
        ciphertext(&mut db, info.id).is_some(),
        "unverified keys are kept"
    );
    expect_state(
        use_key(&mut db, ws, "openai"),
        "P0002",
        "an unverified key is not usable",
    );
    make_jobs_due(&mut db);
    assert!(
        claim_jobs(&mut w, "w", 16, 60).unwrap().is_empty(),
        "no job left after giving up"
    );

    // It can be revalidated: a fresh job, attempts from 1 again.
    let r = revalidate_key(&mut db, info.id).unwrap();
    assert_eq!(r.id, info.id);
    let cl = claim_jobs(&mut w, "w", 16, 60).unwrap();
    assert_eq!(cl.len(), 1);
    assert_eq!(cl[0].attempt, 1);
    assert_eq!(cl[0].api_key, key);
    assert_eq!(
        finish_job(
            &mut w,
            cl[0].job_id,
            cl[0].lease_token,
            "valid",
            None,
            Some(200),
            None
        )
        .unwrap(),
        "active"
    );
    assert_eq!(use_key(&mut db, ws, "openai").unwrap(), key);
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

/// Read notifications until the fence arrives; return the payloads of
/// `channel` that came before it.
fn drain_until_fence(listener: &mut Client, channel: &str, fence: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(15));
    loop {
        match it.next() {
            Ok(Some(n)) if n.channel() == fence => return got,
            Ok(Some(n)) if n.channel() == channel => got.push(n.payload().to_string()),
            Ok(Some(_)) => {}
            Err(e) => panic!("notification stream failed: {e:?}"),
            Ok(None) => panic!("the fence notification did not arrive within 15 s"),
        }
    }
}

#[test]
fn notify_byok_jobs_once_per_enqueuing_transaction() {
    let c = cluster();
    let mut listener = c.client();
    listener
        .batch_execute("LISTEN byok_jobs; LISTEN test_fence")
        .unwrap();
    let mut db = c.client();

    // Three keys in one transaction: exactly one notification.
    let mut tx = db.transaction().unwrap();
    for i in 0..3 {
        add_key(
            &mut tx,
            Uuid::new_v4(),
            "anthropic",
            &sample_key("anthropic", 1300 + i),
            None,
        )
        .unwrap();
    }
    tx.commit().unwrap();
    db.batch_execute("NOTIFY test_fence").unwrap();
    assert_eq!(
        drain_until_fence(&mut listener, "byok_jobs", "test_fence").len(),
        1,
        "3 adds in one transaction"
    );

    // Two transactions: two notifications.
    add_key(
        &mut db,
        Uuid::new_v4(),
        "openai",
        &sample_key("openai", 1310),
        None,
    )
    .unwrap();
    add_key(
        &mut db,
        Uuid::new_v4(),
        "openai",
        &sample_key("openai", 1311),
        None,
    )
    .unwrap();
    db.batch_execute("NOTIFY test_fence").unwrap();
    assert_eq!(
        drain_until_fence(&mut listener, "byok_jobs", "test_fence").len(),
        2,
        "two separate adds"
    );

    // Rolled back, refused or read-only: none.
    let mut tx = db.transaction().unwrap();
    add_key(
        &mut tx,
        Uuid::new_v4(),
        "anthropic",
        &sample_key("anthropic", 1320),
        None,
    )
    .unwrap();
    tx.rollback().unwrap();
    let _ = add_key(&mut db, Uuid::new_v4(), "anthropic", "hello", None);
    list_keys(&mut db, Uuid::new_v4()).unwrap();
    db.batch_execute("NOTIFY test_fence").unwrap();
    assert_eq!(
        drain_until_fence(&mut listener, "byok_jobs", "test_fence").len(),
        0,
        "no enqueue, no notification"
    );

    // The notification carries no key material.
    let key = sample_key("anthropic", 1330);
    add_key(&mut db, Uuid::new_v4(), "anthropic", &key, None).unwrap();
    db.batch_execute("NOTIFY test_fence").unwrap();
    let payloads = drain_until_fence(&mut listener, "byok_jobs", "test_fence");
    assert_eq!(payloads.len(), 1);
    assert_no_key_material(&payloads.join(" "), &[&key], "the NOTIFY payload");
}

#[test]
fn bad_inputs_raise_the_documented_sqlstates_and_leave_nothing() {
    let c = cluster();
    let mut db = c.client();
    let ws = Uuid::new_v4();
    let ant = sample_key("anthropic", 1401);
    let oai = sample_key("openai", 1402);
    let inner_space = format!("{} {}", &ant[..50], &ant[50..]);
    let huge = "a".repeat(1 << 20);
    let secrets = [ant.as_str(), oai.as_str()];

    let cases: Vec<(&str, Option<Uuid>, Option<&str>, Option<&str>, &str)> = vec![
        (
            "NULL workspace",
            None,
            Some("anthropic"),
            Some(&ant),
            "22004",
        ),
        ("NULL vendor", Some(ws), None, Some(&ant), "22004"),
        ("NULL key", Some(ws), Some("anthropic"), None, "22004"),
        ("empty key", Some(ws), Some("anthropic"), Some(""), "22023"),
        (
            "whitespace key",
            Some(ws),
            Some("anthropic"),
            Some(" \r\n\t "),
            "22023",
        ),
        ("hello", Some(ws), Some("anthropic"), Some("hello"), "22023"),
        (
            "inner space",
            Some(ws),
            Some("anthropic"),
            Some(&inner_space),
            "22023",
        ),
        ("1 MB", Some(ws), Some("anthropic"), Some(&huge), "22023"),
        (
            "openai key for anthropic",
            Some(ws),
            Some("anthropic"),
            Some(&oai),
            "22023",
        ),
        (
            "anthropic key for openai",
            Some(ws),
            Some("openai"),
            Some(&ant),
            "22023",
        ),
        ("gemini", Some(ws), Some("gemini"), Some(&ant), "22023"),
        ("empty vendor", Some(ws), Some(""), Some(&ant), "22023"),
    ];
    let admin_a = sample_key("anthropic-admin", 1403);
    let admin_o = sample_key("openai-admin", 1404);
    let mut cases = cases;
    cases.push((
        "anthropic admin key",
        Some(ws),
        Some("anthropic"),
        Some(&admin_a),
        "22023",
    ));
    cases.push((
        "openai admin key",
        Some(ws),
        Some("openai"),
        Some(&admin_o),
        "22023",
    ));

    for (what, w, v, k, code) in &cases {
        let r = db.query_one(
            "SELECT id FROM byok.add_key(workspace_id => $1, vendor => $2, api_key => $3)",
            &[w, v, k],
        );
        let e = expect_state(r, code, what);
        assert_no_key_material(
            &error_text(&e),
            &[&secrets[0], &secrets[1], &admin_a, &admin_o],
            what,
        );
        let db_err = e.as_db_error().unwrap();
        assert!(!db_err.message().is_empty(), "{what}: a message");
    }
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM byok.keys"),
        0,
        "no row left behind"
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM byok.jobs"),
        0,
        "no job left behind"
    );

    // Other functions: NULLs, bad vendors, nothing to use.
    let nil: Option<Uuid> = None;
    let none: Option<&str> = None;
    expect_state(
        db.query("SELECT * FROM byok.list_keys(workspace_id => $1)", &[&nil]),
        "22004",
        "list_keys(NULL)",
    );
    expect_state(
        db.query(
            "SELECT byok.use_key(workspace_id => $1, vendor => 'anthropic')",
            &[&nil],
        ),
        "22004",
        "use_key(NULL, ..)",
    );
    expect_state(
        db.query(
            "SELECT byok.use_key(workspace_id => $1, vendor => $2)",
            &[&ws, &none],
        ),
        "22004",
        "use_key(.., NULL)",
    );
    expect_state(
        use_key(&mut db, ws, "gemini"),
        "22023",
        "use_key unknown vendor",
    );
    expect_state(
        use_key(&mut db, ws, "anthropic"),
        "P0002",
        "use_key with no key",
    );
    expect_state(
        db.query("SELECT * FROM byok.revoke_key(key_id => $1)", &[&nil]),
        "22004",
        "revoke_key(NULL)",
    );
    expect_state(
        db.query("SELECT * FROM byok.revalidate_key(key_id => $1)", &[&nil]),
        "22004",
        "revalidate_key(NULL)",
    );
    expect_state(
        db.query("SELECT byok.revoke_workspace(workspace_id => $1)", &[&nil]),
        "22004",
        "revoke_workspace(NULL)",
    );
    expect_state(
        db.query("SELECT * FROM byok.claim_jobs(worker => $1)", &[&none]),
        "22004",
        "claim_jobs(NULL)",
    );

    // mask and redact.
    let m: String = db
        .query_one("SELECT byok.mask(api_key => $1)", &[&ant])
        .unwrap()
        .get(0);
    assert_eq!(m, mask(&ant));
    let m: String = db
        .query_one("SELECT byok.mask(api_key => $1)", &[&oai])
        .unwrap()
        .get(0);
    assert_eq!(m, mask(&oai));
    let text = format!("before {ant} middle {oai}\nafter {admin_a} end");
    let red: String = db
        .query_one("SELECT byok.redact(input => $1)", &[&text])
        .unwrap()
        .get(0);
    assert_no_key_material(&red, &[&ant, &oai, &admin_a], "redact's output");
    for word in ["before ", " middle ", "after ", " end"] {
        assert!(
            red.contains(word),
            "redact keeps the surrounding text {word:?}: {red:?}"
        );
    }

    // finish_job with an unknown outcome is refused; the job stays finishable.
    let info = add_key(&mut db, ws, "anthropic", &ant, None).unwrap();
    let cl = claim_jobs(&mut db, "w", 16, 60).unwrap();
    assert_eq!(cl.len(), 1);
    expect_state(
        finish_job(
            &mut db,
            cl[0].job_id,
            cl[0].lease_token,
            "maybe",
            None,
            None,
            None,
        ),
        "22023",
        "unknown outcome",
    );
    let nil_token: Option<Uuid> = None;
    expect_state(
        db.query(
            "SELECT byok.finish_job(job_id => $1, lease_token => $2, outcome => 'valid')",
            &[&cl[0].job_id, &nil_token],
        ),
        "22004",
        "finish_job NULL lease_token",
    );
    assert_eq!(
        finish_job(
            &mut db,
            cl[0].job_id,
            cl[0].lease_token,
            "valid",
            None,
            None,
            None
        )
        .unwrap(),
        "active"
    );
    assert_eq!(use_key(&mut db, ws, "anthropic").unwrap(), ant);
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "active");
    assert_no_key_material(
        &c.server_log(),
        &[&ant, &oai, &admin_a, &admin_o],
        "the server log",
    );
}
