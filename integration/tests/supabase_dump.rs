//! Backups on a Supabase-shaped database: `pg_dump` run as `postgres`
//! succeeds and carries no key material, and the documented backup path
//! (that dump + the superuser's `byok.export_archive()` + the escrowed
//! keyring) restores into a fresh Supabase-shaped database where every key
//! opens again. Without the escrowed keyring, none does.

mod common;

use byok_integration::postgres::GenericClient;
use byok_integration::{sample_key, sqlstate, supabase_project, SupabaseOptions, SupabaseProject};
use common::*;
use uuid::Uuid;

/// Supabase's CLI dumps without the platform's own schemas; this harness's
/// one such schema is its stand-in for supautils.
const DUMP_ARGS: &[&str] = &["--exclude-schema=supautils_sim"];

/// The keys of a project in every state a restore must keep.
struct Keys {
    active_a: String,
    pending_a: String,
    active_b: String,
    revoked_b: String,
}

fn populate(p: &SupabaseProject) -> Keys {
    let k = Keys {
        active_a: sample_key("anthropic", 21),
        pending_a: sample_key("openai", 22),
        active_b: sample_key("anthropic", 23),
        revoked_b: sample_key("openai", 24),
    };
    let add = |user: &str, ws: Uuid, vendor: &str, key: &str| {
        p.sb.request("authenticated", Some(user), |tx| {
            add_key(tx, ws, vendor, key, Some("backup test"))
        })
        .unwrap()
    };
    add(&p.user_a, p.ws_a, "anthropic", &k.active_a);
    add(&p.user_b, p.ws_b, "anthropic", &k.active_b);
    let revoked = add(&p.user_b, p.ws_b, "openai", &k.revoked_b);
    let mut sidecar = p.sb.cluster.client_as("byok_sidecar");
    assert_eq!(finish_all(&mut sidecar, "valid").len(), 3);
    p.sb.request("authenticated", Some(&p.user_b), |tx| {
        revoke_key(tx, revoked.id, Some("rotated by hand"))
    })
    .unwrap();
    // Added after the sidecar ran: still pending, its job in the queue.
    add(&p.user_a, p.ws_a, "openai", &k.pending_a);
    k
}

/// Every key's metadata, as the superuser sees it, in a stable order.
fn metadata(db: &mut impl GenericClient) -> Vec<String> {
    db.query(
        "SELECT concat_ws('|', id, workspace_id, vendor, label, masked, status, status_detail, created_at,
                          validated_at, revoked_at, revoked_cause, ciphertext IS NULL)
           FROM byok.keys ORDER BY id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn ciphertexts_hex(db: &mut impl GenericClient) -> Vec<String> {
    db.query(
        "SELECT encode(ciphertext, 'hex') FROM byok.keys WHERE ciphertext IS NOT NULL",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn dump_as_postgres(p: &SupabaseProject, extra: &[&str]) -> String {
    let args: Vec<&str> = DUMP_ARGS.iter().chain(extra).copied().collect();
    let out = p.sb.tool("pg_dump", "postgres", &args, b"");
    assert!(
        out.status.success(),
        "pg_dump {args:?} as postgres failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pg_dump_as_postgres_succeeds_and_carries_no_key_material() {
    let p = supabase_project(SupabaseOptions::default());
    let k = populate(&p);
    let all_keys = [k.active_a.as_str(), &k.pending_a, &k.active_b, &k.revoked_b];
    let ciphertexts = ciphertexts_hex(&mut p.sb.superuser());
    assert_eq!(ciphertexts.len(), 3);

    // Plain, schema-only (what `supabase db dump` makes by default) and
    // data-only dumps.
    for extra in [&[][..], &["--schema-only"][..], &["--data-only"][..]] {
        let dump = dump_as_postgres(&p, extra);
        assert_no_key_material(&dump, &all_keys, &format!("pg_dump {extra:?} as postgres"));
        for c in &ciphertexts {
            assert!(
                !dump.contains(c.as_str()),
                "pg_dump {extra:?} carries a ciphertext"
            );
        }
        if extra.is_empty() {
            // The app's data is there: the dump is a real one.
            assert!(dump.contains(&p.ws_a.to_string()) && dump.contains("byok_revoke_on_delete"));
        }
    }

    // The archive carries the sealed keys (and nothing in plaintext); only
    // the superuser can make it.
    let archive: String =
        p.sb.superuser()
            .query_one("SELECT byok.export_archive()", &[])
            .unwrap()
            .get(0);
    assert_no_key_material(&archive, &all_keys, "byok.export_archive()");
    for c in &ciphertexts {
        assert!(
            archive.contains(c.as_str()),
            "the archive misses a sealed key"
        );
    }
    let e =
        p.sb.request("service_role", None, |tx| {
            tx.query("SELECT byok.export_archive()", &[])
        })
        .expect_err("service_role export_archive");
    assert_eq!(sqlstate(&e), "42501");
}

#[test]
fn dump_archive_and_escrowed_keyring_restore_every_key_into_a_fresh_supabase_database() {
    let p = supabase_project(SupabaseOptions::default());
    let k = populate(&p);
    // The restorable dump (GUIDE.md, "Backups"): schema byok is left out
    // (CREATE EXTENSION makes its objects, the archive carries its rows),
    // and so are comments (only an object's owner may set one; Supabase's
    // CLI leaves them out for the same reason).
    // Default privileges of supabase_admin are the platform's, set again by
    // the fresh database's own setup; postgres may not restate them
    // (Supabase's CLI comments these lines out of its dumps too).
    let dump: String = dump_as_postgres(&p, &["--exclude-schema=byok", "--no-comments"])
        .lines()
        .filter(|l| !l.starts_with("ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin"))
        .map(|l| format!("{l}\n"))
        .collect();
    let archive: String =
        p.sb.superuser()
            .query_one("SELECT byok.export_archive()", &[])
            .unwrap()
            .get(0);
    let escrow = p.sb.cluster.keyring_text();
    let before = metadata(&mut p.sb.superuser());
    let audit_before: i64 =
        p.sb.superuser()
            .query_one("SELECT count(*) FROM byok.audit_log", &[])
            .unwrap()
            .get(0);

    // A fresh Supabase database: the server gets the escrowed keyring,
    // supautils creates pg_byok, postgres restores the dump, the superuser
    // restores the archive.
    let q = byok_integration::SupabaseCluster::start(SupabaseOptions {
        keyring: Some(escrow),
        extra_conf: vec!["byok.inactive_statuses = 'paused'".to_string()],
    });
    q.privileged_create_extension().unwrap();
    q.psql_as("postgres", &dump);
    q.psql_as("supabase_admin", &archive);

    assert_eq!(
        metadata(&mut q.superuser()),
        before,
        "key metadata after restore"
    );
    let audit_after: i64 = q
        .superuser()
        .query_one("SELECT count(*) FROM byok.audit_log", &[])
        .unwrap()
        .get(0);
    assert_eq!(audit_after, audit_before);

    // Every live key opens: active ones through use_key, the pending one
    // through the queue (its job came back with it).
    let used = |ws: Uuid, vendor: &str| {
        q.request("service_role", None, |tx| use_key(tx, ws, vendor))
            .unwrap_or_else(|e| panic!("use_key after restore: {}", error_text(&e)))
    };
    assert_eq!(used(p.ws_a, "anthropic"), k.active_a);
    assert_eq!(used(p.ws_b, "anthropic"), k.active_b);
    let mut pg = q.postgres();
    pg.batch_execute("CREATE ROLE byok_sidecar LOGIN IN ROLE byok_worker")
        .unwrap();
    let mut sidecar = q.cluster.client_as("byok_sidecar");
    let claims = claim_jobs(&mut sidecar, "restored", 10, 60).unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].api_key, k.pending_a);
    let e = q
        .request("service_role", None, |tx| use_key(tx, p.ws_b, "openai"))
        .expect_err("the revoked key stays dead");
    assert_eq!(sqlstate(&e), "P0002");

    // Membership and the workspace triggers came back too.
    let listed = q
        .request("authenticated", Some(&p.user_a), |tx| list_keys(tx, p.ws_a))
        .unwrap();
    assert_eq!(listed.len(), 2);
    q.request("authenticated", Some(&p.user_a), |tx| list_keys(tx, p.ws_b))
        .expect_err("user A must not list B after restore");
    pg.execute("DELETE FROM public.workspaces WHERE id = $1", &[&p.ws_b])
        .unwrap();
    let live_b: i64 = q
        .superuser()
        .query_one(
            "SELECT count(*) FROM byok.keys WHERE workspace_id = $1 AND status <> 'revoked'",
            &[&p.ws_b],
        )
        .unwrap()
        .get(0);
    assert_eq!(live_b, 0, "deleting a restored workspace revokes its keys");

    // The same backup with any other keyring restores rows that never open.
    let r = byok_integration::SupabaseCluster::start(SupabaseOptions::default());
    r.privileged_create_extension().unwrap();
    r.psql_as("postgres", &dump);
    r.psql_as("supabase_admin", &archive);
    let e = r
        .request("service_role", None, |tx| use_key(tx, p.ws_a, "anthropic"))
        .expect_err("a key sealed under another keyring");
    assert_eq!(sqlstate(&e), "55000", "{}", error_text(&e));
}
