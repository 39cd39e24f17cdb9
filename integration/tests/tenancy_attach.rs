//! Tenancy (issue 3), attach_members / attach_workspaces: injection text
//! in every argument stays inert, odd identifiers are quoted and text ids
//! matched, and attaching again replaces the rule.

mod common;

use byok_integration::{sample_key, sqlstate, Cluster, ClusterOptions};
use common::supabase::*;
use common::*;
use uuid::Uuid;

#[test]
fn injection_text_in_labels_reasons_vendors_and_subjects_is_inert() {
    let w = world(RolesCreated::BeforeExtension);
    let (a, alice) = (w.a, w.alice);
    let mut db = w.su();
    let audit_before = audit_rows(&mut db).len();
    let orgs_before: i64 = db
        .query_one("SELECT count(*) FROM app.orgs", &[])
        .unwrap()
        .get(0);
    let nasty = [
        "'); DROP TABLE byok.keys; --",
        "x' OR '1'='1",
        "$$; DELETE FROM byok.audit_log; $$",
        "Robert'); DROP TABLE app.orgs;--",
        "%I %L %s \\ '' \" ; SELECT pg_sleep(0)",
        "label\"); TRUNCATE byok.audit_log; --",
    ];
    for (i, text) in nasty.iter().enumerate() {
        let key = sample_key("openai", 7200 + i as u64);
        match w.act("authenticated", Some(alice), |tx| {
            add_key(tx, a, "openai", &key, Some(text))
        }) {
            Ok(info) => {
                assert_eq!(info.label.as_deref(), Some(*text), "label stored verbatim");
                let listed = key_by_id(&mut db, a, info.id);
                assert_eq!(listed.label.as_deref(), Some(*text));
                let r = w.act("authenticated", Some(alice), |tx| {
                    revoke_key(tx, info.id, Some(text))
                });
                match r {
                    Ok(k) => assert!(
                        k.status_detail.unwrap_or_default().contains(text),
                        "reason stored verbatim"
                    ),
                    Err(e) => assert_eq!(
                        sqlstate(&e),
                        "22023",
                        "reason refused inertly: {}",
                        error_text(&e)
                    ),
                }
            }
            Err(e) => assert_eq!(
                sqlstate(&e),
                "22023",
                "label refused inertly: {}",
                error_text(&e)
            ),
        }
        let key = sample_key("anthropic", 7300 + i as u64);
        let vendor = format!("anthropic{text}");
        expect_state(
            w.act("authenticated", Some(alice), |tx| {
                add_key(tx, a, &vendor, &key, None)
            }),
            "22023",
            "injection in vendor",
        );
        expect_state(
            w.consumer_use_key(a, &vendor),
            "22023",
            "injection in use_key vendor",
        );
        // In the JWT subject: never authorized.
        let claims = serde_json::json!({"sub": text, "role": "authenticated"}).to_string();
        expect_state(
            w.act_raw_claims("authenticated", &claims, |tx| list_keys(tx, a)),
            "42501",
            "injection in sub",
        );
        expect_state(
            w.act_raw_claims("authenticated", &claims, |tx| {
                tx.query("SELECT id FROM byok.keys", &[])
            }),
            "42501",
            "sub select",
        );
    }
    // A subject that is a member's id with SQL appended is not that member.
    let claims = serde_json::json!({"sub": format!("{alice}' OR '1'='1"), "role": "authenticated"})
        .to_string();
    expect_state(
        w.act_raw_claims("authenticated", &claims, |tx| list_keys(tx, a)),
        "42501",
        "member id plus injection",
    );

    // Injection in attach_* arguments: refused, nothing dropped.
    let r = db.execute(
        "SELECT byok.attach_members(member_table => 'app.org_people', workspace_column => 'org_ref; DROP TABLE app.orgs', user_column => 'person')",
        &[],
    );
    expect_state(r, "22023", "injection in workspace_column");
    let r = db.execute(
        "SELECT byok.attach_workspaces(workspace_table => 'app.orgs', id_column => 'org_uuid', status_column => 'lifecycle; DROP TABLE app.orgs')",
        &[],
    );
    expect_state(r, "22023", "injection in status_column");

    // Everything is still there and still works.
    let tables: i64 = db
        .query_one("SELECT count(*) FROM (VALUES (to_regclass('byok.keys')), (to_regclass('byok.audit_log')), (to_regclass('app.orgs'))) t(r) WHERE r IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert_eq!(tables, 3);
    let orgs_after: i64 = db
        .query_one("SELECT count(*) FROM app.orgs", &[])
        .unwrap()
        .get(0);
    assert_eq!(orgs_after, orgs_before);
    assert!(
        audit_rows(&mut db).len() > audit_before,
        "audit rows only grow"
    );
    assert_eq!(
        w.act("authenticated", Some(alice), |tx| list_keys(tx, a))
            .unwrap()
            .iter()
            .filter(|k| k.status == "active")
            .count(),
        1
    );
    assert_eq!(w.consumer_use_key(a, "anthropic").unwrap(), w.key_a);
    expect_state(
        w.act("authenticated", Some(alice), |tx| list_keys(tx, w.b)),
        "42501",
        "alice still kept out of B",
    );
}

#[test]
fn odd_identifiers_and_text_ids_are_quoted_and_matched() {
    let c = Cluster::start(ClusterOptions {
        create_extension: false,
        ..Default::default()
    });
    let mut db = c.client();
    db.batch_execute(SUPABASE_ROLES).unwrap();
    db.batch_execute("CREATE EXTENSION pg_byok")
        .unwrap_or_else(|e| c.fail("CREATE EXTENSION", &e));
    create_login(&c, "sidecar", &["byok_worker"]);
    db.batch_execute(
        r#"CREATE SCHEMA "Tenant Data";
           CREATE TABLE "Tenant Data"."Work Spaces; x" ("ID" text PRIMARY KEY, "State ""now""" text);
           CREATE TABLE "Tenant Data"."Team-Members" ("Team 'Id'" text, "who" uuid);"#,
    )
    .unwrap();
    db.execute(
        r#"SELECT byok.attach_members(member_table => '"Tenant Data"."Team-Members"', workspace_column => 'Team ''Id''', user_column => 'who')"#,
        &[],
    )
    .unwrap_or_else(|e| c.fail("attach_members with odd names", &e));
    db.execute(
        r#"SELECT byok.attach_workspaces(workspace_table => '"Tenant Data"."Work Spaces; x"', id_column => 'ID', status_column => 'State "now"')"#,
        &[],
    )
    .unwrap_or_else(|e| c.fail("attach_workspaces with odd names", &e));
    let mut w = World::bare(c);
    let (ws1, ws2) = (Uuid::new_v4(), Uuid::new_v4());
    for ws in [ws1, ws2] {
        db.execute(
            r#"INSERT INTO "Tenant Data"."Work Spaces; x" VALUES ($1, 'live')"#,
            &[&ws.to_string()],
        )
        .unwrap();
    }
    db.execute(
        r#"INSERT INTO "Tenant Data"."Team-Members" VALUES ($1, $2)"#,
        &[&ws1.to_string(), &w.alice],
    )
    .unwrap();
    // Unrelated non-uuid ids in a text column must not break the app's DELETE.
    db.execute(
        r#"INSERT INTO "Tenant Data"."Work Spaces; x" VALUES ('legacy-42', 'live')"#,
        &[],
    )
    .unwrap();
    w.a = ws1;
    let key = sample_key("anthropic", 7401);
    let k1 = w
        .act("authenticated", Some(w.alice), |tx| {
            add_key(tx, ws1, "anthropic", &key, None)
        })
        .unwrap();
    expect_state(
        w.act("authenticated", Some(w.alice), |tx| list_keys(tx, ws2)),
        "42501",
        "alice not in ws2",
    );
    let k2 = add_key(&mut db, ws2, "openai", &sample_key("openai", 7402), None).unwrap();
    w.validate_all();
    db.execute(r#"UPDATE "Tenant Data"."Work Spaces; x" SET "State ""now""" = 'SUSPENDED' WHERE "ID" = $1"#, &[&ws1.to_string()])
        .unwrap();
    assert_eq!(key_by_id(&mut db, ws1, k1.id).status, "revoked");
    assert_eq!(key_by_id(&mut db, ws2, k2.id).status, "active");
    db.execute(
        r#"DELETE FROM "Tenant Data"."Work Spaces; x" WHERE "ID" IN ($1, 'legacy-42')"#,
        &[&ws2.to_string()],
    )
    .unwrap_or_else(|e| w.c.fail("DELETE with a non-uuid id", &e));
    assert_eq!(key_by_id(&mut db, ws2, k2.id).status, "revoked");
}

#[test]
fn reattaching_members_replaces_the_rule() {
    let w = world(RolesCreated::BeforeExtension);
    let mut db = w.su();
    let dana = Uuid::new_v4();
    db.batch_execute(&format!(
        "CREATE TABLE app.seats (team uuid, uid uuid);
         INSERT INTO app.seats VALUES ('{}', '{dana}');",
        w.b
    ))
    .unwrap();
    db.execute("SELECT byok.attach_members(member_table => 'app.seats', workspace_column => 'team', user_column => 'uid')", &[])
        .unwrap();
    expect_state(
        w.act("authenticated", Some(w.alice), |tx| list_keys(tx, w.a)),
        "42501",
        "alice under the old rule",
    );
    expect_state(
        w.act("authenticated", Some(w.bob), |tx| list_keys(tx, w.b)),
        "42501",
        "bob under the old rule",
    );
    assert_eq!(
        w.act("authenticated", Some(dana), |tx| list_keys(tx, w.b))
            .unwrap()
            .len(),
        1,
        "dana under the new rule"
    );
    expect_state(
        w.act("authenticated", Some(dana), |tx| list_keys(tx, w.a)),
        "42501",
        "dana not in A",
    );
    // Bad configuration is refused and leaves the current rule in place.
    expect_state(
        db.execute("SELECT byok.attach_members(member_table => 'app.seats', workspace_column => 'nope', user_column => 'uid')", &[]),
        "22023",
        "missing column",
    );
    assert_eq!(
        w.act("authenticated", Some(dana), |tx| list_keys(tx, w.b))
            .unwrap()
            .len(),
        1
    );
}
