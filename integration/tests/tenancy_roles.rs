//! Tenancy (issue 3), roles: which API role may call use_key, that no
//! role can read or write the ciphertext column, that the audit log is
//! append-only for every role, and that audit rows name the actor and never
//! hold key material.

mod common;

use byok_integration::{sample_key, sqlstate};
use common::supabase::*;
use common::*;
use serde_json::Value;
use uuid::Uuid;

#[test]
fn service_role_can_use_key_and_authenticated_cannot() {
    for when in [RolesCreated::BeforeExtension, RolesCreated::AfterExtension] {
        let w = world(when);
        expect_state(
            w.act("authenticated", Some(w.alice), |tx| {
                use_key(tx, w.a, "anthropic")
            }),
            "42501",
            "authenticated use_key",
        );
        expect_state(
            w.act("anon", None, |tx| use_key(tx, w.a, "anthropic")),
            "42501",
            "anon use_key",
        );
        assert_eq!(w.service_use_key(w.a, "anthropic"), w.key_a);
        assert_eq!(w.service_use_key(w.b, "anthropic"), w.key_b);
        expect_state(
            w.act("service_role", None, |tx| {
                use_key(tx, Uuid::new_v4(), "anthropic")
            }),
            "P0002",
            "service_role, no key",
        );
    }
}

#[test]
fn no_role_can_select_the_ciphertext_column() {
    let w = world(RolesCreated::BeforeExtension);
    let mut db = w.su();
    let holders: Vec<String> = db
        .query(
            "SELECT rolname::text FROM pg_roles
              WHERE NOT rolsuper AND left(rolname, 3) <> 'pg_'
                AND has_column_privilege(oid, 'byok.keys', 'ciphertext', 'SELECT')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        holders.is_empty(),
        "roles with SELECT on byok.keys.ciphertext: {holders:?}"
    );
    let writers: Vec<String> = db
        .query(
            "SELECT rolname::text FROM pg_roles
              WHERE NOT rolsuper AND left(rolname, 3) <> 'pg_' AND (has_column_privilege(oid, 'byok.keys', 'ciphertext', 'UPDATE')
                                   OR has_table_privilege(oid, 'byok.keys', 'INSERT')
                                   OR has_table_privilege(oid, 'byok.keys', 'DELETE'))",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        writers.is_empty(),
        "roles that can write byok.keys directly: {writers:?}"
    );
    for role in ["anon", "authenticated", "service_role"] {
        expect_state(
            w.act(role, Some(w.alice), |tx| {
                tx.query("SELECT ciphertext FROM byok.keys", &[])
            }),
            "42501",
            &format!("{role} SELECT ciphertext"),
        );
        expect_state(
            w.act(role, Some(w.alice), |tx| {
                tx.query("SELECT k FROM byok.keys k", &[])
            }),
            "42501",
            &format!("{role} SELECT whole row"),
        );
    }
    for login in ["sidecar", "backend", "authenticator"] {
        expect_state(
            w.c.client_as(login)
                .query("SELECT ciphertext FROM byok.keys", &[]),
            "42501",
            &format!("{login} SELECT ciphertext"),
        );
    }
}

#[test]
fn audit_log_is_append_only_for_every_role() {
    let w = world(RolesCreated::BeforeExtension);
    let mut db = w.su();
    // Some history: use, revoke, revalidate.
    use_key(&mut db, w.a, "anthropic").unwrap();
    w.consumer_use_key(w.b, "anthropic").unwrap();
    w.act("authenticated", Some(w.alice), |tx| {
        revalidate_key(tx, w.id_a)
    })
    .unwrap();
    let snapshot = audit_rows(&mut db);
    assert!(snapshot.len() >= 5, "history recorded: {}", snapshot.len());
    let col: String = db
        .query_one(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'byok.audit_log'::regclass AND attnum > 0
                AND NOT attisdropped AND attidentity = '' AND attgenerated = '' ORDER BY attnum DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    let update = format!("UPDATE byok.audit_log SET \"{col}\" = \"{col}\"");
    let statements = [
        update.as_str(),
        "DELETE FROM byok.audit_log",
        "TRUNCATE byok.audit_log",
    ];

    for sql in statements {
        // Superuser: refused by the table itself, not by a missing column or a typo.
        let e = db
            .batch_execute(sql)
            .expect_err(&format!("superuser {sql} must be refused"));
        let code = sqlstate(&e);
        assert!(
            !["42601", "42703", "42P01", "428C9", "42804"].contains(&code.as_str()),
            "superuser {sql}: refused for the wrong reason: {}",
            error_text(&e)
        );
        for role in ["anon", "authenticated", "service_role"] {
            let r = w.act(role, Some(w.alice), |tx| tx.batch_execute(sql));
            assert!(r.is_err(), "{role} {sql} must be refused");
        }
        for login in ["sidecar", "backend", "authenticator"] {
            assert!(
                w.c.client_as(login).batch_execute(sql).is_err(),
                "{login} {sql} must be refused"
            );
        }
    }
    assert_eq!(audit_rows(&mut db), snapshot, "audit log unchanged");
}

#[test]
fn audit_rows_name_the_actor_and_never_hold_key_material() {
    let w = world(RolesCreated::AfterExtension);
    let (a, alice) = (w.a, w.alice);
    let mut keys: Vec<String> = vec![w.key_a.clone(), w.key_b.clone()];
    let mut db = w.su();
    // Per-call audit of use_key (the default counts uses instead, without an
    // audit row: integration/tests/use_record.rs); read at each new session.
    db.batch_execute("ALTER DATABASE byok SET byok.use_audit = 'each'")
        .unwrap();

    // Rotation, use, revoke, invalid, revalidate, a key pasted into label/reason/detail.
    let rot = sample_key("anthropic", 8101);
    keys.push(rot.clone());
    let label_with_key = format!("my key is {rot}");
    let k = w
        .act("authenticated", Some(alice), |tx| {
            add_key(tx, a, "anthropic", &rot, Some(&label_with_key))
        })
        .unwrap();
    assert_no_key_material(
        &k.label.clone().unwrap_or_default(),
        &[&rot],
        "label returned by add_key",
    );
    w.validate_all();
    assert_eq!(w.consumer_use_key(a, "anthropic").unwrap(), rot);
    let bad = sample_key("openai", 8102);
    keys.push(bad.clone());
    w.act("authenticated", Some(alice), |tx| {
        add_key(tx, a, "openai", &bad, None)
    })
    .unwrap();
    let mut s = w.c.client_as("sidecar");
    for cl in claim_jobs(&mut s, "w", 10, 60).unwrap() {
        let detail = format!("401 for key {}", cl.api_key);
        finish_job(
            &mut s,
            cl.job_id,
            cl.lease_token,
            "invalid",
            Some(&detail),
            Some(401),
            None,
        )
        .unwrap();
    }
    let third = sample_key("openai", 8103);
    keys.push(third.clone());
    let t = w
        .act("authenticated", Some(alice), |tx| {
            add_key(tx, a, "openai", &third, None)
        })
        .unwrap();
    w.act("authenticated", Some(alice), |tx| revalidate_key(tx, t.id))
        .unwrap();
    let reason = format!("leaked: {third}");
    let r = w.act("authenticated", Some(alice), |tx| {
        revoke_key(tx, t.id, Some(&reason))
    });
    if let Ok(info) = &r {
        assert_no_key_material(
            &info.status_detail.clone().unwrap_or_default(),
            &[&third],
            "status_detail from revoke_key",
        );
    }
    db.execute("DELETE FROM app.orgs WHERE org_uuid = $1", &[&w.b])
        .unwrap();

    // What users can read back never holds more than the mask.
    let listed = w
        .act("authenticated", Some(alice), |tx| list_keys(tx, a))
        .unwrap();
    let key_refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    assert_no_key_material(&format!("{listed:?}"), &key_refs, "list_keys output");

    let rows = audit_rows(&mut db);
    let all = serde_json::to_string(&rows).unwrap();
    assert_no_key_material(&all, &key_refs, "byok.audit_log");

    // Who, what, which: alice's adds carry her role and subject.
    let add_rows: Vec<&Value> = rows
        .iter()
        .filter(|r| has_value(r, "add") && has_value(r, &k.id.to_string()))
        .collect();
    assert_eq!(add_rows.len(), 1, "one 'add' row for the key");
    assert!(
        has_value(add_rows[0], "authenticated"),
        "actor role recorded: {}",
        add_rows[0]
    );
    assert!(
        has_value(add_rows[0], &alice.to_string()),
        "JWT subject recorded: {}",
        add_rows[0]
    );
    assert!(
        has_value(add_rows[0], &a.to_string()),
        "workspace recorded: {}",
        add_rows[0]
    );
    for action in ["add", "validate", "use", "revoke", "rotate", "revalidate"] {
        assert!(
            rows.iter().any(|r| has_value(r, action)),
            "an audit row for '{action}'"
        );
    }
    let use_rows: Vec<&Value> = rows
        .iter()
        .filter(|r| has_value(r, "use") && has_value(r, &a.to_string()))
        .collect();
    assert!(
        use_rows.iter().any(|r| has_value(r, "backend")),
        "use by the consumer role recorded"
    );
    assert_no_key_material(&w.c.server_log(), &key_refs, "the server log");

    // A use through the API as service_role names service_role.
    w.service_use_key(a, "anthropic");
    let rows = audit_rows(&mut db);
    assert!(
        rows.iter().any(|r| has_value(r, "use")
            && has_value(r, "service_role")
            && has_value(r, &a.to_string())),
        "use by service_role recorded"
    );
    assert_no_key_material(
        &serde_json::to_string(&rows).unwrap(),
        &key_refs,
        "byok.audit_log",
    );
}
