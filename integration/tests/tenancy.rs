//! Issue 3: tenancy through real roles. Supabase-like roles (anon,
//! authenticated, service_role and a LOGIN `authenticator` that switches to
//! them the way PostgREST does), an app schema with its own workspace and
//! membership tables named unlike any default, and the extension's
//! attach_members / attach_workspaces wiring.

mod common;

use byok_integration::postgres::{self, Client, Transaction};
use byok_integration::{sample_key, sqlstate, Cluster, ClusterOptions};
use common::*;
use serde_json::Value;
use uuid::Uuid;

const SUPABASE_ROLES: &str = "
    CREATE ROLE anon NOLOGIN NOINHERIT;
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    CREATE ROLE authenticator LOGIN NOINHERIT;
    GRANT anon, authenticated, service_role TO authenticator;
";

/// Permissive defaults some installations carry: everything new is granted
/// to the API roles. pg_byok must not end up exposed by them.
const PERMISSIVE_DEFAULTS: &str = "
    ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO anon, authenticated, service_role;
";

const APP_SCHEMA: &str = "
    CREATE SCHEMA app;
    CREATE TABLE app.orgs (
        org_uuid     uuid PRIMARY KEY,
        display_name text NOT NULL,
        lifecycle    text NOT NULL DEFAULT 'live'
    );
    CREATE TABLE app.org_people (
        org_ref uuid NOT NULL REFERENCES app.orgs (org_uuid) ON DELETE CASCADE,
        person  text NOT NULL,
        PRIMARY KEY (org_ref, person)
    );
    GRANT USAGE ON SCHEMA app TO authenticated, service_role;
    GRANT SELECT ON app.orgs, app.org_people TO authenticated;
    GRANT SELECT, INSERT, UPDATE, DELETE ON app.orgs, app.org_people TO service_role;
";

const ATTACH: &str = "
    SELECT byok.attach_members(member_table => 'app.org_people', workspace_column => 'org_ref', user_column => 'person');
    SELECT byok.attach_workspaces(workspace_table => 'app.orgs', id_column => 'org_uuid', status_column => 'lifecycle');
";

struct World {
    c: Cluster,
    /// Workspaces A and B; alice is a member of A, bob of B, carol of none.
    a: Uuid,
    b: Uuid,
    alice: Uuid,
    bob: Uuid,
    carol: Uuid,
    /// Active anthropic keys of A and B (added by their members, validated).
    key_a: String,
    key_b: String,
    id_a: Uuid,
    id_b: Uuid,
}

#[derive(Clone, Copy)]
enum RolesCreated {
    BeforeExtension,
    AfterExtension,
}

fn world(when: RolesCreated) -> World {
    let c = match when {
        RolesCreated::BeforeExtension => {
            let c = Cluster::start(ClusterOptions {
                create_extension: false,
                ..Default::default()
            });
            let mut db = c.client();
            db.batch_execute(SUPABASE_ROLES).unwrap();
            db.batch_execute(PERMISSIVE_DEFAULTS).unwrap();
            db.batch_execute("CREATE EXTENSION pg_byok")
                .unwrap_or_else(|e| c.fail("CREATE EXTENSION pg_byok", &e));
            c
        }
        RolesCreated::AfterExtension => {
            let c = Cluster::start(ClusterOptions::default());
            let mut db = c.client();
            db.batch_execute(SUPABASE_ROLES).unwrap();
            // Before the documented call, the new roles reach nothing.
            let mut w = World::bare(c);
            w.a = Uuid::new_v4();
            let sub = Uuid::new_v4();
            expect_state(
                w.act("authenticated", Some(sub), |tx| list_keys(tx, w.a)),
                "42501",
                "authenticated before grant_supabase_roles",
            );
            expect_state(
                w.act("service_role", None, |tx| use_key(tx, w.a, "anthropic")),
                "42501",
                "service_role before grant",
            );
            expect_state(
                w.act("anon", None, |tx| list_keys(tx, w.a)),
                "42501",
                "anon before grant",
            );
            let c = w.c;
            c.client()
                .batch_execute("SELECT byok.grant_supabase_roles()")
                .unwrap_or_else(|e| c.fail("byok.grant_supabase_roles()", &e));
            c
        }
    };
    create_login(&c, "sidecar", &["byok_worker"]);
    create_login(&c, "backend", &["byok_consumer"]);
    let mut db = c.client();
    db.batch_execute(APP_SCHEMA).unwrap();
    db.batch_execute(ATTACH)
        .unwrap_or_else(|e| c.fail("attach_members / attach_workspaces", &e));

    let mut w = World::bare(c);
    w.a = w.new_org("Acme", &[w.alice]);
    w.b = w.new_org("Globex", &[w.bob]);
    w.key_a = sample_key("anthropic", 7001);
    w.key_b = sample_key("anthropic", 7002);
    let (alice, bob, a, b) = (w.alice, w.bob, w.a, w.b);
    let (ka, kb) = (w.key_a.clone(), w.key_b.clone());
    w.id_a = w
        .act("authenticated", Some(alice), |tx| {
            add_key(tx, a, "anthropic", &ka, Some("acme prod"))
        })
        .unwrap()
        .id;
    w.id_b = w
        .act("authenticated", Some(bob), |tx| {
            add_key(tx, b, "anthropic", &kb, Some("globex prod"))
        })
        .unwrap()
        .id;
    w.validate_all();
    w
}

impl World {
    fn bare(c: Cluster) -> World {
        World {
            c,
            a: Uuid::nil(),
            b: Uuid::nil(),
            alice: Uuid::new_v4(),
            bob: Uuid::new_v4(),
            carol: Uuid::new_v4(),
            key_a: String::new(),
            key_b: String::new(),
            id_a: Uuid::nil(),
            id_b: Uuid::nil(),
        }
    }

    /// Run `f` the way PostgREST runs a request: as `authenticator`, in a
    /// transaction, with the JWT claims set locally and `SET LOCAL ROLE`.
    /// Commits on success, rolls back on error.
    fn act<T>(
        &self,
        role: &str,
        sub: Option<Uuid>,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let mut client = self.c.client_as("authenticator");
        let mut tx = client.transaction()?;
        let claims = match sub {
            Some(s) => format!(r#"{{"sub":"{s}","role":"{role}"}}"#),
            None => format!(r#"{{"role":"{role}"}}"#),
        };
        tx.query_one(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[&claims],
        )?;
        tx.batch_execute(&format!("SET LOCAL ROLE {role}"))?;
        let out = f(&mut tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Like `act` with claims given verbatim (for injection attempts in the sub).
    fn act_raw_claims<T>(
        &self,
        role: &str,
        claims: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let mut client = self.c.client_as("authenticator");
        let mut tx = client.transaction()?;
        tx.query_one(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[&claims],
        )?;
        tx.batch_execute(&format!("SET LOCAL ROLE {role}"))?;
        let out = f(&mut tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn new_org(&self, name: &str, members: &[Uuid]) -> Uuid {
        let id = Uuid::new_v4();
        let mut db = self.c.client();
        db.execute(
            "INSERT INTO app.orgs (org_uuid, display_name) VALUES ($1, $2)",
            &[&id, &name],
        )
        .unwrap();
        for m in members {
            db.execute(
                "INSERT INTO app.org_people (org_ref, person) VALUES ($1, $2)",
                &[&id, &m.to_string()],
            )
            .unwrap();
        }
        id
    }

    /// Claim every ready job as the sidecar and finish it valid.
    fn validate_all(&self) -> usize {
        let mut s = self.c.client_as("sidecar");
        let done = finish_all(&mut s, "valid");
        for (cl, st) in &done {
            assert_eq!(st, "active", "validating {}", cl.key_id);
        }
        done.len()
    }

    fn su(&self) -> Client {
        self.c.client()
    }

    /// use_key as service_role through the API, with a clear failure message.
    fn service_use_key(&self, ws: Uuid, vendor: &str) -> String {
        self.act("service_role", None, |tx| use_key(tx, ws, vendor)).unwrap_or_else(|e| {
            panic!(
                "service_role must be able to call byok.use_key (API.md: byok_consumer is granted to \
                 service_role; Supabase creates service_role NOINHERIT, so a role membership alone \
                 grants it nothing): {} (SQLSTATE {})",
                error_text(&e),
                sqlstate(&e)
            )
        })
    }

    /// use_key as the backend LOGIN role granted byok_consumer.
    fn consumer_use_key(&self, ws: Uuid, vendor: &str) -> Result<String, postgres::Error> {
        use_key(&mut self.c.client_as("backend"), ws, vendor)
    }
}

/// Every audit row as JSON (read as superuser).
fn audit_rows(db: &mut Client) -> Vec<Value> {
    db.query("SELECT row_to_json(a) FROM byok.audit_log a", &[])
        .expect("read byok.audit_log as superuser")
        .iter()
        .map(|r| r.get::<_, Value>(0))
        .collect()
}

/// Does any column of this audit row hold exactly `s` (compared as text)?
fn has_value(row: &Value, s: &str) -> bool {
    row.as_object()
        .map(|o| {
            o.values().any(|v| match v {
                Value::String(t) => t.eq_ignore_ascii_case(s),
                Value::Null => false,
                other => other.to_string() == s,
            })
        })
        .unwrap_or(false)
}

fn audit_for_key<'a>(rows: &'a [Value], key_id: Uuid) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| has_value(r, &key_id.to_string()))
        .collect()
}

fn isolation_checks(w: &World) {
    let (a, b, alice, bob, carol) = (w.a, w.b, w.alice, w.bob, w.carol);
    let (id_a, id_b) = (w.id_a, w.id_b);
    let before_b = list_keys(&mut w.su(), b).unwrap();

    // alice, in her own workspace: add, list, select, revoke, revalidate.
    let extra = sample_key("openai", 7101);
    let own = w
        .act("authenticated", Some(alice), |tx| {
            add_key(tx, a, "openai", &extra, Some("second"))
        })
        .unwrap();
    assert_eq!(own.status, "pending");
    let listed = w
        .act("authenticated", Some(alice), |tx| list_keys(tx, a))
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.workspace_id == a));
    let ok: bool = w
        .act("authenticated", Some(alice), |tx| {
            tx.query_one("SELECT byok.authorize(workspace_id => $1)", &[&a])
                .map(|r| r.get(0))
        })
        .unwrap();
    assert!(ok, "authorize(A) for alice");
    let no: bool = w
        .act("authenticated", Some(alice), |tx| {
            tx.query_one("SELECT byok.authorize(workspace_id => $1)", &[&b])
                .map(|r| r.get(0))
        })
        .unwrap();
    assert!(!no, "authorize(B) for alice");
    let r = w
        .act("authenticated", Some(alice), |tx| {
            revalidate_key(tx, own.id)
        })
        .unwrap();
    assert_eq!(r.id, own.id);
    let m: String = w
        .act("authenticated", Some(alice), |tx| {
            tx.query_one("SELECT byok.mask(api_key => $1)", &[&extra])
                .map(|r| r.get(0))
        })
        .unwrap();
    assert_eq!(m, mask(&extra));
    let red: String = w
        .act("authenticated", Some(alice), |tx| {
            tx.query_one(
                "SELECT byok.redact(input => $1)",
                &[&format!("key={extra}")],
            )
            .map(|r| r.get(0))
        })
        .unwrap();
    assert_no_key_material(&red, &[&extra], "redact for authenticated");
    // Members read keys through list_keys only (security finding 8: RLS
    // filters after the scan, and EXPLAIN ANALYZE showed what it filtered).
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query(
                "SELECT id, workspace_id, vendor, label, masked, status FROM byok.keys",
                &[],
            )
        }),
        "42501",
        "alice SELECT byok.keys",
    );
    let revoked = w
        .act("authenticated", Some(alice), |tx| {
            revoke_key(tx, own.id, Some("not needed"))
        })
        .unwrap();
    assert_eq!(revoked.status, "revoked");

    // alice against workspace B: 42501 everywhere, zero rows for SELECT.
    let k = sample_key("anthropic", 7102);
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            add_key(tx, b, "anthropic", &k, None)
        }),
        "42501",
        "alice add_key(B)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| list_keys(tx, b)),
        "42501",
        "alice list_keys(B)",
    );
    let e_existing = expect_state(
        w.act("authenticated", Some(alice), |tx| {
            revoke_key(tx, id_b, None)
        }),
        "42501",
        "alice revoke_key(B's key)",
    );
    let ghost = Uuid::new_v4();
    let e_ghost = expect_state(
        w.act("authenticated", Some(alice), |tx| {
            revoke_key(tx, ghost, None)
        }),
        "42501",
        "alice revoke_key(unknown id)",
    );
    // The refusal does not reveal whether the key exists.
    assert_eq!(
        error_text(&e_existing).replace(&id_b.to_string(), "<id>"),
        error_text(&e_ghost).replace(&ghost.to_string(), "<id>"),
        "same refusal for another workspace's key and for no key"
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| revalidate_key(tx, id_b)),
        "42501",
        "alice revalidate_key(B's key)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| revalidate_key(tx, ghost)),
        "42501",
        "alice revalidate_key(unknown)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            revoke_workspace(tx, b, None)
        }),
        "42501",
        "alice revoke_workspace(B)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query(
                "SELECT id, masked, status FROM byok.keys WHERE workspace_id = $1",
                &[&b],
            )
        }),
        "42501",
        "alice SELECT B's rows",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query("SELECT id FROM byok.keys WHERE id = $1", &[&id_b])
        }),
        "42501",
        "alice SELECT B's key by id",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query("SELECT ciphertext FROM byok.keys", &[])
        }),
        "42501",
        "alice ciphertext",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query("SELECT * FROM byok.keys", &[])
        }),
        "42501",
        "alice SELECT *",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.execute(
                "UPDATE byok.keys SET label = 'x' WHERE workspace_id = $1",
                &[&b],
            )
        }),
        "42501",
        "alice UPDATE byok.keys",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.execute("DELETE FROM byok.keys WHERE workspace_id = $1", &[&b])
        }),
        "42501",
        "alice DELETE byok.keys",
    );
    // authenticated cannot use_key, even for its own workspace, nor act as the worker.
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            use_key(tx, a, "anthropic")
        }),
        "42501",
        "alice use_key(A)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            use_key(tx, b, "anthropic")
        }),
        "42501",
        "alice use_key(B)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            claim_jobs(tx, "x", 1, 60)
        }),
        "42501",
        "alice claim_jobs",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| tx.execute("SELECT byok.attach_members(member_table => 'app.orgs', workspace_column => 'org_uuid', user_column => 'display_name')", &[])),
        "42501",
        "alice attach_members",
    );

    // bob against A, symmetrically.
    expect_state(
        w.act("authenticated", Some(bob), |tx| list_keys(tx, a)),
        "42501",
        "bob list_keys(A)",
    );
    expect_state(
        w.act("authenticated", Some(bob), |tx| revoke_key(tx, id_a, None)),
        "42501",
        "bob revoke_key(A's key)",
    );
    expect_state(
        w.act("authenticated", Some(bob), |tx| revalidate_key(tx, id_a)),
        "42501",
        "bob revalidate_key(A's key)",
    );
    expect_state(
        w.act("authenticated", Some(bob), |tx| {
            add_key(tx, a, "anthropic", &k, None)
        }),
        "42501",
        "bob add_key(A)",
    );
    expect_state(
        w.act("authenticated", Some(bob), |tx| {
            tx.query("SELECT id, workspace_id FROM byok.keys", &[])
        }),
        "42501",
        "bob SELECT",
    );
    assert_eq!(
        w.act("authenticated", Some(bob), |tx| list_keys(tx, b))
            .unwrap()
            .iter()
            .map(|k| k.workspace_id)
            .collect::<Vec<_>>(),
        vec![b],
        "bob lists only B's key"
    );

    // carol belongs nowhere; a request without a subject is nobody.
    expect_state(
        w.act("authenticated", Some(carol), |tx| list_keys(tx, a)),
        "42501",
        "carol list_keys(A)",
    );
    expect_state(
        w.act("authenticated", Some(carol), |tx| {
            add_key(tx, a, "anthropic", &k, None)
        }),
        "42501",
        "carol add_key(A)",
    );
    expect_state(
        w.act("authenticated", Some(carol), |tx| {
            tx.query("SELECT id FROM byok.keys", &[])
        }),
        "42501",
        "carol SELECT",
    );
    expect_state(
        w.act("authenticated", None, |tx| list_keys(tx, a)),
        "42501",
        "no sub list_keys(A)",
    );
    expect_state(
        w.act("authenticated", None, |tx| {
            tx.query("SELECT id FROM byok.keys", &[])
        }),
        "42501",
        "no-sub SELECT",
    );

    // anon: nothing, even carrying a member's subject.
    for sub in [None, Some(alice)] {
        let what = |f: &str| {
            format!(
                "anon ({}) {f}",
                if sub.is_some() {
                    "alice's sub"
                } else {
                    "no sub"
                }
            )
        };
        expect_state(
            w.act("anon", sub, |tx| add_key(tx, a, "anthropic", &k, None)),
            "42501",
            &what("add_key"),
        );
        expect_state(
            w.act("anon", sub, |tx| list_keys(tx, a)),
            "42501",
            &what("list_keys"),
        );
        expect_state(
            w.act("anon", sub, |tx| revoke_key(tx, id_a, None)),
            "42501",
            &what("revoke_key"),
        );
        expect_state(
            w.act("anon", sub, |tx| revalidate_key(tx, id_a)),
            "42501",
            &what("revalidate_key"),
        );
        expect_state(
            w.act("anon", sub, |tx| revoke_workspace(tx, a, None)),
            "42501",
            &what("revoke_workspace"),
        );
        expect_state(
            w.act("anon", sub, |tx| use_key(tx, a, "anthropic")),
            "42501",
            &what("use_key"),
        );
        expect_state(
            w.act("anon", sub, |tx| claim_jobs(tx, "x", 1, 60)),
            "42501",
            &what("claim_jobs"),
        );
        expect_state(
            w.act("anon", sub, |tx| {
                tx.query("SELECT byok.mask(api_key => 'abcdef')", &[])
            }),
            "42501",
            &what("mask"),
        );
        expect_state(
            w.act("anon", sub, |tx| {
                tx.query("SELECT byok.redact(input => 'abcdef')", &[])
            }),
            "42501",
            &what("redact"),
        );
        expect_state(
            w.act("anon", sub, |tx| {
                tx.query("SELECT byok.authorize(workspace_id => $1)", &[&a])
            }),
            "42501",
            &what("authorize"),
        );
        expect_state(
            w.act("anon", sub, |tx| tx.query("SELECT id FROM byok.keys", &[])),
            "42501",
            &what("SELECT byok.keys"),
        );
        expect_state(
            w.act("anon", sub, |tx| {
                tx.query("SELECT 1 FROM byok.audit_log", &[])
            }),
            "42501",
            &what("SELECT audit_log"),
        );
    }

    // Nothing of B changed, and B still serves.
    assert_eq!(list_keys(&mut w.su(), b).unwrap(), before_b);
    assert!(ciphertext(&mut w.su(), id_b).is_some());
    assert_eq!(w.consumer_use_key(b, "anthropic").unwrap(), w.key_b);

    // service_role: every workspace, use_key included; never the ciphertext column.
    assert_eq!(
        w.act("service_role", None, |tx| list_keys(tx, b))
            .unwrap()
            .len(),
        1
    );
    expect_state(
        w.act("service_role", None, |tx| {
            tx.query("SELECT ciphertext FROM byok.keys", &[])
        }),
        "42501",
        "service_role ciphertext",
    );
    assert_eq!(w.service_use_key(a, "anthropic"), w.key_a);
    assert_eq!(w.service_use_key(b, "anthropic"), w.key_b);
}

#[test]
fn isolation_with_supabase_roles_created_before_the_extension() {
    let w = world(RolesCreated::BeforeExtension);
    isolation_checks(&w);
}

#[test]
fn isolation_with_supabase_roles_created_after_the_extension() {
    let w = world(RolesCreated::AfterExtension);
    isolation_checks(&w);
    // Calling it again changes nothing.
    w.su()
        .batch_execute("SELECT byok.grant_supabase_roles()")
        .unwrap();
    isolation_checks_light(&w);
}

fn isolation_checks_light(w: &World) {
    expect_state(
        w.act("authenticated", Some(w.alice), |tx| list_keys(tx, w.b)),
        "42501",
        "alice list_keys(B)",
    );
    assert_eq!(
        w.act("authenticated", Some(w.alice), |tx| list_keys(tx, w.a))
            .unwrap()
            .len(),
        2
    );
    expect_state(
        w.act("anon", None, |tx| list_keys(tx, w.a)),
        "42501",
        "anon",
    );
    assert_eq!(w.service_use_key(w.a, "anthropic"), w.key_a);
}

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

/// A workspace with a member, an active anthropic key, a key that was
/// rotated out (already revoked) and a pending openai key (job queued).
struct Tenant {
    ws: Uuid,
    active: Uuid,
    active_key: String,
    pending: Uuid,
    revoked: Uuid,
}

/// Create tenants in phases so that validating one tenant's keys never
/// touches another tenant's pending job: every pending key is added last.
fn tenants(w: &World, specs: &[(u64, &str)]) -> Vec<Tenant> {
    let mut out = Vec::new();
    let members: Vec<(Uuid, Uuid)> = specs
        .iter()
        .map(|(_, name)| {
            let m = Uuid::new_v4();
            (w.new_org(name, &[m]), m)
        })
        .collect();
    let mut olds = Vec::new();
    for ((seed, _), (ws, m)) in specs.iter().zip(&members) {
        let k = sample_key("anthropic", seed + 1);
        olds.push(
            w.act("authenticated", Some(*m), |tx| {
                add_key(tx, *ws, "anthropic", &k, None)
            })
            .unwrap()
            .id,
        );
    }
    w.validate_all();
    let mut actives = Vec::new();
    for ((seed, _), (ws, m)) in specs.iter().zip(&members) {
        let k = sample_key("anthropic", *seed);
        actives.push((
            w.act("authenticated", Some(*m), |tx| {
                add_key(tx, *ws, "anthropic", &k, None)
            })
            .unwrap()
            .id,
            k,
        ));
    }
    w.validate_all(); // rotates the old keys out
    for (i, ((seed, _), (ws, m))) in specs.iter().zip(&members).enumerate() {
        let k = sample_key("openai", seed + 2);
        let pending = w
            .act("authenticated", Some(*m), |tx| {
                add_key(tx, *ws, "openai", &k, None)
            })
            .unwrap()
            .id;
        let mut db = w.su();
        assert_eq!(
            key_by_id(&mut db, *ws, olds[i]).status,
            "revoked",
            "rotated out"
        );
        assert_eq!(key_by_id(&mut db, *ws, actives[i].0).status, "active");
        out.push(Tenant {
            ws: *ws,
            active: actives[i].0,
            active_key: actives[i].1.clone(),
            pending,
            revoked: olds[i],
        });
    }
    out
}

fn jobs_for(db: &mut Client, ids: &[Uuid]) -> i64 {
    db.query_one(
        "SELECT count(*) FROM byok.jobs WHERE key_id = ANY($1)",
        &[&ids.to_vec()],
    )
    .unwrap()
    .get(0)
}

fn assert_revoked_by_lifecycle(w: &World, t: &Tenant, audit_before: &[Value], what: &str) {
    let mut db = w.su();
    let keys = list_keys(&mut db, t.ws).unwrap();
    for k in &keys {
        assert_eq!(
            k.status, "revoked",
            "{what}: key {} of the workspace is revoked",
            k.id
        );
        assert!(k.revoked_at.is_some());
        assert_eq!(ciphertext(&mut db, k.id), None, "{what}: ciphertext erased");
    }
    assert_eq!(
        jobs_for(&mut db, &[t.pending]),
        0,
        "{what}: pending job cancelled"
    );
    expect_state(use_key(&mut db, t.ws, "anthropic"), "P0002", what);
    let after = audit_rows(&mut db);
    for id in [t.active, t.pending] {
        let new_rows = audit_for_key(&after, id).len() - audit_for_key(audit_before, id).len();
        assert!(new_rows >= 1, "{what}: an audit row for revoked key {id}");
        assert!(
            audit_for_key(&after, id)
                .iter()
                .any(|r| has_value(r, "revoke")),
            "{what}: a 'revoke' audit row for {id}"
        );
    }
}

fn assert_untouched(w: &World, t: &Tenant, before: &[KeyInfo], what: &str) {
    let mut db = w.su();
    assert_eq!(
        &list_keys(&mut db, t.ws).unwrap(),
        before,
        "{what}: other workspace unchanged"
    );
    assert!(ciphertext(&mut db, t.active).is_some());
    assert!(ciphertext(&mut db, t.pending).is_some());
    assert_eq!(
        jobs_for(&mut db, &[t.pending]),
        1,
        "{what}: other workspace's job still queued"
    );
    assert_eq!(
        use_key(&mut db, t.ws, "anthropic").unwrap(),
        t.active_key,
        "{what}: other workspace still serves"
    );
}

#[test]
fn workspace_delete_revokes_exactly_that_workspaces_keys() {
    let w = world(RolesCreated::BeforeExtension);
    let mut ts = tenants(
        &w,
        &[
            (7500, "Initech"),
            (7510, "Hooli"),
            (7520, "Umbrella"),
            (7530, "Stark"),
        ],
    )
    .into_iter();
    let (c1, d1, e1, f1) = (
        ts.next().unwrap(),
        ts.next().unwrap(),
        ts.next().unwrap(),
        ts.next().unwrap(),
    );
    let mut db = w.su();
    let d_before = list_keys(&mut db, d1.ws).unwrap();
    let revoked_before = key_by_id(&mut db, c1.ws, c1.revoked);
    let audit_before = audit_rows(&mut db);
    let d_audit_before = audit_rows(&mut db)
        .iter()
        .filter(|r| has_value(r, &d1.ws.to_string()))
        .count();

    // The app deletes a workspace through the API as service_role.
    let n = w
        .act("service_role", None, |tx| {
            tx.execute("DELETE FROM app.orgs WHERE org_uuid = $1", &[&c1.ws])
        })
        .unwrap();
    assert_eq!(n, 1);
    assert_revoked_by_lifecycle(&w, &c1, &audit_before, "DELETE");
    // A key revoked earlier keeps its own revocation.
    let r = key_by_id(&mut db, c1.ws, c1.revoked);
    assert_eq!(
        (r.status.as_str(), r.revoked_at),
        ("revoked", revoked_before.revoked_at)
    );
    assert_eq!(
        audit_rows(&mut db)
            .iter()
            .filter(|r| has_value(r, &d1.ws.to_string()))
            .count(),
        d_audit_before,
        "no audit rows for the untouched workspace"
    );
    assert_untouched(&w, &d1, &d_before, "DELETE of another workspace");
    // The worker only ever sees the live workspace's job.
    let mut s = w.c.client_as("sidecar");
    let claims = claim_jobs(&mut s, "w", 100, 60).unwrap();
    assert!(
        claims.iter().all(|cl| cl.workspace_id != c1.ws),
        "no job of the deleted workspace is claimable"
    );
    assert!(claims.iter().any(|cl| cl.key_id == d1.pending));
    for cl in &claims {
        finish_job(
            &mut s,
            cl.job_id,
            cl.lease_token,
            "retry",
            None,
            Some(503),
            None,
        )
        .unwrap();
    }

    // Several workspaces in one statement (superuser this time).
    let audit_before = audit_rows(&mut db);
    let n = db
        .execute(
            "DELETE FROM app.orgs WHERE org_uuid IN ($1, $2)",
            &[&e1.ws, &f1.ws],
        )
        .unwrap();
    assert_eq!(n, 2);
    assert_revoked_by_lifecycle(&w, &e1, &audit_before, "multi-row DELETE (e)");
    assert_revoked_by_lifecycle(&w, &f1, &audit_before, "multi-row DELETE (f)");
    assert_eq!(
        use_key(&mut db, w.a, "anthropic").unwrap(),
        w.key_a,
        "A still serves"
    );
    assert_eq!(
        use_key(&mut db, w.b, "anthropic").unwrap(),
        w.key_b,
        "B still serves"
    );
}

#[test]
fn status_changes_revoke_and_restoring_does_not_bring_keys_back() {
    let w = world(RolesCreated::BeforeExtension);
    let mut db = w.su();
    let statuses = ["Paused", "CANCELLED", "canceled", "suspended", "Deleted"];
    let mut specs: Vec<(u64, &str)> = statuses
        .iter()
        .enumerate()
        .map(|(i, s)| (7600 + 10 * i as u64, *s))
        .collect();
    specs.push((7700, "control"));
    specs.push((7710, "control2"));
    let mut tenants = tenants(&w, &specs);
    let control2 = tenants.pop().unwrap();
    let control = tenants.pop().unwrap();
    let control_before = list_keys(&mut db, control.ws).unwrap();
    let control2_before = list_keys(&mut db, control2.ws).unwrap();
    let audit_before = audit_rows(&mut db);

    // One at a time through service_role, except the last two in one statement.
    for (t, s) in tenants.iter().zip(statuses.iter()).take(3) {
        w.act("service_role", None, |tx| {
            tx.execute(
                "UPDATE app.orgs SET lifecycle = $2 WHERE org_uuid = $1",
                &[&t.ws, s],
            )
        })
        .unwrap();
    }
    db.execute(
        "UPDATE app.orgs SET lifecycle = CASE org_uuid WHEN $1 THEN $3 ELSE $4 END WHERE org_uuid IN ($1, $2)",
        &[&tenants[3].ws, &tenants[4].ws, &statuses[3], &statuses[4]],
    )
    .unwrap();
    // Not a revoking status, and an update of another column.
    db.execute(
        "UPDATE app.orgs SET lifecycle = 'trialing' WHERE org_uuid = $1",
        &[&control.ws],
    )
    .unwrap();
    db.execute(
        "UPDATE app.orgs SET display_name = 'renamed' WHERE org_uuid = $1",
        &[&control2.ws],
    )
    .unwrap();

    for (t, s) in tenants.iter().zip(statuses.iter()) {
        assert_revoked_by_lifecycle(&w, t, &audit_before, &format!("status {s}"));
    }
    assert_untouched(&w, &control, &control_before, "status trialing");
    assert_untouched(&w, &control2, &control2_before, "rename");

    // Restoring does not bring keys back; the customer adds them again.
    let t = &tenants[0];
    db.execute(
        "UPDATE app.orgs SET lifecycle = 'live' WHERE org_uuid = $1",
        &[&t.ws],
    )
    .unwrap();
    assert!(list_keys(&mut db, t.ws)
        .unwrap()
        .iter()
        .all(|k| k.status == "revoked"));
    expect_state(
        use_key(&mut db, t.ws, "anthropic"),
        "P0002",
        "restored workspace has no key",
    );
    let fresh = sample_key("anthropic", 7800);
    let k = add_key(&mut db, t.ws, "anthropic", &fresh, None).unwrap();
    assert_eq!(k.status, "pending");
    let mut s = w.c.client_as("sidecar");
    for cl in claim_jobs(&mut s, "w", 100, 60).unwrap() {
        let outcome = if cl.key_id == k.id { "valid" } else { "retry" };
        finish_job(&mut s, cl.job_id, cl.lease_token, outcome, None, None, None).unwrap();
    }
    assert_eq!(use_key(&mut db, t.ws, "anthropic").unwrap(), fresh);

    // An inactive workspace takes no new keys: no later status change would
    // ever revoke them.
    let t2 = &tenants[1];
    let refused = sample_key("openai", 7801);
    let e = expect_state(
        add_key(&mut db, t2.ws, "openai", &refused, None),
        "55000",
        "add_key to a cancelled workspace",
    );
    assert_no_key_material(&error_text(&e), &[&refused], "55000 error");
    assert!(
        list_keys(&mut db, t2.ws)
            .unwrap()
            .iter()
            .all(|k| k.status == "revoked"),
        "the refused add left no live key"
    );
    // A workspace the attached table does not have may take keys (apps
    // create rows and keys in either order).
    add_key(&mut db, Uuid::new_v4(), "openai", &refused, None)
        .unwrap_or_else(|e| panic!("add_key to a workspace not in the table: {e}"));
}

#[test]
fn rolled_back_delete_or_status_change_leaves_keys_intact() {
    let w = world(RolesCreated::BeforeExtension);
    let t = tenants(&w, &[(7900, "Wayne")]).pop().unwrap();
    let mut db = w.su();
    let before = list_keys(&mut db, t.ws).unwrap();

    let mut tx = db.transaction().unwrap();
    tx.execute("DELETE FROM app.orgs WHERE org_uuid = $1", &[&t.ws])
        .unwrap();
    // Inside the transaction the keys are already revoked...
    assert!(list_keys(&mut tx, t.ws)
        .unwrap()
        .iter()
        .all(|k| k.status == "revoked"));
    expect_state(
        use_key(&mut tx, t.ws, "anthropic"),
        "P0002",
        "inside the deleting transaction",
    );
    tx.rollback().unwrap();
    // ...and after the rollback they are intact.
    assert_untouched(&w, &t, &before, "rolled-back DELETE");

    let r = w.act("service_role", None, |tx| {
        tx.execute(
            "UPDATE app.orgs SET lifecycle = 'paused' WHERE org_uuid = $1",
            &[&t.ws],
        )?;
        // Fail the request after the update: everything rolls back.
        tx.execute("SELECT 1/0", &[])
    });
    expect_state(r, "22012", "the failing request");
    assert_untouched(&w, &t, &before, "rolled-back status change");
}

#[test]
fn detached_workspace_table_revokes_nothing() {
    let w = world(RolesCreated::BeforeExtension);
    let mut ts = tenants(&w, &[(8000, "Cyberdyne"), (8010, "Tyrell")]);
    let t2 = ts.pop().unwrap();
    let t = ts.pop().unwrap();
    let mut db = w.su();
    db.execute(
        "SELECT byok.detach_workspaces(workspace_table => 'app.orgs')",
        &[],
    )
    .unwrap_or_else(|e| w.c.fail("detach_workspaces", &e));
    let before = list_keys(&mut db, t.ws).unwrap();
    db.execute(
        "UPDATE app.orgs SET lifecycle = 'cancelled' WHERE org_uuid = $1",
        &[&t.ws],
    )
    .unwrap();
    db.execute("DELETE FROM app.orgs WHERE org_uuid = $1", &[&t.ws])
        .unwrap();
    assert_untouched(&w, &t, &before, "after detach");

    // Attaching again restores the behaviour.
    db.batch_execute(ATTACH).unwrap();
    let audit_before = audit_rows(&mut db);
    db.execute("DELETE FROM app.orgs WHERE org_uuid = $1", &[&t2.ws])
        .unwrap();
    assert_revoked_by_lifecycle(&w, &t2, &audit_before, "DELETE after re-attach");
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
