//! A cluster laid out the way Supabase lays out its database, written from
//! the facts of that layout (not from Supabase's files):
//!
//! - `supabase_admin` is the bootstrap and only superuser.
//! - `postgres` owns the database and is `NOSUPERUSER CREATEDB CREATEROLE
//!   REPLICATION BYPASSRLS`; migrations, the SQL editor, the dashboard and
//!   `supabase db dump` run as it.
//! - `anon` and `authenticated` are `NOLOGIN NOINHERIT`, `service_role` is
//!   `NOLOGIN NOINHERIT BYPASSRLS`; PostgREST logs in as `authenticator`
//!   (`NOINHERIT`, a member of those three and of `supabase_admin`) and per
//!   request does `SET LOCAL ROLE` with `request.jwt.claims` set.
//! - `supabase_read_only_user` is `LOGIN BYPASSRLS` and a member of
//!   `pg_read_all_data`.
//! - Schema `public` grants everything to the API roles by default
//!   privileges, for objects of `postgres` and of `supabase_admin`.
//! - A superuser-only extension is created by supautils on `postgres`'s
//!   behalf: the superuser runs `CREATE EXTENSION` while the session is
//!   still `postgres`'s. [`SupabaseCluster::privileged_create_extension`]
//!   reproduces that with a `SECURITY DEFINER` function of `supabase_admin`.

use std::process::{Command, Output, Stdio};

use postgres::types::ToSql;
use uuid::Uuid;

use crate::cluster::{pg_bin, Cluster, ClusterOptions};

/// The superuser of a Supabase database.
pub const SUPERUSER: &str = "supabase_admin";

/// What `supabase_admin` runs once, before any migration: the roles and
/// the grants of the layout (see the module docs).
const LAYOUT_ROLES: &str = r#"
CREATE ROLE postgres LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role, supabase_admin TO authenticator;
CREATE ROLE supabase_read_only_user LOGIN BYPASSRLS;
GRANT pg_read_all_data TO supabase_read_only_user;
ALTER DATABASE byok OWNER TO postgres;
"#;

/// Run in database `byok` as `supabase_admin`: schema grants and permissive
/// default privileges, and the stand-in for supautils' privileged
/// extensions (schema `supautils_sim`, executable by `postgres` only).
const LAYOUT_DATABASE: &str = r#"
GRANT ALL ON DATABASE byok TO postgres;
GRANT USAGE ON SCHEMA public TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
CREATE SCHEMA supautils_sim;
CREATE FUNCTION supautils_sim.create_extension(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name <> 'pg_byok' THEN
        RAISE EXCEPTION 'not a privileged extension: %', name;
    END IF;
    EXECUTE format('CREATE EXTENSION IF NOT EXISTS %I', name);
END
$$;
REVOKE ALL ON FUNCTION supautils_sim.create_extension(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA supautils_sim TO postgres;
GRANT EXECUTE ON FUNCTION supautils_sim.create_extension(text) TO postgres;
"#;

/// A running cluster with Supabase's role layout and pg_byok preloaded (the
/// extension is not created yet: see [`SupabaseCluster::privileged_create_extension`]).
pub struct SupabaseCluster {
    /// The underlying cluster; its `client()` is `supabase_admin`'s.
    pub cluster: Cluster,
}

/// Options for [`SupabaseCluster::start`].
#[derive(Debug, Clone, Default)]
pub struct SupabaseOptions {
    /// Keyring file text (None: a fresh one). Restoring a backup into a new
    /// cluster passes the escrowed keyring here.
    pub keyring: Option<String>,
    /// Extra postgresql.conf lines.
    pub extra_conf: Vec<String>,
}

impl SupabaseCluster {
    /// initdb with `supabase_admin` as the bootstrap superuser, database
    /// `byok`, then the layout's roles and grants.
    pub fn start(opts: SupabaseOptions) -> SupabaseCluster {
        let cluster = Cluster::start(ClusterOptions {
            superuser: SUPERUSER.to_string(),
            create_extension: false,
            keyring: opts.keyring,
            extra_conf: opts.extra_conf,
            ..Default::default()
        });
        let mut admin = cluster.client();
        admin
            .batch_execute(LAYOUT_ROLES)
            .unwrap_or_else(|e| cluster.fail("Supabase layout: roles", &e));
        admin
            .batch_execute(LAYOUT_DATABASE)
            .unwrap_or_else(|e| cluster.fail("Supabase layout: database grants", &e));
        SupabaseCluster { cluster }
    }

    /// `CREATE EXTENSION pg_byok` the way supautils runs it: requested by
    /// `postgres`, executed with the superuser's identity, so the objects
    /// belong to `supabase_admin` while `session_user` is `postgres`.
    pub fn privileged_create_extension(&self) -> Result<(), postgres::Error> {
        self.postgres()
            .batch_execute("SELECT supautils_sim.create_extension('pg_byok')")
    }

    /// A session as `postgres` (migrations, SQL editor, dashboard).
    pub fn postgres(&self) -> postgres::Client {
        self.cluster.client_as("postgres")
    }

    /// A session as `supabase_admin`.
    pub fn superuser(&self) -> postgres::Client {
        self.cluster.client()
    }

    /// One PostgREST request: log in as `authenticator`, then in one
    /// transaction `set_config('request.jwt.claims', claims, true)` and
    /// `SET LOCAL ROLE role`, run `f`, commit. `sub` None: claims without a
    /// subject (an anon key or the service key).
    pub fn request<T>(
        &self,
        role: &str,
        sub: Option<&str>,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let claims = match sub {
            Some(s) => serde_json::json!({ "sub": s, "role": role }),
            None => serde_json::json!({ "role": role }),
        };
        let mut client = self.cluster.client_as("authenticator");
        let mut tx = client.transaction()?;
        tx.query_one(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[&claims.to_string()],
        )?;
        tx.batch_execute(&format!("SET LOCAL ROLE {role}"))?;
        let out = f(&mut tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Run a client tool (`psql`, `pg_dump`, …) from the server's bin
    /// directory as database role `user` against database `byok` over the
    /// unix socket, with `input` on stdin. Returns the raw output; the
    /// caller checks the status.
    pub fn tool(&self, program: &str, user: &str, args: &[&str], input: &[u8]) -> Output {
        let c = &self.cluster;
        let mut cmd = Command::new(pg_bin(program));
        cmd.arg("-h")
            .arg(c.dir())
            .arg("-p")
            .arg(c.port().to_string())
            .args(["-U", user, "-d", "byok"])
            .args(args)
            .current_dir(c.dir());
        let mut child = Cluster::as_postgres(&cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait for a client tool");
        let _ = feeder.join();
        out
    }

    /// `psql -X -v ON_ERROR_STOP=1 -f -` as `user`; panics with psql's
    /// stderr when it fails. Returns stdout.
    pub fn psql_as(&self, user: &str, sql: &str) -> String {
        let out = self.tool(
            "psql",
            user,
            &["-X", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            sql.as_bytes(),
        );
        if !out.status.success() {
            panic!(
                "psql as {user} failed: {}\n--- stderr ---\n{}\n--- sql (first 2000 bytes) ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                &sql[..sql.len().min(2000)]
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The project's migration, exactly as committed in `supabase/migrations/`.
pub const MIGRATION: &str = include_str!("../../supabase/migrations/20261129000000_pg_byok.sql");

/// An earlier migration of the app: its own workspace and membership tables
/// (the names the pg_byok migration attaches).
pub const APP_SCHEMA: &str = "
CREATE TABLE public.workspaces (id uuid PRIMARY KEY, name text NOT NULL, status text NOT NULL DEFAULT 'active');
CREATE TABLE public.workspace_members (
    workspace_id uuid NOT NULL REFERENCES public.workspaces (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    PRIMARY KEY (workspace_id, user_id));
";

/// A Supabase-shaped cluster after the app's migrations and pg_byok's, with
/// two workspaces of one member each (JWT subjects `user_a`, `user_b`).
pub struct SupabaseProject {
    pub sb: SupabaseCluster,
    pub ws_a: Uuid,
    pub ws_b: Uuid,
    pub user_a: String,
    pub user_b: String,
}

/// Start a [`SupabaseCluster`] (with `byok.inactive_statuses = 'paused'`
/// unless `opts.extra_conf` sets it), apply [`APP_SCHEMA`] as `postgres`,
/// create pg_byok the way supautils does, apply [`MIGRATION`] as
/// `postgres`, and add the two workspaces and their members as `postgres`.
/// Also checks that `postgres` alone cannot create pg_byok (42501).
pub fn supabase_project(mut opts: SupabaseOptions) -> SupabaseProject {
    if !opts
        .extra_conf
        .iter()
        .any(|l| l.contains("byok.inactive_statuses"))
    {
        opts.extra_conf
            .push("byok.inactive_statuses = 'paused'".to_string());
    }
    let sb = SupabaseCluster::start(opts);
    sb.psql_as("postgres", APP_SCHEMA);
    let e = sb
        .postgres()
        .batch_execute("CREATE EXTENSION pg_byok")
        .expect_err("postgres is no superuser and must not be able to create pg_byok itself");
    assert_eq!(crate::sqlstate(&e), "42501", "{e}");
    sb.privileged_create_extension()
        .unwrap_or_else(|e| sb.cluster.fail("CREATE EXTENSION on postgres's behalf", &e));
    sb.psql_as("postgres", MIGRATION);

    let (ws_a, ws_b) = (Uuid::new_v4(), Uuid::new_v4());
    let (user_a, user_b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut pg = sb.postgres();
    for (ws, user, name) in [(ws_a, user_a, "A"), (ws_b, user_b, "B")] {
        pg.execute(
            "INSERT INTO public.workspaces (id, name) VALUES ($1, $2::text)",
            &[&ws, &name as &(dyn ToSql + Sync)],
        )
        .unwrap_or_else(|e| sb.cluster.fail("insert a workspace as postgres", &e));
        pg.execute(
            "INSERT INTO public.workspace_members VALUES ($1, $2)",
            &[&ws, &user],
        )
        .unwrap_or_else(|e| sb.cluster.fail("insert a member as postgres", &e));
    }
    drop(pg);
    SupabaseProject {
        sb,
        ws_a,
        ws_b,
        user_a: user_a.to_string(),
        user_b: user_b.to_string(),
    }
}
