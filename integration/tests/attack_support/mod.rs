//! Shared setup of the attack_* tests: the attacker is `appowner`, an
//! ordinary LOGIN role (as `postgres` is on Supabase) that owns schema `app`
//! and the tables pg_byok is attached to. Members act through
//! `authenticator` the way PostgREST does.
//!
//! `app.record()` is the attacker's payload: it notes who runs it
//! (`current_user`) in `app.seen` and tries to make `appowner` a superuser.
//! It is VOLATILE, so an IMMUTABLE wrapper (`app.boom()`, usable in index
//! expressions, predicates and statistics) can run it from a read-only
//! context. Every app-table statement is run by `appowner`: a superuser
//! touching a hostile table would run its code by Postgres' own rules, which
//! is not what these tests are about.
#![allow(dead_code)]

use byok_integration::postgres::{self, Client, Transaction};
use byok_integration::{Cluster, ClusterOptions};
use uuid::Uuid;

pub const OWNER: &str = "appowner";

const ROLES: &str = "
    CREATE ROLE anon NOLOGIN NOINHERIT;
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    CREATE ROLE authenticator LOGIN NOINHERIT;
    GRANT anon, authenticated, service_role TO authenticator;
    CREATE ROLE appowner LOGIN;
    CREATE SCHEMA app AUTHORIZATION appowner;
    SELECT byok.grant_supabase_roles();
";

/// Run by appowner: its tables, the payload, and the grants the API needs.
const APP: &str = "
    CREATE TABLE app.workspaces (id uuid PRIMARY KEY, status text NOT NULL DEFAULT 'active');
    CREATE TABLE app.members (workspace_id uuid NOT NULL, user_id uuid NOT NULL,
                              PRIMARY KEY (workspace_id, user_id));
    CREATE TABLE app.seen (who text NOT NULL, what text);
    GRANT INSERT ON app.seen TO PUBLIC;
    GRANT USAGE ON SCHEMA app TO PUBLIC;
    GRANT SELECT ON app.workspaces, app.members TO authenticated;
    CREATE FUNCTION app.record() RETURNS integer LANGUAGE plpgsql VOLATILE AS $f$
    BEGIN
        INSERT INTO app.seen VALUES (current_user, 'ran');
        BEGIN
            EXECUTE 'ALTER ROLE appowner SUPERUSER';
            INSERT INTO app.seen VALUES (current_user, 'ALTER ROLE appowner SUPERUSER succeeded');
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
        RETURN 1;
    END $f$;
    CREATE FUNCTION app.boom() RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $f$
    BEGIN
        RETURN app.record();
    END $f$;
";

pub struct App {
    pub c: Cluster,
    /// A workspace in app.workspaces (status 'active') with member `member`.
    pub ws: Uuid,
    pub member: Uuid,
}

impl App {
    /// A cluster with the roles, appowner's schema and tables, both attached.
    pub fn start() -> App {
        let c = Cluster::start(ClusterOptions::default());
        c.client()
            .batch_execute(ROLES)
            .unwrap_or_else(|e| c.fail("roles", &e));
        let app = App {
            c,
            ws: Uuid::new_v4(),
            member: Uuid::new_v4(),
        };
        app.owner()
            .batch_execute(APP)
            .unwrap_or_else(|e| app.c.fail("app schema as appowner", &e));
        app.owner_exec(&format!(
            "INSERT INTO app.workspaces (id) VALUES ('{}');
             INSERT INTO app.members VALUES ('{}', '{}');",
            app.ws, app.ws, app.member
        ));
        app.su_exec(
            "SELECT byok.attach_members('app.members', 'workspace_id', 'user_id');
             SELECT byok.attach_workspaces('app.workspaces', 'id', 'status');",
        );
        app
    }

    /// A fresh session as appowner (fresh: no relcache from earlier runs).
    pub fn owner(&self) -> Client {
        self.c.client_as(OWNER)
    }

    #[track_caller]
    pub fn owner_exec(&self, sql: &str) {
        self.owner()
            .batch_execute(sql)
            .unwrap_or_else(|e| self.c.fail(&format!("as appowner: {sql}"), &e));
    }

    #[track_caller]
    pub fn su_exec(&self, sql: &str) {
        self.c
            .client()
            .batch_execute(sql)
            .unwrap_or_else(|e| self.c.fail(&format!("as superuser: {sql}"), &e));
    }

    /// Run `f` as PostgREST would for `member` (role authenticated), in a
    /// fresh session; commits on success.
    pub fn as_member<T>(
        &self,
        member: Uuid,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let mut client = self.c.client_as("authenticator");
        let mut tx = client.transaction()?;
        let claims = format!(r#"{{"sub":"{member}","role":"authenticated"}}"#);
        tx.query_one(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[&claims],
        )?;
        tx.batch_execute("SET LOCAL ROLE authenticated")?;
        let out = f(&mut tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Add a key as superuser (no membership query) for `ws`; its id.
    pub fn su_add_key(&self, ws: Uuid, seed: u64) -> Uuid {
        let key = byok_integration::sample_key("anthropic", seed);
        self.c
            .client()
            .query_one(
                "SELECT id FROM byok.add_key($1, 'anthropic', $2)",
                &[&ws, &key],
            )
            .unwrap_or_else(|e| self.c.fail("add_key as superuser", &e))
            .get(0)
    }

    pub fn key_status(&self, id: Uuid) -> String {
        self.c
            .client()
            .query_one("SELECT status FROM byok.keys WHERE id = $1", &[&id])
            .unwrap()
            .get(0)
    }

    /// Who ran the payload since the last call (and forget them).
    pub fn take_seen(&self) -> Vec<(String, String)> {
        let mut db = self.c.client();
        let rows = db
            .query("DELETE FROM app.seen RETURNING who, what", &[])
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    /// Is appowner a superuser now?
    pub fn owner_is_superuser(&self) -> bool {
        self.c
            .client()
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
                &[&OWNER],
            )
            .unwrap()
            .get(0)
    }

    /// The payload ran as nobody but appowner, and appowner is no superuser.
    #[track_caller]
    pub fn assert_only_owner_ran(&self, what: &str) {
        let seen = self.take_seen();
        let others: Vec<_> = seen.iter().filter(|(who, _)| who != OWNER).collect();
        assert!(
            others.is_empty(),
            "{what}: the app owner's code ran as another role: {others:?}"
        );
        assert!(
            !self.owner_is_superuser(),
            "{what}: appowner became a superuser"
        );
    }
}
