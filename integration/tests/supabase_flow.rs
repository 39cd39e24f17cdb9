//! The whole tenancy and lifecycle flow on a database laid out as Supabase
//! lays it out (`byok_integration::SupabaseCluster`): the project's migration
//! applied as `postgres` (not a superuser), requests made the way PostgREST
//! makes them, `use_key` as `service_role`, the sidecar as a login role the
//! migration created, workspace pause and delete as `postgres`.

mod common;

use byok_integration::postgres::GenericClient;
use byok_integration::{sample_key, sqlstate, supabase_project, SupabaseOptions};
use common::*;
use uuid::Uuid;

fn one_bool(db: &mut impl GenericClient, sql: &str) -> bool {
    db.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn the_layout_is_supabases_and_pg_byok_belongs_to_the_superuser() {
    let p = supabase_project(SupabaseOptions::default());
    let mut su = p.sb.superuser();
    let row = su
        .query_one(
            "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = 'postgres'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2)
        ),
        (false, true, true)
    );
    let supers: Vec<String> = su
        .query("SELECT rolname::text FROM pg_roles WHERE rolsuper", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(supers, ["supabase_admin"]);
    for (sql, owner) in [
        ("SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'pg_byok'", "supabase_admin"),
        ("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'byok.keys'::regclass", "supabase_admin"),
        ("SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database()", "postgres"),
        ("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'public.workspaces'::regclass", "postgres"),
    ] {
        let got: String = su.query_one(sql, &[]).unwrap().get(0);
        assert_eq!(got, owner, "{sql}");
    }
    // The migration made postgres a member of byok_admin, and the sidecar's
    // role a member of byok_worker.
    assert!(one_bool(
        &mut su,
        "SELECT pg_has_role('postgres', 'byok_admin', 'MEMBER')"
    ));
    assert!(one_bool(
        &mut su,
        "SELECT pg_has_role('byok_sidecar', 'byok_worker', 'MEMBER')"
    ));
    assert!(one_bool(
        &mut su,
        "SELECT member_table = 'public.workspace_members'::regclass FROM byok.member_source"
    ));
    assert!(one_bool(
        &mut su,
        "SELECT array_agg(tgname::text) @> '{byok_revoke_on_delete,byok_revoke_on_update,byok_revoke_on_truncate}'
           FROM pg_trigger WHERE tgrelid = 'public.workspaces'::regclass"
    ));
    assert!(one_bool(
        &mut su,
        "SELECT NOT EXISTS (SELECT 1 FROM byok.attachment_problems())"
    ));
}

#[test]
fn byok_admin_reads_health_but_no_key_and_bypassrls_does_not_reach_the_ciphertext() {
    let p = supabase_project(SupabaseOptions::default());
    let key = sample_key("anthropic", 1);
    p.sb.request("authenticated", Some(&p.user_a), |tx| {
        add_key(tx, p.ws_a, "anthropic", &key, None)
    })
    .unwrap();
    let mut pg = p.sb.postgres();

    // What the dashboard needs: vendor health, queue depth, keyring status,
    // the keys' metadata (BYPASSRLS: every workspace's).
    pg.query(
        "SELECT vendor, state, degraded FROM byok.vendor_status",
        &[],
    )
    .unwrap();
    let depth: i64 = pg
        .query_one(
            "SELECT coalesce(sum(ready + leased + waiting), 0)::bigint FROM byok.queue_depth()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(depth, 1);
    let primary: i64 = pg
        .query_one(
            "SELECT version FROM byok.master_key_status() WHERE is_primary",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(primary, 1);
    let statuses: Vec<String> = pg
        .query("SELECT status FROM byok.keys", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(statuses, ["pending"]);

    // Never a ciphertext, never a plaintext.
    for (what, sql) in [
        ("SELECT ciphertext", "SELECT ciphertext FROM byok.keys"),
        ("SELECT * FROM byok.keys", "SELECT * FROM byok.keys"),
        ("COPY byok.keys", "COPY byok.keys TO STDOUT"),
        (
            "use_key",
            "SELECT byok.use_key(gen_random_uuid(), 'anthropic')",
        ),
        ("claim_jobs", "SELECT * FROM byok.claim_jobs('pg', 1, 60)"),
        ("export_archive", "SELECT byok.export_archive()"),
    ] {
        let e = pg.batch_execute(sql).expect_err(what);
        assert_eq!(
            sqlstate(&e),
            "42501",
            "postgres: {what}: {}",
            error_text(&e)
        );
    }
    // The ciphertext column is granted to no role. Only the superuser and
    // Postgres's predefined pg_read_all_data (which ignores grants; on
    // Supabase, supabase_read_only_user) can read it: SECURITY.md, row S8.
    let mut su = p.sb.superuser();
    let readers: Vec<String> = su
        .query(
            "SELECT rolname::text FROM pg_roles
              WHERE NOT rolsuper
                AND has_column_privilege(oid, 'byok.keys'::regclass, 'ciphertext', 'SELECT')
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        readers,
        ["pg_read_all_data", "supabase_read_only_user"],
        "roles that can SELECT the ciphertext"
    );
    let grantees: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_attribute a, aclexplode(a.attacl) x
              WHERE a.attrelid = 'byok.keys'::regclass AND a.attname = 'ciphertext'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(grantees, 0, "the ciphertext column is granted to some role");
    for f in [
        "byok.use_key(uuid, text)",
        "byok.claim_jobs(text, integer, integer)",
        "byok._open(uuid, uuid, text, bytea)",
    ] {
        assert!(
            !one_bool(
                &mut su,
                &format!("SELECT has_function_privilege('byok_admin', '{f}', 'EXECUTE')")
            ),
            "byok_admin may execute {f}"
        );
    }
}

#[test]
fn configuration_needs_byok_admin_and_the_callers_own_tables() {
    let p = supabase_project(SupabaseOptions::default());
    let mut su = p.sb.superuser();
    su.batch_execute(
        "CREATE SCHEMA private; GRANT USAGE ON SCHEMA private TO postgres;
         CREATE TABLE private.orgs (id uuid PRIMARY KEY);
         CREATE TABLE private.org_members (workspace_id uuid, user_id uuid);
         CREATE ROLE app_migrator LOGIN;",
    )
    .unwrap();
    let mut pg = p.sb.postgres();
    // Detaching and re-attaching the app's own tables works as postgres.
    pg.batch_execute(
        "SELECT byok.detach_members();
         SELECT byok.detach_workspaces('public.workspaces');
         SELECT byok.attach_workspaces('public.workspaces', 'id', 'status');
         SELECT byok.attach_members('public.workspace_members');
         SELECT byok.grant_supabase_roles();",
    )
    .unwrap();
    // Tables postgres could not read or put triggers on are refused.
    for sql in [
        "SELECT byok.attach_members('private.org_members')",
        "SELECT byok.attach_workspaces('private.orgs')",
        "SELECT byok.detach_workspaces('private.orgs')",
    ] {
        let e = pg.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", error_text(&e));
        assert!(
            error_text(&e).contains("privilege on private."),
            "{sql}: {}",
            error_text(&e)
        );
    }
    // A role outside byok_admin configures nothing, even with EXECUTE.
    su.batch_execute(
        "GRANT USAGE ON SCHEMA byok TO app_migrator;
         GRANT EXECUTE ON FUNCTION byok.attach_members(regclass, name, name) TO app_migrator;",
    )
    .unwrap();
    let mut other = p.sb.cluster.client_as("app_migrator");
    let e = other
        .batch_execute("SELECT byok.attach_members('public.workspace_members')")
        .expect_err("app_migrator is not byok_admin");
    assert_eq!(sqlstate(&e), "42501");
    assert!(error_text(&e).contains("byok_admin"), "{}", error_text(&e));
    // The PostgREST roles configure nothing either.
    for role in ["anon", "authenticated", "service_role"] {
        let e =
            p.sb.request(role, Some(&p.user_a), |tx| {
                tx.query("SELECT byok.grant_supabase_roles()", &[])
            })
            .expect_err(role);
        assert_eq!(sqlstate(&e), "42501", "{role}");
    }
}

#[test]
fn members_add_the_sidecar_validates_service_role_uses_and_postgres_pauses_and_deletes() {
    let p = supabase_project(SupabaseOptions::default());
    let (key_a, key_b) = (sample_key("anthropic", 11), sample_key("openai", 12));

    // Requests as PostgREST makes them: members add keys to their own workspace only.
    let added_a =
        p.sb.request("authenticated", Some(&p.user_a), |tx| {
            add_key(tx, p.ws_a, "anthropic", &key_a, Some("prod"))
        })
        .unwrap();
    assert_eq!(added_a.masked, mask(&key_a));
    p.sb.request("authenticated", Some(&p.user_b), |tx| {
        add_key(tx, p.ws_b, "openai", &key_b, None)
    })
    .unwrap();
    let e =
        p.sb.request("authenticated", Some(&p.user_a), |tx| {
            add_key(tx, p.ws_b, "anthropic", &key_a, None)
        })
        .expect_err("user A adding to workspace B");
    assert_eq!(sqlstate(&e), "42501");
    let e =
        p.sb.request("authenticated", Some(&p.user_b), |tx| list_keys(tx, p.ws_a))
            .expect_err("user B listing workspace A");
    assert_eq!(sqlstate(&e), "42501");
    let e =
        p.sb.request("anon", None, |tx| list_keys(tx, p.ws_a))
            .expect_err("anon listing");
    assert_eq!(sqlstate(&e), "42501");

    // The sidecar, logged in as the role the migration created.
    let mut sidecar = p.sb.cluster.client_as("byok_sidecar");
    let done = finish_all(&mut sidecar, "valid");
    let mut opened: Vec<String> = done.iter().map(|(c, _)| c.api_key.clone()).collect();
    opened.sort();
    let mut expected = vec![key_a.clone(), key_b.clone()];
    expected.sort();
    assert_eq!(
        opened, expected,
        "claim_jobs must return the keys the members added"
    );
    assert!(
        done.iter().all(|(_, st)| st == "active"),
        "{:?}",
        done.iter().map(|d| &d.1).collect::<Vec<_>>()
    );

    // use_key: service_role yes, authenticated never.
    let used =
        p.sb.request("service_role", None, |tx| use_key(tx, p.ws_a, "anthropic"))
            .unwrap();
    assert_eq!(used, key_a);
    let e =
        p.sb.request("authenticated", Some(&p.user_a), |tx| {
            use_key(tx, p.ws_a, "anthropic")
        })
        .expect_err("authenticated use_key");
    assert_eq!(sqlstate(&e), "42501");

    // The 'key activity' page: members read their workspace's audit trail, nothing else.
    let trail = |user: &str| -> Vec<(Uuid, String)> {
        p.sb.request("authenticated", Some(user), |tx| {
            tx.query(
                "SELECT workspace_id, action FROM byok.audit_log ORDER BY id",
                &[],
            )
        })
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let a_rows = trail(&p.user_a);
    assert!(a_rows.iter().all(|(ws, _)| *ws == p.ws_a), "{a_rows:?}");
    let a_actions: Vec<&str> = a_rows.iter().map(|(_, a)| a.as_str()).collect();
    // use_key's uses are counted (byok.key_usage), not audited row by row,
    // unless byok.use_audit = 'each' (integration/tests/use_record.rs).
    assert_eq!(a_actions, ["add", "validate"]);
    let b_rows = trail(&p.user_b);
    assert!(
        !b_rows.is_empty() && b_rows.iter().all(|(ws, _)| *ws == p.ws_b),
        "{b_rows:?}"
    );
    let stranger = Uuid::new_v4().to_string();
    assert!(
        trail(&stranger).is_empty(),
        "a user of no workspace reads audit rows"
    );
    let e =
        p.sb.request("anon", None, |tx| {
            tx.query("SELECT 1 FROM byok.audit_log", &[])
        })
        .expect_err("anon audit_log");
    assert_eq!(sqlstate(&e), "42501");

    // Workspace lifecycle from the app's side, as postgres.
    let mut pg = p.sb.postgres();
    pg.execute(
        "UPDATE public.workspaces SET status = 'paused' WHERE id = $1",
        &[&p.ws_a],
    )
    .unwrap();
    pg.execute("DELETE FROM public.workspaces WHERE id = $1", &[&p.ws_b])
        .unwrap();
    let state = |ws: Uuid| -> (String, Option<String>) {
        let r =
            p.sb.superuser()
                .query_one(
                    "SELECT status, revoked_cause FROM byok.keys WHERE workspace_id = $1",
                    &[&ws],
                )
                .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        state(p.ws_a),
        ("revoked".to_string(), Some("workspace_paused".to_string()))
    );
    assert_eq!(
        state(p.ws_b),
        ("revoked".to_string(), Some("workspace_deleted".to_string()))
    );
    let e =
        p.sb.request("service_role", None, |tx| use_key(tx, p.ws_a, "anthropic"))
            .expect_err("a paused workspace's key");
    assert_eq!(
        sqlstate(&e),
        "P0002",
        "service_role is authorized; the key is gone"
    );
    let e =
        p.sb.request("authenticated", Some(&p.user_a), |tx| {
            add_key(tx, p.ws_a, "anthropic", &key_a, None)
        })
        .expect_err("adding to a paused workspace");
    assert_eq!(sqlstate(&e), "55000");
}
