//! Upgrading an installed database from release 0.1.0 to this build, the
//! way operators do it: install the new library, restart, and run
//! `ALTER EXTENSION pg_byok UPDATE` later.
//!
//! 0.1.0 is built from this repository's history by
//! `scripts/build-release.sh` (cached). Both builds go into a private
//! Postgres install root ([`PgRoot`]), so the system's install, which other
//! tests use at the same time, is never touched.
//!
//! The new build is the one installed in the system's Postgres, so run it
//! after installing this checkout's:
//! `flock /tmp/byok-pg.lock bash -c 'BYOK_PROFILE=debug bash scripts/install-extension.sh
//! && cargo test -p byok-integration --test upgrade'`.
//! A difference from a fresh install is printed per catalog section: fix
//! `sql/pg_byok--0.1.0--<version>.sql` (or the install scripts) until none is left.

mod common;

use byok_integration::postgres::Client;
use byok_integration::release::{
    control_default_version, exported_symbols, installed_files, module_symbols, release_dir,
    release_files, CURRENT_VERSION,
};
use byok_integration::{sample_key, Catalog, Cluster, ClusterOptions, PgRoot};
use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use uuid::Uuid;

const OLD: &str = "0.1.0";

/// The app's own tables, attached to pg_byok (run in every database compared).
/// Supabase's roles exist cluster-wide (created once, before any database),
/// so the grants pg_byok gives them are part of what is compared.
const APP_SQL: &str = "
    CREATE SCHEMA app;
    CREATE TABLE app.workspaces (id uuid PRIMARY KEY, status text NOT NULL DEFAULT 'active');
    CREATE TABLE app.members (workspace_id uuid NOT NULL, user_id uuid NOT NULL,
                              PRIMARY KEY (workspace_id, user_id));
    SELECT byok.attach_members('app.members', 'workspace_id', 'user_id');
    SELECT byok.attach_workspaces('app.workspaces', 'id', 'status');
";

const SUPABASE_ROLES: &str = "
    CREATE ROLE anon NOLOGIN NOINHERIT;
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
";

/// What must survive the upgrade unchanged, per key (ciphertext aside: a
/// release may re-seal, the plaintext is checked instead).
const KEY_ROWS: &str = "SELECT id::text, row(id, workspace_id, vendor, label, masked, status,
                               status_detail, created_at, validated_at, revoked_at, revoked_cause,
                               ciphertext IS NULL)::text
                          FROM byok.keys ORDER BY id";
const JOB_ROWS: &str =
    "SELECT id::text, row(id, key_id, run_after, attempts, lease_token, leased_by,
                               last_error, created_at)::text
                          FROM byok.jobs ORDER BY id";
const AUDIT_ROWS: &str = "SELECT id::text, row(id, at, actor_role, actor_sub, action, key_id,
                                 workspace_id, vendor, outcome, detail)::text
                            FROM byok.audit_log ORDER BY id";

fn rows(db: &mut Client, sql: &str) -> BTreeMap<String, String> {
    db.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn one<T: for<'a> byok_integration::postgres::types::FromSql<'a>>(db: &mut Client, sql: &str) -> T {
    db.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// Keys of 0.1.0 in every state, and who they belong to.
struct Fixture {
    /// Active: (workspace, vendor, plaintext); the first is ws_a's anthropic key.
    active: Vec<(Uuid, &'static str, String)>,
    /// ws_a's anthropic key, rotated out when the pending one is validated.
    first_active: Uuid,
    /// ws_a's newer anthropic key: pending, its job never claimed.
    pending: (Uuid, String),
    /// ws_c's openai key: pending, its job leased (claimed, not finished).
    leased: (Uuid, String, i64, Uuid),
    /// ws_b's openai key: unverified.
    unverified: (Uuid, String),
    invalid: Uuid,
    revoked: Uuid,
    ws_a: Uuid,
    ws_b: Uuid,
    ws_c: Uuid,
    ws_d: Uuid,
    /// A member of ws_a (JWT subject).
    member: Uuid,
}

/// Claim the one ready job (the key just added) and finish it with `outcome`.
fn validate(c: &Cluster, key_id: Uuid, outcome: &str) -> String {
    let mut w = c.client_as("sidecar");
    let claims = claim_jobs(&mut w, "sidecar-1", 16, 60).unwrap_or_else(|e| c.fail("claim", &e));
    assert_eq!(
        claims.len(),
        1,
        "exactly the new key's job is ready: {claims:?}"
    );
    assert_eq!(claims[0].key_id, key_id);
    finish_job(
        &mut w,
        claims[0].job_id,
        claims[0].lease_token,
        outcome,
        None,
        Some(200),
        None,
    )
    .unwrap_or_else(|e| c.fail("finish_job", &e))
}

fn add(c: &Cluster, ws: Uuid, vendor: &str, key: &str) -> Uuid {
    add_key(&mut c.client(), ws, vendor, key, Some("upgrade test"))
        .unwrap_or_else(|e| c.fail("add_key", &e))
        .id
}

/// Fill the 0.1.0 database: workspaces and members in the attached app
/// tables; keys active, pending (queued and leased), invalid, unverified and
/// revoked; audit rows from all of it and from use_key.
fn fill(c: &Cluster) -> Fixture {
    let (ws_a, ws_b, ws_c, ws_d) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let member = Uuid::new_v4();
    let mut db = c.client();
    for ws in [ws_a, ws_b, ws_c, ws_d] {
        db.execute("INSERT INTO app.workspaces (id) VALUES ($1)", &[&ws])
            .unwrap();
    }
    db.execute(
        "INSERT INTO app.members VALUES ($1, $2), ($3, $2)",
        &[&ws_a, &member, &ws_b],
    )
    .unwrap();

    let mut active = Vec::new();
    let mut ids = Vec::new();
    for (ws, vendor, seed) in [
        (ws_a, "anthropic", 1),
        (ws_a, "openai", 2),
        (ws_c, "anthropic", 3),
        (ws_d, "openai", 4),
    ] {
        let key = sample_key(vendor, 9000 + seed);
        let id = add(c, ws, vendor, &key);
        assert_eq!(validate(c, id, "valid"), "active");
        active.push((ws, vendor, key));
        ids.push(id);
    }
    let revoked_key = sample_key("anthropic", 9005);
    let revoked = add(c, ws_b, "anthropic", &revoked_key);
    assert_eq!(validate(c, revoked, "valid"), "active");
    revoke_key(&mut db, revoked, Some("upgrade test")).unwrap_or_else(|e| c.fail("revoke", &e));
    let invalid = add(c, ws_b, "anthropic", &sample_key("anthropic", 9006));
    assert_eq!(validate(c, invalid, "invalid"), "invalid");
    let unverified_key = sample_key("openai", 9007);
    let unverified = add(c, ws_b, "openai", &unverified_key);
    assert_eq!(validate(c, unverified, "unverified"), "unverified");

    let leased_key = sample_key("openai", 9008);
    let leased = add(c, ws_c, "openai", &leased_key);
    let claims = claim_jobs(&mut c.client_as("sidecar"), "sidecar-2", 16, 3600).unwrap();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(claims[0].key_id, leased);
    let pending_key = sample_key("anthropic", 9009);
    let pending = add(c, ws_a, "anthropic", &pending_key);

    for (ws, vendor, key) in &active {
        assert_eq!(
            &use_key(&mut c.client_as("backend"), *ws, vendor).unwrap(),
            key
        );
    }
    Fixture {
        active,
        first_active: ids[0],
        pending: (pending, pending_key),
        leased: (leased, leased_key, claims[0].job_id, claims[0].lease_token),
        unverified: (unverified, unverified_key),
        invalid,
        revoked,
        ws_a,
        ws_b,
        ws_c,
        ws_d,
        member,
    }
}

fn status(c: &Cluster, id: Uuid) -> (String, Option<String>) {
    let r = c
        .client()
        .query_one(
            "SELECT status, revoked_cause FROM byok.keys WHERE id = $1",
            &[&id],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn assert_same_rows(
    what: &str,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) {
    let mut diff = String::new();
    for (id, row) in before {
        match after.get(id) {
            Some(a) if a == row => {}
            Some(a) => diff.push_str(&format!("changed {id}:\n  before {row}\n  after  {a}\n")),
            None => diff.push_str(&format!("gone {id}: {row}\n")),
        }
    }
    for (id, row) in after {
        if !before.contains_key(id) {
            diff.push_str(&format!("new {id}: {row}\n"));
        }
    }
    assert!(diff.is_empty(), "{what} changed:\n{diff}");
}

/// `pg_dump -s` of database `db`, without pg_dump's per-run `\restrict` key.
fn dump_schema(c: &Cluster, db: &str) -> String {
    let mut cmd = Command::new(c.bin("pg_dump"));
    cmd.args(["-s", "-h"])
        .arg(c.dir())
        .arg("-p")
        .arg(c.port().to_string())
        .args(["-U", "postgres", "-d", db]);
    let out = Cluster::run_as_postgres(&mut cmd);
    assert!(
        out.status.success(),
        "pg_dump -s {db}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The SQL statements of a dump (comments and blank lines dropped).
fn statements(dump: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in dump.lines() {
        if line.starts_with("--") || line.trim().is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if line.trim_end().ends_with(';') {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

#[test]
fn new_library_exports_every_symbol_the_0_1_0_script_binds() {
    let old_dir = release_dir(OLD);
    let sql_path = old_dir.join(format!("pg_byok--{OLD}.sql"));
    let sql = std::fs::read_to_string(&sql_path).unwrap();
    let wanted = module_symbols(&sql);
    assert!(
        wanted.len() >= 5,
        "{} binds only {wanted:?}: not the pgrx-generated script?",
        sql_path.display()
    );
    let so = &installed_files()[0];
    let exported = exported_symbols(so);
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "{} no longer exports these symbols that the {OLD} SQL binds: {missing:?}\n\
         Databases still at {OLD} (new library installed, ALTER EXTENSION UPDATE not yet run) \
         would fail calling them. Keep the #[pg_extern] (it may call the new code).",
        so.display()
    );
}

#[test]
fn upgrade_from_0_1_0_keeps_every_key_and_matches_a_fresh_install() {
    let new_files = installed_files();
    assert_eq!(
        control_default_version(&new_files[1]),
        CURRENT_VERSION,
        "the installed pg_byok is not this checkout's build"
    );
    let path = format!("pg_byok--{OLD}--{CURRENT_VERSION}.sql");
    assert!(
        new_files.iter().any(|f| f.ends_with(&path)),
        "no upgrade script {path} among {new_files:?}"
    );
    let root = PgRoot::from_system();
    let new_files = root.stash("new", &new_files);
    let old_files = release_files(&release_dir(OLD), OLD);
    root.install_pg_byok(&old_files);

    // --- 0.1.0 installed and in use ---
    let mut c = Cluster::start(ClusterOptions {
        pg_bin_dir: Some(root.bin_dir().to_path_buf()),
        create_extension: false,
        ..Default::default()
    });
    c.client_db("postgres")
        .batch_execute(SUPABASE_ROLES)
        .unwrap_or_else(|e| c.fail("create Supabase's roles", &e));
    let mut db = c.client();
    db.batch_execute(&format!("CREATE EXTENSION pg_byok VERSION '{OLD}'"))
        .unwrap_or_else(|e| c.fail("CREATE EXTENSION at 0.1.0", &e));
    db.batch_execute(APP_SQL)
        .unwrap_or_else(|e| c.fail("app tables", &e));
    create_login(&c, "sidecar", &["byok_worker"]);
    create_login(&c, "backend", &["byok_consumer"]);
    let fx = fill(&c);
    let keys_before = rows(&mut db, KEY_ROWS);
    let jobs_before = rows(&mut db, JOB_ROWS);
    let audit_before = rows(&mut db, AUDIT_ROWS);
    assert_eq!(keys_before.len(), 9);
    assert_eq!(jobs_before.len(), 2, "the leased and the queued job");
    assert!(audit_before.len() >= 20, "{audit_before:?}");
    drop(db);

    // --- the new library, restart, the old SQL still served ---
    c.stop();
    root.install_pg_byok(&new_files);
    c.start_again();
    let mut db = c.client();
    assert_eq!(
        one::<String>(
            &mut db,
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_byok'"
        ),
        OLD
    );
    // Every C function of the 0.1.0 SQL resolves in the new library (the
    // language validator loads the symbol, as a first call would).
    let c_functions: i64 = one(
        &mut db,
        "SELECT count(pg_catalog.fmgr_c_validator(p.oid)) FROM pg_proc p
           JOIN pg_language l ON l.oid = p.prolang
          WHERE l.lanname = 'c' AND p.probin = '$libdir/pg_byok'",
    );
    assert!(
        c_functions >= 5,
        "only {c_functions} C functions in the 0.1.0 schema?"
    );
    // A backend session open across the UPDATE (its plans are replaced).
    let mut backend = c.client_as("backend");
    for (ws, vendor, key) in &fx.active {
        let got = use_key(&mut backend, *ws, vendor)
            .unwrap_or_else(|e| c.fail("use_key before the UPDATE", &e));
        assert_eq!(&got, key, "use_key({ws}, {vendor}) before the UPDATE");
    }
    assert_same_rows(
        "keys (new library, before UPDATE)",
        &keys_before,
        &rows(&mut db, KEY_ROWS),
    );

    // --- the UPDATE, in a transaction as a migration tool runs it ---
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("ALTER EXTENSION pg_byok UPDATE")
        .unwrap_or_else(|e| c.fail("ALTER EXTENSION pg_byok UPDATE", &e));
    tx.commit()
        .unwrap_or_else(|e| c.fail("COMMIT the UPDATE", &e));
    assert_eq!(
        one::<String>(
            &mut db,
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_byok'"
        ),
        CURRENT_VERSION
    );
    assert_same_rows("keys", &keys_before, &rows(&mut db, KEY_ROWS));
    assert_same_rows("jobs", &jobs_before, &rows(&mut db, JOB_ROWS));
    let audit_after = rows(&mut db, AUDIT_ROWS);
    let audit_kept: BTreeMap<String, String> = audit_after
        .iter()
        .filter(|(id, _)| audit_before.contains_key(*id))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_same_rows("audit rows from 0.1.0", &audit_before, &audit_kept);

    // Every live key still opens to its plaintext: active ones via use_key...
    for (ws, vendor, key) in &fx.active {
        let got = use_key(&mut backend, *ws, vendor)
            .unwrap_or_else(|e| c.fail("use_key after the UPDATE (session from before)", &e));
        assert_eq!(&got, key, "use_key({ws}, {vendor}) after the UPDATE");
        let got = use_key(&mut c.client_as("backend"), *ws, vendor)
            .unwrap_or_else(|e| c.fail("use_key after the UPDATE", &e));
        assert_eq!(
            &got, key,
            "use_key({ws}, {vendor}) after the UPDATE, new session"
        );
    }
    // ...the leased job finishes under its 0.1.0 lease token...
    let (leased, leased_key, job, token) = &fx.leased;
    let mut w = c.client_as("sidecar");
    let st = finish_job(&mut w, *job, *token, "valid", None, Some(200), None)
        .unwrap_or_else(|e| c.fail("finish the 0.1.0 lease", &e));
    assert_eq!(st, "active");
    assert_eq!(
        &use_key(&mut c.client_as("backend"), fx.ws_c, "openai").unwrap(),
        leased_key
    );
    assert_eq!(status(&c, *leased).0, "active");
    // ...the queued job and a revalidated unverified key are claimed with
    // their plaintexts, and finishing them rotates as before.
    revalidate_key(&mut db, fx.unverified.0).unwrap_or_else(|e| c.fail("revalidate", &e));
    let claims = claim_jobs(&mut w, "sidecar-3", 16, 60).unwrap_or_else(|e| c.fail("claim", &e));
    let mut got: Vec<(Uuid, String)> = claims
        .iter()
        .map(|k| (k.key_id, k.api_key.clone()))
        .collect();
    got.sort();
    let mut want = vec![fx.pending.clone(), fx.unverified.clone()];
    want.sort();
    assert_eq!(got, want, "claim_jobs after the UPDATE");
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
    assert_eq!(
        use_key(&mut db, fx.ws_a, "anthropic").unwrap(),
        fx.pending.1
    );
    assert_eq!(
        use_key(&mut db, fx.ws_b, "openai").unwrap(),
        fx.unverified.1
    );
    assert_eq!(
        status(&c, fx.first_active),
        ("revoked".into(), Some("rotated".into()))
    );
    // Dead keys stay dead.
    assert_eq!(status(&c, fx.invalid).0, "invalid");
    assert_eq!(
        status(&c, fx.revoked),
        ("revoked".into(), Some("user".into()))
    );
    // A new key goes through the queue.
    let fresh_key = sample_key("anthropic", 9010);
    let fresh_id = add(&c, fx.ws_d, "anthropic", &fresh_key);
    assert_eq!(validate(&c, fresh_id, "valid"), "active");
    assert_eq!(use_key(&mut db, fx.ws_d, "anthropic").unwrap(), fresh_key);

    // The members table still authorizes (a JWT subject sees its workspace
    // only), and the attached triggers still revoke.
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("SET LOCAL ROLE authenticated").unwrap();
    tx.execute(
        "SELECT set_config('request.jwt.claims', $1, true)",
        &[&format!("{{\"sub\": \"{}\"}}", fx.member)],
    )
    .unwrap();
    let own = list_keys(&mut tx, fx.ws_a)
        .unwrap_or_else(|e| c.fail("a member lists its workspace's keys after the UPDATE", &e));
    assert_eq!(own.len(), 3);
    expect_state(
        list_keys(&mut tx, fx.ws_c),
        "42501",
        "a member of ws_a lists ws_c",
    );
    tx.rollback().unwrap();
    db.execute("DELETE FROM app.workspaces WHERE id = $1", &[&fx.ws_c])
        .unwrap();
    db.execute(
        "UPDATE app.workspaces SET status = 'paused' WHERE id = $1",
        &[&fx.ws_d],
    )
    .unwrap();
    for ws in [fx.ws_c, fx.ws_d] {
        for k in list_keys(&mut db, ws).unwrap() {
            assert_eq!(k.status, "revoked", "{ws}: {k:?}");
        }
        expect_state(
            use_key(&mut db, ws, "anthropic"),
            "P0002",
            "revoked workspace",
        );
    }
    assert_eq!(status(&c, *leased).1.as_deref(), Some("workspace_deleted"));

    // --- the upgraded schema equals a fresh install's ---
    c.client_db("postgres")
        .batch_execute("CREATE DATABASE fresh")
        .unwrap();
    let mut fresh = c.client_db("fresh");
    fresh
        .batch_execute("CREATE EXTENSION pg_byok")
        .unwrap_or_else(|e| c.fail("CREATE EXTENSION at the new version", &e));
    fresh.batch_execute(APP_SQL).unwrap();
    let upgraded_cat = Catalog::read(&mut db, &["byok", "app"]);
    let fresh_cat = Catalog::read(&mut fresh, &["byok", "app"]);
    for section in [
        "extension members",
        "functions",
        "columns",
        "policies",
        "triggers",
    ] {
        assert!(
            upgraded_cat.len(section) > 0,
            "catalog section {section} is empty"
        );
    }
    let diff = upgraded_cat.diff(&fresh_cat, "upgraded", "fresh");
    assert!(
        diff.is_empty(),
        "the upgraded schema differs from a fresh CREATE EXTENSION at {CURRENT_VERSION}; \
         keep sql/pg_byok--{OLD}--{CURRENT_VERSION}.sql in step with the install scripts:\n{diff}"
    );

    let upgraded_dump = dump_schema(&c, "byok");
    let fresh_dump = dump_schema(&c, "fresh");
    let byok_statements: Vec<String> = statements(&upgraded_dump)
        .into_iter()
        .filter(|s| s.contains("byok"))
        .collect();
    // The schema is created by CREATE EXTENSION but is not a member, so
    // pg_dump writes it (and its privileges) itself.
    let outside: Vec<&String> = byok_statements
        .iter()
        .filter(|s| {
            !(s.starts_with("CREATE EXTENSION IF NOT EXISTS pg_byok WITH SCHEMA byok;")
                || s.starts_with("COMMENT ON EXTENSION pg_byok IS")
                || s.starts_with("CREATE SCHEMA byok;")
                || s.starts_with("ALTER SCHEMA byok OWNER TO ")
                || s.starts_with("COMMENT ON SCHEMA byok IS ")
                || ((s.starts_with("GRANT ") || s.starts_with("REVOKE "))
                    && s.contains(" ON SCHEMA byok "))
                || (s.starts_with("CREATE TRIGGER byok_revoke_on_")
                    && s.contains(" ON app.workspaces ")))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "pg_dump -s of the upgraded database shows pg_byok's objects outside its \
         CREATE EXTENSION (changed after install, or not extension members):\n{outside:#?}"
    );
    assert!(byok_statements
        .iter()
        .any(|s| s.starts_with("CREATE EXTENSION IF NOT EXISTS pg_byok")));
    if upgraded_dump != fresh_dump {
        let a: Vec<String> = statements(&upgraded_dump);
        let b: Vec<String> = statements(&fresh_dump);
        let only_a: Vec<&String> = a.iter().filter(|s| !b.contains(s)).collect();
        let only_b: Vec<&String> = b.iter().filter(|s| !a.contains(s)).collect();
        panic!(
            "pg_dump -s differs between the upgraded and a fresh database\n\
             only upgraded: {only_a:#?}\nonly fresh: {only_b:#?}"
        );
    }
}
