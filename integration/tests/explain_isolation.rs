//! Security finding 8: EXPLAIN ANALYZE must tell a member of workspace B
//! nothing about workspace A's keys.
//!
//! Row-level security filters rows after the scan read them, so EXPLAIN
//! ANALYZE on byok.keys counted A's rows ("Rows Removed by Filter: 2"), and
//! conditions on indexed columns (vendor, status, created_at) told which of
//! them exist. Members therefore read keys through byok.list_keys only. The
//! test compares, for several probing queries, what a member of B gets for
//! workspace A (two keys) and for a workspace that has none: it must be the
//! same, whatever the design (an error, or a plan that read nothing).

mod common;

use byok_integration::postgres::{self, Transaction};
use byok_integration::{sample_key, sqlstate, Cluster, ClusterOptions};
use common::*;
use uuid::Uuid;

const SETUP: &str = "
    CREATE ROLE anon NOLOGIN NOINHERIT;
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    CREATE ROLE authenticator LOGIN NOINHERIT;
    GRANT anon, authenticated, service_role TO authenticator;
    SELECT byok.grant_supabase_roles();
    CREATE SCHEMA app;
    CREATE TABLE app.members (space uuid NOT NULL, person text NOT NULL, PRIMARY KEY (space, person));
    SELECT byok.attach_members(member_table => 'app.members', workspace_column => 'space',
                               user_column => 'person');
";

/// Run `f` as PostgREST would for a request of `role` with JWT subject `sub`.
fn act<T>(
    c: &Cluster,
    role: &str,
    sub: Uuid,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<T, postgres::Error>,
) -> Result<T, postgres::Error> {
    let mut client = c.client_as("authenticator");
    let mut tx = client.transaction()?;
    let claims = format!(r#"{{"sub":"{sub}","role":"{role}"}}"#);
    tx.query_one(
        "SELECT set_config('request.jwt.claims', $1, true)",
        &[&claims],
    )?;
    tx.batch_execute(&format!("SET LOCAL ROLE {role}"))?;
    let out = f(&mut tx)?;
    tx.commit()?;
    Ok(out)
}

/// What `sql` (with `{ws}` replaced) shows the caller: the plan's text, or
/// the error's SQLSTATE and message, with the workspace id blanked out.
fn outcome(c: &Cluster, sub: Uuid, sql: &str, ws: Uuid) -> String {
    let sql = sql.replace("{ws}", &ws.to_string());
    let r = act(c, "authenticated", sub, |tx| {
        tx.query(sql.as_str(), &[]).map(|rows| {
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        })
    });
    let shown = match r {
        Ok(plan) => plan,
        Err(e) => format!("ERROR {}: {}", sqlstate(&e), error_text(&e)),
    };
    shown.replace(&ws.to_string(), "<ws>")
}

#[test]
fn explain_analyze_by_a_member_of_b_shows_nothing_about_a() {
    let c = Cluster::start(ClusterOptions::default());
    let mut su = c.client();
    su.batch_execute(SETUP)
        .unwrap_or_else(|e| c.fail("roles, grants, members", &e));
    let (a, b, empty) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for (ws, who) in [(a, alice), (b, bob)] {
        su.execute(
            "INSERT INTO app.members (space, person) VALUES ($1, $2)",
            &[&ws, &who.to_string()],
        )
        .unwrap();
    }
    let a_keys = [
        add_key(&mut su, a, "anthropic", &sample_key("anthropic", 81), None).unwrap(),
        add_key(&mut su, a, "openai", &sample_key("openai", 82), None).unwrap(),
    ];
    let b_key = add_key(&mut su, b, "anthropic", &sample_key("anthropic", 83), None).unwrap();

    let probes = [
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) \
         SELECT id FROM byok.keys WHERE workspace_id = '{ws}'",
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) \
         SELECT id FROM byok.keys WHERE workspace_id = '{ws}' AND vendor = 'openai'",
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) \
         SELECT id FROM byok.keys WHERE workspace_id = '{ws}' AND vendor = 'anthropic' \
           AND status = 'pending'",
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) \
         SELECT id FROM byok.keys WHERE workspace_id = '{ws}' AND created_at > now() - interval '1 day'",
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT id FROM byok.keys",
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) \
         SELECT * FROM byok.list_keys(workspace_id => '{ws}')",
    ];
    for probe in probes {
        let about_a = outcome(&c, bob, probe, a);
        let about_nothing = outcome(&c, bob, probe, empty);
        assert_eq!(
            about_a, about_nothing,
            "bob (member of B) sees a difference between workspace A (2 keys) and an empty \
             workspace with: {probe}"
        );
        assert!(
            !about_a.contains("Rows Removed"),
            "{probe} shows rows bob may not see:\n{about_a}"
        );
    }

    // Members read their own keys the documented way: byok.list_keys.
    let own_b = act(&c, "authenticated", bob, |tx| list_keys(tx, b)).unwrap();
    assert_eq!(
        own_b.iter().map(|k| k.id).collect::<Vec<_>>(),
        vec![b_key.id]
    );
    let mut own_a: Vec<Uuid> = act(&c, "authenticated", alice, |tx| list_keys(tx, a))
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    own_a.sort();
    let mut expected: Vec<Uuid> = a_keys.iter().map(|k| k.id).collect();
    expected.sort();
    assert_eq!(own_a, expected);
    expect_state(
        act(&c, "authenticated", bob, |tx| list_keys(tx, a)),
        "42501",
        "bob list_keys(A)",
    );
}
