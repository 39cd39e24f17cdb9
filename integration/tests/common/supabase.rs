//! The tenancy world: Supabase-like roles (anon, authenticated,
//! service_role and a LOGIN `authenticator` that switches to them the way
//! PostgREST does), an app schema with its own workspace and membership
//! tables named unlike any default, and the extension's attach_members /
//! attach_workspaces wiring. Shared by the `tenancy_*` tests.

use super::*;
use byok_integration::postgres::{self, Client, Transaction};
use byok_integration::{sample_key, sqlstate, Cluster, ClusterOptions};
use serde_json::Value;
use uuid::Uuid;

pub const SUPABASE_ROLES: &str = "
    CREATE ROLE anon NOLOGIN NOINHERIT;
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    CREATE ROLE authenticator LOGIN NOINHERIT;
    GRANT anon, authenticated, service_role TO authenticator;
";

/// Permissive defaults some installations carry: everything new is granted
/// to the API roles. pg_byok must not end up exposed by them.
pub const PERMISSIVE_DEFAULTS: &str = "
    ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO anon, authenticated, service_role;
";

pub const APP_SCHEMA: &str = "
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

pub const ATTACH: &str = "
    SELECT byok.attach_members(member_table => 'app.org_people', workspace_column => 'org_ref', user_column => 'person');
    SELECT byok.attach_workspaces(workspace_table => 'app.orgs', id_column => 'org_uuid', status_column => 'lifecycle');
";

pub struct World {
    pub c: Cluster,
    /// Workspaces A and B; alice is a member of A, bob of B, carol of none.
    pub a: Uuid,
    pub b: Uuid,
    pub alice: Uuid,
    pub bob: Uuid,
    pub carol: Uuid,
    /// Active anthropic keys of A and B (added by their members, validated).
    pub key_a: String,
    pub key_b: String,
    pub id_a: Uuid,
    pub id_b: Uuid,
}

#[derive(Clone, Copy)]
pub enum RolesCreated {
    BeforeExtension,
    AfterExtension,
}

pub fn world(when: RolesCreated) -> World {
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
    pub fn bare(c: Cluster) -> World {
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
    pub fn act<T>(
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
    pub fn act_raw_claims<T>(
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

    pub fn new_org(&self, name: &str, members: &[Uuid]) -> Uuid {
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
    pub fn validate_all(&self) -> usize {
        let mut s = self.c.client_as("sidecar");
        let done = finish_all(&mut s, "valid");
        for (cl, st) in &done {
            assert_eq!(st, "active", "validating {}", cl.key_id);
        }
        done.len()
    }

    pub fn su(&self) -> Client {
        self.c.client()
    }

    /// use_key as service_role through the API, with a clear failure message.
    pub fn service_use_key(&self, ws: Uuid, vendor: &str) -> String {
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
    pub fn consumer_use_key(&self, ws: Uuid, vendor: &str) -> Result<String, postgres::Error> {
        use_key(&mut self.c.client_as("backend"), ws, vendor)
    }
}

/// Every audit row as JSON (read as superuser).
pub fn audit_rows(db: &mut Client) -> Vec<Value> {
    db.query("SELECT row_to_json(a) FROM byok.audit_log a", &[])
        .expect("read byok.audit_log as superuser")
        .iter()
        .map(|r| r.get::<_, Value>(0))
        .collect()
}

/// Does any column of this audit row hold exactly `s` (compared as text)?
pub fn has_value(row: &Value, s: &str) -> bool {
    row.as_object()
        .map(|o| {
            o.values().any(|v| match v {
                Value::String(t) => t.eq_ignore_ascii_case(s),
                Value::Null => false,
                other => {
                    let t = other.to_string();
                    t == s
                }
            })
        })
        .unwrap_or(false)
}

pub fn audit_for_key(rows: &[Value], key_id: Uuid) -> Vec<&Value> {
    rows.iter()
        .filter(|r| has_value(r, &key_id.to_string()))
        .collect()
}
