//! `CALL byok.migrate_storage` (issue 10): 10,000 keys native → Supabase
//! Vault → native while a backend calls use_key in a loop and another
//! session revokes and adds keys. Every use returns the key's plaintext,
//! no key is ever in both places or lost, revoked keys leave nothing in
//! Vault, and an interrupted migration carries on when called again.
//!
//! Needs supabase_vault installed (SKIPPED otherwise). Run:
//! `cargo test -p byok-integration --release --test vault_migrate`.

mod common;

use byok_integration::postgres::Client;
use byok_integration::{random_master_key_hex, vault_installed, ClusterOptions};
use common::lifecycle::*;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

const KEYS: i32 = 10_000;

/// The plaintext of key `n` (a valid Anthropic key shape), computed the
/// same way in SQL (the seed statement) and here.
const KEY_SQL: &str = "'sk-ant-api03-' || substr(repeat(md5(n::text), 3), 1, 93) || 'AA'";

/// Storage counts: (native live, vault live, vault secrets of pg_byok keys).
fn places(db: &mut Client) -> (i64, i64, i64) {
    let r = db
        .query_one(
            "SELECT (SELECT keys FROM byok.storage_status WHERE storage = 'native'),
                    (SELECT keys FROM byok.storage_status WHERE storage = 'vault'),
                    (SELECT count(*) FROM vault.secrets WHERE name LIKE 'byok/%/%')",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Every live key opens to its own plaintext; returns how many were checked.
fn all_open(db: &mut Client) -> i64 {
    let wrong = count(
        db,
        &format!(
            "WITH live AS MATERIALIZED (
                 SELECT e.n, e.ws FROM app_expected e JOIN byok.keys k ON k.workspace_id = e.ws
                  WHERE k.status = 'active')
             SELECT count(*) FROM live e
              WHERE byok.use_key(e.ws, 'anthropic') IS DISTINCT FROM {}",
            KEY_SQL.replace("n::text", "e.n::text")
        ),
    );
    assert_eq!(wrong, 0, "keys that opened to something else");
    count(db, "SELECT count(*) FROM byok.keys WHERE status = 'active'")
}

#[test]
fn migrate_ten_thousand_keys_native_to_vault_and_back_under_use() {
    if !vault_installed() {
        println!(
            "SKIPPED: supabase_vault is not installed on this machine \
             (build supabase/vault 0.3.x with PGXS to run this test)"
        );
        return;
    }
    let c = cluster_with(ClusterOptions {
        vault_root_key: Some(random_master_key_hex()),
        ..Default::default()
    });
    let mut db = c.client();
    // 10,000 workspaces with one active native key each (seeded through
    // add_key, then marked active as the validator would).
    db.batch_execute(&format!(
        "CREATE TABLE app_expected AS
           SELECT n, md5('ws' || n)::uuid AS ws FROM generate_series(1, {KEYS}) n;
         SELECT byok.add_key(e.ws, 'anthropic', {key}) FROM app_expected e;
         DELETE FROM byok.jobs;
         UPDATE byok.keys SET status = 'active', validated_at = clock_timestamp();",
        key = KEY_SQL.replace("n::text", "e.n::text")
    ))
    .unwrap();
    assert_eq!(places(&mut db), (i64::from(KEYS), 0, 0));

    let stop = Arc::new(AtomicBool::new(false));
    let uses = Arc::new(AtomicU64::new(0));
    let user = {
        let (stop, uses) = (stop.clone(), uses.clone());
        let mut backend = c.client_as("backend");
        let mut db = c.client();
        std::thread::spawn(move || {
            let mut n: i32 = 1;
            while !stop.load(Ordering::Relaxed) {
                n = n % KEYS + 1;
                // Keys 1..=100 are revoked meanwhile; skip them.
                if n <= 100 {
                    continue;
                }
                let ws: Uuid = db
                    .query_one("SELECT ws FROM app_expected WHERE n = $1", &[&n])
                    .unwrap()
                    .get(0);
                let got = use_key(&mut backend, ws, "anthropic")
                    .unwrap_or_else(|e| panic!("use_key during migration: {}", error_text(&e)));
                let want: String = db
                    .query_one(
                        &format!("SELECT {KEY_SQL} FROM (SELECT $1::int AS n) s"),
                        &[&n],
                    )
                    .unwrap()
                    .get(0);
                assert_eq!(got, want, "use_key of workspace {n} during migration");
                uses.fetch_add(1, Ordering::Relaxed);
                n += 97;
            }
        })
    };
    let churn = {
        let stop = stop.clone();
        let mut db = c.client();
        std::thread::spawn(move || {
            for n in 1..=100 {
                db.batch_execute(&format!(
                    "SELECT byok.revoke_workspace(ws) FROM app_expected WHERE n = {n};
                     SELECT byok.add_key(gen_random_uuid(), 'anthropic',
                         'sk-ant-api03-' || substr(repeat(md5('churn{n}'), 3), 1, 93) || 'AA')"
                ))
                .unwrap_or_else(|e| panic!("revoke/add during migration: {e:?}"));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        })
    };

    db.batch_execute("CALL byok.migrate_storage(target => 'vault', batch_size => 1000)")
        .unwrap_or_else(|e| c.fail("migrate to vault", &e));
    churn.join().expect("the revoke/add session");
    // Keys added natively by the churn session while the first call ran
    // are taken by a second call (resumable: it only moves what is left).
    db.batch_execute("CALL byok.migrate_storage(target => 'vault', batch_size => 1000)")
        .unwrap_or_else(|e| c.fail("migrate to vault again", &e));
    let (native, vault, secrets) = places(&mut db);
    assert_eq!(native, 0, "every live key moved to vault");
    assert_eq!(vault, i64::from(KEYS) - 100 + 100, "9,900 + 100 added keys");
    assert_eq!(
        secrets, vault,
        "one secret per live key, none for the revoked"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM byok.keys k JOIN vault.secrets s ON s.id = k.vault_secret_id
              WHERE s.name <> 'byok/' || k.workspace_id || '/' || k.id"
        ),
        0,
        "every secret is named for its key"
    );

    db.batch_execute("CALL byok.migrate_storage(target => 'native', batch_size => 1000)")
        .unwrap_or_else(|e| c.fail("migrate to native", &e));
    stop.store(true, Ordering::Relaxed);
    user.join().expect("the use_key loop");
    assert!(
        uses.load(Ordering::Relaxed) > 0,
        "use_key ran during the migrations"
    );
    assert_eq!(places(&mut db), (i64::from(KEYS), 0, 0));
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM byok.keys WHERE ciphertext IS NOT NULL AND vault_secret_id IS NOT NULL"
        ),
        0,
        "no key in both places"
    );
    assert_eq!(all_open(&mut db), i64::from(KEYS) - 100);
}

#[test]
fn interrupted_migration_carries_on() {
    if !vault_installed() {
        println!(
            "SKIPPED: supabase_vault is not installed on this machine \
             (build supabase/vault 0.3.x with PGXS to run this test)"
        );
        return;
    }
    let c = cluster_with(ClusterOptions {
        vault_root_key: Some(random_master_key_hex()),
        ..Default::default()
    });
    let mut db = c.client();
    db.batch_execute(&format!(
        "CREATE TABLE app_expected AS SELECT n, md5('ws' || n)::uuid AS ws FROM generate_series(1, 300) n;
         SELECT byok.add_key(e.ws, 'anthropic', {key}) FROM app_expected e;
         DELETE FROM byok.jobs;
         UPDATE byok.keys SET status = 'active', validated_at = clock_timestamp();",
        key = KEY_SQL.replace("n::text", "e.n::text")
    ))
    .unwrap();
    // Cancelled after its first batches have committed.
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let canceller = {
        let mut other = c.client();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let moved: i64 = other
                    .query_one(
                        "SELECT keys FROM byok.storage_status WHERE storage = 'vault'",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                if moved >= 20 {
                    other
                        .execute("SELECT pg_cancel_backend($1)", &[&pid])
                        .unwrap();
                    return moved;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            panic!("the migration made no progress");
        })
    };
    let r = db.batch_execute("CALL byok.migrate_storage(target => 'vault', batch_size => 10)");
    let seen = canceller.join().unwrap();
    expect_state(r, "57014", "the cancelled migration");
    let (native, vault, secrets) = places(&mut db);
    assert!(
        vault >= seen && native > 0,
        "partly moved: {native} native, {vault} vault"
    );
    assert_eq!(native + vault, 300, "no key lost");
    assert_eq!(secrets, vault, "no key in both places, no orphan secret");
    // Half way, master_key_status names both roots of trust and what each
    // serves; new keys still go to the master key (byok.storage = native).
    assert_eq!(
        roots_of_trust(&mut db),
        vec![
            (Some(1), "pg_byok master key".to_string(), native, true),
            (None, "Supabase Vault root key".to_string(), vault, false),
        ]
    );
    db.batch_execute("CALL byok.migrate_storage(target => 'vault', batch_size => 10)")
        .unwrap();
    assert_eq!(places(&mut db), (0, 300, 300));
    assert_eq!(all_open(&mut db), 300);
    assert_eq!(
        roots_of_trust(&mut db),
        vec![
            (Some(1), "pg_byok master key".to_string(), 0, true),
            (None, "Supabase Vault root key".to_string(), 300, false),
        ]
    );
}

/// byok.master_key_status(): (version, root of trust, live keys, takes new keys).
fn roots_of_trust(db: &mut Client) -> Vec<(Option<i64>, String, i64, bool)> {
    db.query(
        "SELECT version, root_of_trust, live_keys, stores_new_keys FROM byok.master_key_status()",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}
