//! Supabase Vault as the storage of keys (issue 10), against a real
//! supabase_vault 0.3.x: the lifecycle with `byok.storage = 'vault'`,
//! tenancy and a swapped mapping, a tampered secret told apart from a
//! wrong Vault root key, each refusal when Vault cannot serve, and the WAL
//! and data-file search for the plaintext (pg_byok's direct write against
//! `vault.create_secret`'s insert-then-update).
//!
//! Vault is on no package registry: where supabase_vault is not installed
//! in the Postgres under test, the tests that need it print SKIPPED and
//! pass. Run: `cargo test -p byok-integration --test vault_storage`.

mod common;

use byok_integration::postgres::{Client, GenericClient};
use byok_integration::{
    random_master_key_hex, sample_key, search, vault_installed, Cluster, ClusterOptions,
};
use common::lifecycle::*;
use common::*;
use uuid::Uuid;

const SKIPPED: &str = "SKIPPED: supabase_vault is not installed on this machine \
                       (build supabase/vault 0.3.x with PGXS to run this test)";

/// A cluster whose new keys go to Vault (root key `root`), or None (and a
/// SKIPPED line) where Vault is not installed.
fn vault_cluster_with_root(root: &str) -> Option<Cluster> {
    if !vault_installed() {
        println!("{SKIPPED}");
        return None;
    }
    Some(cluster_with(ClusterOptions {
        vault_root_key: Some(root.to_string()),
        extra_conf: vec!["byok.storage = 'vault'".to_string()],
        ..Default::default()
    }))
}

fn vault_cluster() -> Option<Cluster> {
    vault_cluster_with_root(&random_master_key_hex())
}

/// The key's storage and Vault secret id, as the superuser sees them.
fn stored(db: &mut Client, key_id: Uuid) -> (String, Option<Uuid>, bool) {
    let r = db
        .query_one(
            "SELECT storage, vault_secret_id, ciphertext IS NULL FROM byok.keys WHERE id = $1",
            &[&key_id],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Vault's own reading of a secret (its decrypted_secrets view).
fn vault_reads(db: &mut Client, secret: Uuid) -> Option<(String, String)> {
    db.query_opt(
        "SELECT name, decrypted_secret FROM vault.decrypted_secrets WHERE id = $1",
        &[&secret],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

fn secret_exists(db: &mut impl GenericClient, secret: Uuid) -> bool {
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM vault.secrets WHERE id = $1",
            &[&secret],
        )
        .unwrap()
        .get(0);
    n == 1
}

#[test]
fn vault_lifecycle_add_validate_use_rotate_revoke_and_workspace_end() {
    let Some(c) = vault_cluster() else { return };
    let mut db = c.client();
    let (ws, ws2) = (Uuid::new_v4(), Uuid::new_v4());
    let first = sample_key("anthropic", 1001);
    let k1 = add_active(&c, ws, "anthropic", &first);
    let (storage, secret1, no_ciphertext) = stored(&mut db, k1.id);
    let secret1 = secret1.expect("a vault key has a secret id");
    assert_eq!((storage.as_str(), no_ciphertext), ("vault", true));
    assert_eq!(
        vault_reads(&mut db, secret1),
        Some((format!("byok/{ws}/{}", k1.id), first.clone())),
        "Vault's own view decrypts pg_byok's secret"
    );
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "anthropic").unwrap(),
        first
    );
    // Master key rotation leaves vault keys alone (they have no envelope).
    db.batch_execute("CALL byok.rewrap()").unwrap();
    assert_eq!(
        stored(&mut db, k1.id),
        ("vault".to_string(), Some(secret1), true)
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT coalesce(sum(keys), 0)::bigint FROM byok.key_versions"
        ),
        0,
        "key_versions counts only natively stored keys"
    );

    // Rotation: the new key serves once valid; the old key's secret is gone.
    let second = sample_key("anthropic", 1002);
    let k2 = add_active(&c, ws, "anthropic", &second);
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "anthropic").unwrap(),
        second
    );
    assert_eq!(key_by_id(&mut db, ws, k1.id).status, "revoked");
    assert!(
        !secret_exists(&mut db, secret1),
        "rotation removed the old secret"
    );
    let (_, secret2, _) = stored(&mut db, k2.id);
    let secret2 = secret2.unwrap();

    // Revoke: status, mapping and secret in one transaction.
    let mut tx = db.transaction().unwrap();
    revoke_key(&mut tx, k2.id, Some("customer asked")).unwrap();
    assert!(
        !secret_exists(&mut tx, secret2),
        "the secret goes in the revoking transaction"
    );
    tx.rollback().unwrap();
    assert!(
        secret_exists(&mut db, secret2),
        "a rolled back revoke keeps the secret"
    );
    revoke_key(&mut db, k2.id, Some("customer asked")).unwrap();
    assert!(!secret_exists(&mut db, secret2));
    assert_eq!(stored(&mut db, k2.id), ("vault".to_string(), None, true));
    expect_state(
        use_key(&mut c.client_as("backend"), ws, "anthropic"),
        "P0002",
        "use_key after revoke",
    );

    // A key the vendor rejects (invalid) leaves no secret either.
    let bad = add_key(&mut db, ws, "openai", &sample_key("openai", 1003), None).unwrap();
    let (_, bad_secret, _) = stored(&mut db, bad.id);
    finish_all(&mut c.client_as("sidecar"), "invalid");
    assert_eq!(key_by_id(&mut db, ws, bad.id).status, "invalid");
    assert!(!secret_exists(&mut db, bad_secret.unwrap()));

    // Workspace pause and delete through the attached app table.
    db.batch_execute(&format!(
        "CREATE TABLE public.orgs (id uuid PRIMARY KEY, status text NOT NULL DEFAULT 'active');
         INSERT INTO public.orgs (id) VALUES ('{ws}'), ('{ws2}');
         SELECT byok.attach_workspaces('public.orgs', 'id', 'status');"
    ))
    .unwrap();
    let paused = add_active(&c, ws, "anthropic", &sample_key("anthropic", 1004));
    let deleted = add_active(&c, ws2, "openai", &sample_key("openai", 1005));
    let (_, ps, _) = stored(&mut db, paused.id);
    let (_, ds, _) = stored(&mut db, deleted.id);
    db.batch_execute(&format!(
        "UPDATE public.orgs SET status = 'paused' WHERE id = '{ws}'"
    ))
    .unwrap();
    db.batch_execute(&format!("DELETE FROM public.orgs WHERE id = '{ws2}'"))
        .unwrap();
    assert_eq!(key_by_id(&mut db, ws, paused.id).status, "revoked");
    assert_eq!(key_by_id(&mut db, ws2, deleted.id).status, "revoked");
    assert!(
        !secret_exists(&mut db, ps.unwrap()),
        "pause removed the secret"
    );
    assert!(
        !secret_exists(&mut db, ds.unwrap()),
        "delete removed the secret"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM vault.secrets WHERE name LIKE 'byok/%/%'"
        ),
        0,
        "no dead key leaves a secret in Vault"
    );
}

#[test]
fn vault_only_keys_need_no_keyring() {
    if !vault_installed() {
        println!("{SKIPPED}");
        return;
    }
    // No keyring file and no BYOK_MASTER_KEY at all.
    let c = cluster_with(ClusterOptions {
        vault_root_key: Some(random_master_key_hex()),
        master_key_env: Some(random_master_key_hex()),
        extra_conf: vec!["byok.storage = 'vault'".to_string()],
        ..Default::default()
    });
    let mut c = c;
    c.set_master_key_env(None);
    c.restart();
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 1101);
    add_active(&c, ws, "openai", &key);
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "openai").unwrap(),
        key
    );
    let mut db = c.client();
    // No keyring, and none needed: the one root of trust is Vault's, and
    // it serves the key and takes new ones.
    let roots: Vec<(Option<i64>, String, String, i64, bool)> = db
        .query(
            "SELECT version, source, root_of_trust, live_keys, stores_new_keys
               FROM byok.master_key_status()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        roots,
        vec![(
            None,
            "vault.getkey_script".to_string(),
            "Supabase Vault root key".to_string(),
            1,
            true
        )],
        "no keyring, and none needed"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT keys FROM byok.storage_status WHERE storage = 'vault'"
        ),
        1
    );
    // A native key still needs the keyring, and says so.
    db.batch_execute("SET byok.storage = 'native'").unwrap();
    expect_state(
        add_key(
            &mut db,
            ws,
            "anthropic",
            &sample_key("anthropic", 1102),
            None,
        ),
        "55000",
        "native add_key without a keyring",
    );
}

#[test]
fn vault_tenancy_and_a_swapped_mapping_is_refused() {
    let Some(c) = vault_cluster() else { return };
    let mut db = c.client();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (key_a, key_b) = (sample_key("anthropic", 1201), sample_key("anthropic", 1202));
    let ka = add_active(&c, a, "anthropic", &key_a);
    let kb = add_active(&c, b, "anthropic", &key_b);
    let mut backend = c.client_as("backend");
    assert_eq!(use_key(&mut backend, a, "anthropic").unwrap(), key_a);
    assert_eq!(use_key(&mut backend, b, "anthropic").unwrap(), key_b);
    expect_state(
        use_key(&mut backend, Uuid::new_v4(), "anthropic"),
        "P0002",
        "a workspace without keys",
    );
    // Members of another workspace reach nothing through the API, and app
    // roles reach no Vault table.
    create_login(&c, "member", &[]);
    db.batch_execute("GRANT USAGE ON SCHEMA byok TO member")
        .unwrap();
    expect_state(
        c.client_as("member")
            .query("SELECT * FROM vault.secrets", &[]),
        "42501",
        "an app role reading vault.secrets",
    );

    // A superuser (or an attacker with write access to byok.keys) points
    // A's key at B's secret: refused, never B's key.
    let (_, sb, _) = stored(&mut db, kb.id);
    db.batch_execute(&format!(
        "ALTER TABLE byok.keys DISABLE TRIGGER keys_vault_secret;
         UPDATE byok.keys SET storage = 'native', vault_secret_id = NULL, ciphertext = '\\x00'
          WHERE id = '{}';
         UPDATE byok.keys SET vault_secret_id = '{}' WHERE id = '{}';
         ALTER TABLE byok.keys ENABLE TRIGGER keys_vault_secret;",
        kb.id,
        sb.unwrap(),
        ka.id
    ))
    .unwrap();
    let e = expect_state(
        use_key(&mut backend, a, "anthropic"),
        "XX001",
        "a mapping swapped to another tenant's secret",
    );
    assert!(
        error_text(&e).contains("named for another key"),
        "{}",
        error_text(&e)
    );
    assert_no_key_material(&error_text(&e), &[&key_a, &key_b], "swap error");
}

#[test]
fn vault_tampered_secret_is_told_apart_from_a_wrong_root_key() {
    let root = random_master_key_hex();
    let Some(mut c) = vault_cluster_with_root(&root) else {
        return;
    };
    let ws = Uuid::new_v4();
    let (key, other) = (sample_key("openai", 1301), sample_key("anthropic", 1302));
    add_active(&c, ws, "openai", &key);
    let kt = add_active(&c, ws, "anthropic", &other);

    // Another root key (a dump restored on another server): Vault itself
    // only says "invalid ciphertext"; pg_byok says which, and keeps the keys.
    c.stop();
    c.set_vault_root_key(&random_master_key_hex());
    c.start_again();
    let e = expect_state(
        c.client()
            .query("SELECT decrypted_secret FROM vault.decrypted_secrets", &[]),
        "22000",
        "Vault's own view under another root key",
    );
    assert!(error_text(&e).contains("invalid ciphertext"));
    let e = expect_state(
        use_key(&mut c.client_as("backend"), ws, "openai"),
        "55000",
        "use_key under another Vault root key",
    );
    let text = error_text(&e);
    assert!(text.contains("root key is not the one"), "{text}");
    assert!(text.contains("vault.getkey_script"), "hint: {text}");
    assert_no_key_material(&text, &[&key, &other], "wrong root key error");
    // Even with pg_byok's check secret deleted, a new one is not written
    // under the wrong root key: the keys still wait instead of looking
    // tampered.
    c.client()
        .batch_execute("DELETE FROM vault.secrets WHERE name = 'byok/root-key-check'")
        .unwrap();
    let e = expect_state(
        use_key(&mut c.client_as("backend"), ws, "openai"),
        "55000",
        "use_key under another root key, check secret deleted",
    );
    assert!(error_text(&e).contains("root key is not the one"));
    c.client()
        .batch_execute("SELECT byok.revalidate_key(id) FROM byok.keys")
        .unwrap();
    assert!(
        claim_jobs(&mut c.client_as("sidecar"), "w", 10, 60)
            .unwrap()
            .is_empty(),
        "jobs wait for the right root key"
    );
    let mut db = c.client();
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM byok.keys WHERE status = 'active'"
        ),
        2,
        "a wrong root key destroys nothing"
    );

    // The original root key back: everything opens again.
    c.stop();
    c.set_vault_root_key(&root);
    c.start_again();
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "openai").unwrap(),
        key
    );

    // A tampered secret under the right root key: XX001.
    let mut db = c.client();
    let (_, secret, _) = stored(&mut db, kt.id);
    db.batch_execute(&format!(
        "UPDATE vault.secrets SET secret = translate(secret, 'ABCDEFGH', 'BCDEFGHA') WHERE id = '{}'",
        secret.unwrap()
    ))
    .unwrap();
    let e = expect_state(
        use_key(&mut c.client_as("backend"), ws, "anthropic"),
        "XX001",
        "a tampered Vault secret",
    );
    let text = error_text(&e);
    assert!(text.contains("does not decrypt"), "{text}");
    assert!(text.contains("vault.secrets"), "hint: {text}");
    assert_no_key_material(&text, &[&key, &other], "tamper error");
    // A secret deleted behind pg_byok's back: XX001 as well.
    db.batch_execute("DELETE FROM vault.secrets WHERE name LIKE 'byok/%/%'")
        .unwrap();
    expect_state(
        use_key(&mut c.client_as("backend"), ws, "openai"),
        "XX001",
        "a deleted Vault secret",
    );
}

#[test]
fn vault_missing_unpreloaded_too_old_or_unsafe_is_refused_with_a_hint() {
    // Not installed in the database: needs no Vault on the machine.
    let c = cluster_with(ClusterOptions {
        extra_conf: vec!["byok.storage = 'vault'".to_string()],
        ..Default::default()
    });
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 1401);
    let e = expect_state(
        add_key(&mut c.client(), ws, "anthropic", &key, None),
        "55000",
        "vault storage without supabase_vault",
    );
    let text = error_text(&e);
    assert!(text.contains("not installed") && text.contains("CREATE EXTENSION supabase_vault"));
    assert_no_key_material(&text, &[&key], "not installed error");
    // auto falls back to native where Vault is absent.
    let mut db = c.client();
    db.batch_execute("SET byok.storage = 'auto'").unwrap();
    let k = add_key(&mut db, ws, "anthropic", &key, None).unwrap();
    assert_eq!(stored(&mut db, k.id).0, "native");
    drop((db, c));

    if !vault_installed() {
        println!("{SKIPPED}");
        return;
    }
    // Installed but not preloaded: Vault has no root key.
    let c = cluster_with(ClusterOptions {
        extra_conf: vec!["byok.storage = 'vault'".to_string()],
        ..Default::default()
    });
    let mut db = c.client();
    db.batch_execute("CREATE EXTENSION supabase_vault").unwrap();
    let e = expect_state(
        add_key(&mut db, ws, "anthropic", &key, None),
        "55000",
        "vault not preloaded",
    );
    assert!(error_text(&e).contains("shared_preload_libraries"));
    db.batch_execute("SET byok.storage = 'auto'").unwrap();
    let k = add_key(&mut db, ws, "anthropic", &key, None).unwrap();
    assert_eq!(stored(&mut db, k.id).0, "native", "auto: native here");
    drop((db, c));

    // Too old (no _crypto_aead_det_* functions, as before 0.3.0), and
    // objects an app role could have replaced.
    let Some(c) = vault_cluster() else { return };
    let mut db = c.client();
    create_login(&c, "app_owner", &[]);
    let cases = [
        (
            "ALTER FUNCTION vault._crypto_aead_det_decrypt(bytea, bytea, bigint, bytea, bytea) OWNER TO app_owner",
            "ALTER FUNCTION vault._crypto_aead_det_decrypt(bytea, bytea, bigint, bytea, bytea) OWNER TO postgres",
            "function vault._crypto_aead_det_decrypt",
        ),
        (
            "CREATE FUNCTION public.spy() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
             CREATE TRIGGER spy BEFORE INSERT ON vault.secrets FOR EACH ROW EXECUTE FUNCTION public.spy()",
            "DROP TRIGGER spy ON vault.secrets",
            "table vault.secrets",
        ),
        (
            "ALTER EXTENSION supabase_vault DROP FUNCTION vault._crypto_aead_det_encrypt(bytea, bytea, bigint, bytea, bytea);
             DROP FUNCTION vault._crypto_aead_det_encrypt(bytea, bytea, bigint, bytea, bytea)",
            "SELECT 1",
            "too old",
        ),
    ];
    for (break_it, _, says) in cases.iter() {
        let mut tx = db.transaction().unwrap();
        tx.batch_execute(break_it).unwrap();
        let e = expect_state(add_key(&mut tx, ws, "anthropic", &key, None), "55000", says);
        assert!(error_text(&e).contains(says), "{says}: {}", error_text(&e));
        tx.rollback().unwrap();
    }
    // Unbroken again: it works.
    let k = add_key(&mut db, ws, "anthropic", &key, None).unwrap();
    assert_eq!(stored(&mut db, k.id).0, "vault");
    // A session that has already used Vault keeps no stale trust: the same
    // breakages, committed by another session, stop its next call too.
    for (break_it, mend_it, says) in cases.iter().take(2) {
        c.client().batch_execute(break_it).unwrap();
        let fresh = Uuid::new_v4();
        let e = expect_state(
            add_key(&mut db, fresh, "anthropic", &key, None),
            "55000",
            says,
        );
        assert!(error_text(&e).contains(says), "{says}: {}", error_text(&e));
        c.client().batch_execute(mend_it).unwrap();
        let k = add_key(&mut db, fresh, "anthropic", &key, None).unwrap();
        assert_eq!(stored(&mut db, k.id).0, "vault", "{says}: mended");
    }
}

/// The WAL and the data files: the plaintext of a key stored through
/// pg_byok is nowhere, while the same search finds a control key stored
/// with vault.create_secret (its insert-then-update writes the plaintext).
#[test]
fn vault_plaintext_never_reaches_wal_or_data_files() {
    let Some(c) = vault_cluster() else { return };
    let mut db = c.client();
    let ws = Uuid::new_v4();
    let keys: Vec<String> = (0..4)
        .map(|i| sample_key(if i % 2 == 0 { "anthropic" } else { "openai" }, 1500 + i))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let vendor = if i % 2 == 0 { "anthropic" } else { "openai" };
        add_active(&c, Uuid::new_v4(), vendor, key);
    }
    let first = add_active(&c, ws, "anthropic", &sample_key("anthropic", 1510));
    let moved = sample_key("anthropic", 1510);
    // Through every path that handles the plaintext: use, migrate both
    // ways, revoke.
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "anthropic").unwrap(),
        moved
    );
    db.batch_execute("CALL byok.migrate_storage(target => 'native')")
        .unwrap();
    db.batch_execute("CALL byok.migrate_storage(target => 'vault')")
        .unwrap();
    revoke_key(&mut db, first.id, None).unwrap();
    let control = sample_key("openai", 1599);
    db.execute("SELECT vault.create_secret($1, 'control')", &[&control])
        .unwrap();
    db.batch_execute("CHECKPOINT").unwrap();

    let data = c.data_dir().to_path_buf();
    let mut needles: Vec<String> = Vec::new();
    for k in keys.iter().chain([&moved]) {
        needles.extend(key_fragments(k, 24));
    }
    let hits = search(&[&data], &needles);
    assert!(
        hits.is_empty(),
        "plaintext of a pg_byok vault key found in: {:?}",
        hits.iter()
            .map(|h| h.file.display().to_string())
            .collect::<Vec<_>>()
    );
    let control_hits = search(&[&data.join("pg_wal")], &key_fragments(&control, 24));
    assert!(
        !control_hits.is_empty(),
        "the search must find the plaintext vault.create_secret writes to the WAL"
    );
    println!(
        "measured: vault.create_secret's plaintext found {} times in the WAL; pg_byok's path: 0",
        control_hits.len()
    );
}

/// The plaintext travels to Vault as a bound parameter: a failing write
/// (here a constraint a superuser put on vault.secrets) shows the row it
/// would have written, which holds Vault's ciphertext, and the calling
/// statement, never the key, in the error and in the server log.
#[test]
fn a_failing_vault_write_shows_no_plaintext() {
    let Some(c) = vault_cluster() else { return };
    let mut db = c.client();
    let ws = Uuid::new_v4();
    add_key(&mut db, ws, "openai", &sample_key("openai", 1601), None).unwrap();
    db.batch_execute(
        "ALTER TABLE vault.secrets ADD CONSTRAINT short_only CHECK (length(secret) < 10) NOT VALID",
    )
    .unwrap();
    let key = sample_key("anthropic", 1602);
    let e = expect_state(
        add_key(&mut db, ws, "anthropic", &key, None),
        "23514",
        "a vault write refused by a constraint",
    );
    let text = format!(
        "{} {:?}",
        error_text(&e),
        e.as_db_error().map(|d| d.where_())
    );
    assert!(text.contains("Failing row contains"), "{text}");
    assert_no_key_material(&text, &[&key], "the failing write's error");
    assert_no_key_material(&c.server_log(), &[&key], "the server log");
}
