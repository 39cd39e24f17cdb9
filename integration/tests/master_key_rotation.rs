//! Master key rotation, tested the way trusted KMSs test it: encrypt under
//! several versions added by reload (SIGHUP, no restart), retire old ones
//! with `byok.min_decrypt_version`, rewrap everything to the primary and
//! check each key opens to the same plaintext with only the primary loaded,
//! kill a rewrap midway and resume it, and rewrap while keys are added,
//! used and revoked.

mod common;

use byok_integration::postgres::{self, Client, SimpleQueryMessage};
use byok_integration::{random_master_key_hex, sample_key, wait_until, Cluster, ClusterOptions};
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// A keyring file text holding `versions` (each `(version, hex)`).
fn keyring(versions: &[(u32, &str)]) -> String {
    versions.iter().map(|(v, k)| format!("{v} {k}\n")).collect()
}

fn cluster_with_keyring(text: &str) -> Cluster {
    let c = Cluster::start(ClusterOptions {
        keyring: Some(text.to_string()),
        ..Default::default()
    });
    create_login(&c, "backend", &["byok_consumer"]);
    c
}

/// `pg_reload_conf()`, then wait until the postmaster has read the
/// configuration again (a new session inherits its reload time).
fn reload(c: &Cluster) {
    let mut db = c.client();
    let before: SystemTime = db
        .query_one("SELECT pg_conf_load_time()", &[])
        .unwrap()
        .get(0);
    db.execute("SELECT pg_reload_conf()", &[]).unwrap();
    wait_until("the postmaster reloads", Duration::from_secs(20), || {
        let now: SystemTime = c
            .client()
            .query_one("SELECT pg_conf_load_time()", &[])
            .unwrap()
            .get(0);
        now > before
    });
}

/// Rewrite the keyring file and reload (no restart).
fn rotate_to(c: &mut Cluster, text: &str) {
    c.set_keyring(text);
    reload(c);
}

fn set_min_decrypt_version(c: &Cluster, version: Option<i32>) {
    let sql = match version {
        Some(v) => format!("ALTER SYSTEM SET byok.min_decrypt_version = {v}"),
        None => "ALTER SYSTEM RESET byok.min_decrypt_version".to_string(),
    };
    c.client()
        .batch_execute(&sql)
        .unwrap_or_else(|e| c.fail(&sql, &e));
    reload(c);
}

fn version_of(db: &mut Client, key_id: Uuid) -> Option<i64> {
    db.query_one(
        "SELECT byok._ciphertext_version(ciphertext) FROM byok.keys WHERE id = $1",
        &[&key_id],
    )
    .unwrap()
    .get(0)
}

/// One row of `byok.key_versions`: (version, keys, is_primary, loaded, retired).
type VersionRow = (Option<i64>, i64, bool, bool, Option<bool>);

fn key_versions(db: &mut Client) -> Vec<VersionRow> {
    db.query(
        "SELECT version, keys, is_primary, loaded, retired FROM byok.key_versions",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

fn keys_under(db: &mut Client, version: i64) -> i64 {
    key_versions(db)
        .into_iter()
        .find(|v| v.0 == Some(version))
        .map_or(0, |v| v.1)
}

/// Open every live key as the superuser (pending keys included) and
/// compare with the plaintext it was added with.
fn assert_all_open(c: &Cluster, expected: &BTreeMap<Uuid, String>, what: &str) {
    assert_all_open_in(c, &mut c.client(), expected, what);
}

/// [`assert_all_open`] in a given session.
fn assert_all_open_in(c: &Cluster, db: &mut Client, expected: &BTreeMap<Uuid, String>, what: &str) {
    let rows = db
        .query(
            "SELECT id, byok._open(id, workspace_id, vendor, ciphertext) FROM byok.keys
              WHERE ciphertext IS NOT NULL",
            &[],
        )
        .unwrap_or_else(|e| c.fail(what, &e));
    let opened: BTreeMap<Uuid, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(opened.len(), expected.len(), "{what}: number of live keys");
    for (id, key) in expected {
        assert!(
            opened.get(id) == Some(key),
            "{what}: key {id} does not open to its plaintext"
        );
    }
}

/// Add `n` keys (one workspace each, pending) and return id → plaintext.
fn add_keys(c: &Cluster, n: u64, seed: u64) -> BTreeMap<Uuid, String> {
    let mut db = c.client();
    (0..n)
        .map(|i| {
            let vendor = if i % 2 == 0 { "anthropic" } else { "openai" };
            let key = sample_key(vendor, seed + i);
            let info = add_key(&mut db, Uuid::new_v4(), vendor, &key, None)
                .unwrap_or_else(|e| c.fail("add_key", &e));
            (info.id, key)
        })
        .collect()
}

/// Run `CALL …`, returning the NOTICE/WARNING texts it sent, or the error.
fn call_collecting(db_url_client: &mut Client, sql: &str) -> Result<(), postgres::Error> {
    db_url_client
        .simple_query(sql)
        .map(|msgs: Vec<SimpleQueryMessage>| drop(msgs))
}

#[test]
fn a_version_added_by_reload_encrypts_new_keys_at_once_and_older_ones_still_open() {
    let (k1, k2) = (random_master_key_hex(), random_master_key_hex());
    let mut c = cluster_with_keyring(&keyring(&[(1, &k1)]));
    let mut expected = add_keys(&c, 4, 100);
    let mut db = c.client();
    let started: SystemTime = db
        .query_one("SELECT pg_postmaster_start_time()", &[])
        .unwrap()
        .get(0);
    // A session open across the reload, holding the old keyring.
    let mut long_lived = c.client();
    let before: SystemTime = long_lived
        .query_one("SELECT pg_conf_load_time()", &[])
        .unwrap()
        .get(0);

    rotate_to(&mut c, &keyring(&[(1, &k1), (2, &k2)]));
    let mut db = c.client();
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 150);
    let info = add_key(&mut db, ws, "anthropic", &key, None).unwrap();
    assert_eq!(
        version_of(&mut db, info.id),
        Some(2),
        "new keys use version 2"
    );
    expected.insert(info.id, key);
    for id in expected.keys().filter(|id| **id != info.id) {
        assert_eq!(version_of(&mut db, *id), Some(1));
    }
    assert_all_open(&c, &expected, "after adding version 2");
    assert_eq!(
        key_versions(&mut db),
        vec![
            (Some(1), 4, false, true, Some(false)),
            (Some(2), 1, true, true, Some(false))
        ]
    );

    // The long-lived session picks the new keyring up once it has processed
    // the SIGHUP, without reconnecting.
    wait_until("the old session reloads", Duration::from_secs(20), || {
        let t: SystemTime = long_lived
            .query_one("SELECT pg_conf_load_time()", &[])
            .unwrap()
            .get(0);
        t > before
    });
    let primary: i64 = long_lived
        .query_one(
            "SELECT version FROM byok.master_key_status() WHERE is_primary",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(primary, 2);
    let key = sample_key("openai", 151);
    let info = add_key(&mut long_lived, Uuid::new_v4(), "openai", &key, None).unwrap();
    assert_eq!(version_of(&mut db, info.id), Some(2));
    expected.insert(info.id, key);

    // A broken keyring file on reload: a session keeps the keyring it had,
    // and the failure is logged.
    let before: SystemTime = long_lived
        .query_one("SELECT pg_conf_load_time()", &[])
        .unwrap()
        .get(0);
    rotate_to(&mut c, "2 not-hex\n");
    wait_until(
        "the old session reloads again",
        Duration::from_secs(20),
        || {
            let t: SystemTime = long_lived
                .query_one("SELECT pg_conf_load_time()", &[])
                .unwrap()
                .get(0);
            t > before
        },
    );
    let versions: Vec<i64> = long_lived
        .query(
            "SELECT version FROM byok.master_key_status() ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2]);
    assert_all_open_in(&c, &mut long_lived, &expected, "after a broken reload");
    assert!(
        c.server_log().contains("keyring file not reloaded"),
        "the broken reload is reported in the server log"
    );
    // Fixed and reloaded again: every session is back on versions 1 and 2.
    rotate_to(&mut c, &keyring(&[(1, &k1), (2, &k2)]));
    assert_all_open(&c, &expected, "after fixing the file");
    let now_started: SystemTime = c
        .client()
        .query_one("SELECT pg_postmaster_start_time()", &[])
        .unwrap()
        .get(0);
    assert_eq!(now_started, started, "no restart happened");
}

#[test]
fn retiring_old_versions_fails_them_with_55000_and_rewrap_moves_every_key_to_the_primary() {
    let (k1, k2, k3) = (
        random_master_key_hex(),
        random_master_key_hex(),
        random_master_key_hex(),
    );
    let mut c = cluster_with_keyring(&keyring(&[(1, &k1)]));
    let mut expected = add_keys(&c, 5, 200);
    rotate_to(&mut c, &keyring(&[(1, &k1), (2, &k2)]));
    expected.extend(add_keys(&c, 4, 300));
    rotate_to(&mut c, &keyring(&[(1, &k1), (2, &k2), (3, &k3)]));
    expected.extend(add_keys(&c, 3, 400));
    let mut db = c.client();
    assert_eq!(
        key_versions(&mut db)
            .iter()
            .map(|v| (v.0, v.1))
            .collect::<Vec<_>>(),
        vec![(Some(1), 5), (Some(2), 4), (Some(3), 3)]
    );
    let by_version = |db: &mut Client, v: i64| -> Vec<Uuid> {
        expected
            .keys()
            .filter(|id| version_of(db, **id) == Some(v))
            .copied()
            .collect()
    };
    let (v1_ids, v2_ids, v3_ids) = (
        by_version(&mut db, 1),
        by_version(&mut db, 2),
        by_version(&mut db, 3),
    );

    // Retire versions 1 and 2: what they sealed fails with 55000 naming
    // the version; version 3 keys still open, new keys still seal.
    set_min_decrypt_version(&c, Some(3));
    let mut db = c.client();
    let open_one = |db: &mut Client, id: Uuid| {
        db.query_one(
            "SELECT byok._open(id, workspace_id, vendor, ciphertext) FROM byok.keys WHERE id = $1",
            &[&id],
        )
        .map(|r| r.get::<_, String>(0))
    };
    for (ids, version) in [(&v1_ids, "1"), (&v2_ids, "2")] {
        for id in ids {
            let e = expect_state(open_one(&mut db, *id), "55000", "a retired version");
            let text = error_text(&e);
            assert!(
                text.contains(&format!("master key version {version} is retired")),
                "{text}"
            );
            assert!(
                text.contains("byok.rewrap"),
                "the hint says to rewrap: {text}"
            );
            assert_no_key_material(&text, &[expected[id].as_str()], "55000 error");
        }
    }
    for id in &v3_ids {
        assert_eq!(open_one(&mut db, *id).unwrap(), expected[id]);
    }
    expected.extend(add_keys(&c, 1, 500));
    assert_eq!(
        key_versions(&mut db)
            .iter()
            .map(|v| (v.0, v.4))
            .collect::<Vec<_>>(),
        vec![
            (Some(1), Some(true)),
            (Some(2), Some(true)),
            (Some(3), Some(false))
        ]
    );
    // use_key through the API, as the consumer role, says the same.
    let ws: Uuid = db
        .query_one(
            "SELECT workspace_id FROM byok.keys WHERE id = $1",
            &[&v1_ids[0]],
        )
        .unwrap()
        .get(0);
    db.execute(
        "UPDATE byok.keys SET status = 'active' WHERE id = $1",
        &[&v1_ids[0]],
    )
    .unwrap();
    let vendor: String = db
        .query_one("SELECT vendor FROM byok.keys WHERE id = $1", &[&v1_ids[0]])
        .unwrap()
        .get(0);
    let e = expect_state(
        use_key(&mut c.client_as("backend"), ws, &vendor),
        "55000",
        "use_key under a retired version",
    );
    assert!(error_text(&e).contains("version 1"), "{}", error_text(&e));

    // Rewrap with the retired versions still retired: nothing opens them,
    // so nothing moves, and retiring them is refused.
    let e = expect_state(
        call_collecting(&mut c.client(), "CALL byok.rewrap(retire_below => 3)"),
        "55000",
        "rewrap refusing to retire versions that still protect keys",
    );
    assert!(
        error_text(&e).contains("still protect 9 keys"),
        "{}",
        error_text(&e)
    );
    assert_eq!(keys_under(&mut c.client(), 1), 5);

    // Un-retire, rewrap in small batches: every key ends under version 3.
    set_min_decrypt_version(&c, None);
    call_collecting(&mut c.client(), "CALL byok.rewrap(batch_size => 2)")
        .unwrap_or_else(|e| c.fail("CALL byok.rewrap", &e));
    let mut db = c.client();
    assert_eq!(
        key_versions(&mut db),
        vec![
            (Some(1), 0, false, true, Some(false)),
            (Some(2), 0, false, true, Some(false)),
            (Some(3), 13, true, true, Some(false))
        ]
    );
    // Calling it again changes nothing (ciphertexts stay byte for byte).
    let before: Vec<Vec<u8>> = db
        .query("SELECT ciphertext FROM byok.keys ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    call_collecting(&mut db, "CALL byok.rewrap()").unwrap();
    let after: Vec<Vec<u8>> = db
        .query("SELECT ciphertext FROM byok.keys ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(before, after, "a second rewrap rewrites nothing");

    // Retire 1 and 2 for good and drop them from the keyring: every key
    // opens to the same plaintext under the primary alone.
    call_collecting(&mut db, "CALL byok.rewrap(retire_below => 3)")
        .unwrap_or_else(|e| c.fail("rewrap retiring 1 and 2", &e));
    set_min_decrypt_version(&c, Some(3));
    rotate_to(&mut c, &keyring(&[(3, &k3)]));
    assert_all_open(&c, &expected, "after rewrap, primary only");
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, &vendor).unwrap(),
        expected[&v1_ids[0]]
    );
    let log = c.server_log();
    for key in expected.values() {
        assert_no_key_material(&log, &[key.as_str()], "server log");
    }
}

#[test]
fn rewrap_refuses_to_retire_a_version_that_still_protects_keys_unless_forced() {
    let (k1, k2) = (random_master_key_hex(), random_master_key_hex());
    let mut c = cluster_with_keyring(&keyring(&[(1, &k1)]));
    let good = add_keys(&c, 3, 600);
    let broken = add_keys(&c, 1, 610);
    let broken_id = *broken.keys().next().unwrap();
    // Damage one ciphertext's tag: it can no longer be opened, so not rewrapped.
    let mut db = c.client();
    db.execute(
        "UPDATE byok.keys SET ciphertext = set_byte(ciphertext, length(ciphertext) - 1,
                 get_byte(ciphertext, length(ciphertext) - 1) # 1) WHERE id = $1",
        &[&broken_id],
    )
    .unwrap();
    rotate_to(&mut c, &keyring(&[(1, &k1), (2, &k2)]));
    let mut db = c.client();

    for (sql, state) in [
        ("CALL byok.rewrap(retire_below => 3)", "22023"),
        ("CALL byok.rewrap(batch_size => 0)", "22023"),
        ("CALL byok.rewrap(batch_size => NULL)", "22004"),
    ] {
        expect_state(call_collecting(&mut db, sql), state, sql);
    }
    let mut tx = db.transaction().unwrap();
    expect_state(
        tx.simple_query("CALL byok.rewrap()").map(drop),
        "2D000",
        "rewrap inside a transaction block",
    );
    drop(tx);
    let e = expect_state(
        call_collecting(&mut c.client_as("backend"), "CALL byok.rewrap()"),
        "42501",
        "rewrap by a non-superuser",
    );
    drop(e);

    let e = expect_state(
        call_collecting(&mut db, "CALL byok.rewrap(retire_below => 2)"),
        "55000",
        "retiring version 1 while a key still needs it",
    );
    let text = error_text(&e);
    assert!(
        text.contains("below 2 still protect 1 keys") && text.contains("force"),
        "{text}"
    );
    // The good keys were rewrapped and committed before the refusal.
    let mut db = c.client();
    for id in good.keys() {
        assert_eq!(version_of(&mut db, *id), Some(2));
    }
    assert_eq!(version_of(&mut db, broken_id), Some(1));
    let status: String = db
        .query_one("SELECT status FROM byok.keys WHERE id = $1", &[&broken_id])
        .unwrap()
        .get(0);
    assert_eq!(status, "pending", "refusing changes nothing about the key");
    assert!(c.server_log().contains(&format!("key {broken_id}")));

    call_collecting(
        &mut db,
        "CALL byok.rewrap(retire_below => 2, force => true)",
    )
    .unwrap_or_else(|e| c.fail("forced retirement", &e));
    let (status, cause, gone): (String, String, bool) = {
        let r = db
            .query_one(
                "SELECT status, revoked_cause, ciphertext IS NULL FROM byok.keys WHERE id = $1",
                &[&broken_id],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        (status.as_str(), cause.as_str(), gone),
        ("revoked", "master_key_retired", true)
    );
    assert_eq!(keys_under(&mut db, 1), 0);
    assert_eq!(keys_under(&mut db, 2), 3);
    let audited: i64 = db
        .query_one(
            "SELECT count(*) FROM byok.audit_log WHERE action = 'revoke' AND key_id = $1
                AND outcome = 'master_key_retired'",
            &[&broken_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    set_min_decrypt_version(&c, Some(2));
    assert_all_open(&c, &good, "after the forced retirement");
}

#[test]
fn a_rewrap_killed_midway_loses_one_batch_at_most_and_a_second_call_finishes() {
    let (k1, k2) = (random_master_key_hex(), random_master_key_hex());
    let mut c = cluster_with_keyring(&keyring(&[(1, &k1)]));
    let expected = add_keys(&c, 40, 700);
    rotate_to(&mut c, &keyring(&[(1, &k1), (2, &k2)]));
    // A gate on the 25th key in id order: batches of 10 commit twice, then
    // the third stops inside, on a lock the test holds.
    let gate = *expected.keys().nth(24).unwrap();
    let mut admin = c.client();
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION public.rewrap_gate() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.id = '{gate}' THEN PERFORM pg_advisory_xact_lock(4242); END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER rewrap_gate BEFORE UPDATE ON byok.keys
                 FOR EACH ROW EXECUTE FUNCTION public.rewrap_gate();
             SELECT pg_advisory_lock(4242);"
        ))
        .unwrap();
    let mut rewrapper = c.client();
    let pid: i32 = rewrapper
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let run = std::thread::spawn(move || {
        call_collecting(&mut rewrapper, "CALL byok.rewrap(batch_size => 10)")
    });
    wait_until("rewrap waits at the gate", Duration::from_secs(30), || {
        admin
            .query_one(
                "SELECT coalesce(wait_event = 'advisory', false) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    });
    assert_eq!(keys_under(&mut admin, 2), 20, "two batches committed");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let outcome = run.join().unwrap();
    assert!(outcome.is_err(), "the killed CALL fails");
    admin
        .batch_execute(
            "SELECT pg_advisory_unlock(4242);
             DROP TRIGGER rewrap_gate ON byok.keys;
             DROP FUNCTION public.rewrap_gate();",
        )
        .unwrap();
    // The interrupted batch left nothing half-done.
    assert_eq!(keys_under(&mut admin, 2), 20);
    assert_eq!(keys_under(&mut admin, 1), 20);
    assert_all_open(&c, &expected, "after the kill, both versions loaded");

    call_collecting(&mut c.client(), "CALL byok.rewrap(batch_size => 10)")
        .unwrap_or_else(|e| c.fail("the second CALL", &e));
    assert_eq!(keys_under(&mut admin, 1), 0);
    assert_eq!(keys_under(&mut admin, 2), 40);
    rotate_to(&mut c, &keyring(&[(2, &k2)]));
    assert_all_open(&c, &expected, "after resuming, primary only");
}

#[test]
fn rewrap_is_safe_under_concurrent_add_use_and_revoke() {
    let (k1, k2) = (random_master_key_hex(), random_master_key_hex());
    let mut c = cluster_with_keyring(&keyring(&[(1, &k1)]));
    let mut expected = add_keys(&c, 60, 800);
    // Make them active so use_key serves them.
    c.client()
        .batch_execute("UPDATE byok.keys SET status = 'active'; DELETE FROM byok.jobs;")
        .unwrap();
    let mut db = c.client();
    let targets: Vec<(Uuid, Uuid, String)> = db
        .query(
            "SELECT id, workspace_id, vendor FROM byok.keys ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // Slow each rewrap row down a little so the concurrent work overlaps it.
    db.batch_execute(
        "CREATE FUNCTION public.slow_rewrap() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF OLD.ciphertext IS NOT NULL AND NEW.ciphertext IS NOT NULL THEN
                 PERFORM pg_sleep(0.01);
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER slow_rewrap BEFORE UPDATE ON byok.keys
             FOR EACH ROW EXECUTE FUNCTION public.slow_rewrap();",
    )
    .unwrap();
    rotate_to(&mut c, &keyring(&[(1, &k1), (2, &k2)]));

    let stop = Arc::new(AtomicBool::new(false));
    // Users: use_key on the keys that are never revoked must always work.
    let users: Vec<_> = (0..2)
        .map(|t| {
            let mut db = c.client_as("backend");
            let targets: Vec<_> = targets[30..].to_vec();
            let expected = expected.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut uses = 0;
                while !stop.load(Ordering::SeqCst) {
                    for (id, ws, vendor) in targets.iter().skip(t).step_by(2) {
                        let got = use_key(&mut db, *ws, vendor).expect("use_key during rewrap");
                        assert_eq!(&got, &expected[id], "use_key during rewrap");
                        uses += 1;
                    }
                }
                uses
            })
        })
        .collect();
    // Revoker: the first 30 keys, one by one.
    let revoker = {
        let mut db = c.client();
        let ids: Vec<Uuid> = targets[..30].iter().map(|t| t.0).collect();
        std::thread::spawn(move || {
            for id in ids {
                revoke_key(&mut db, id, Some("rotation test")).expect("revoke during rewrap");
            }
        })
    };
    // Adder: 20 new keys while rewrap runs.
    let adder = {
        let mut db = c.client();
        std::thread::spawn(move || {
            (0..20u64)
                .map(|i| {
                    let key = sample_key("openai", 900 + i);
                    let info = add_key(&mut db, Uuid::new_v4(), "openai", &key, None)
                        .expect("add_key during rewrap");
                    (info.id, key)
                })
                .collect::<Vec<_>>()
        })
    };
    call_collecting(&mut c.client(), "CALL byok.rewrap(batch_size => 5)")
        .unwrap_or_else(|e| c.fail("rewrap under concurrency", &e));
    revoker.join().expect("revoker");
    let added = adder.join().expect("adder");
    stop.store(true, Ordering::SeqCst);
    for u in users {
        assert!(
            u.join().expect("user thread") > 0,
            "use_key ran during the rewrap"
        );
    }
    // Finish whatever the concurrent work left (keys locked in a pass).
    call_collecting(&mut c.client(), "CALL byok.rewrap(batch_size => 5)").unwrap();

    let mut db = c.client();
    let dead: i64 = db
        .query_one(
            "SELECT count(*) FROM byok.keys WHERE id = ANY($1)
                AND status = 'revoked' AND ciphertext IS NULL",
            &[&targets[..30].iter().map(|t| t.0).collect::<Vec<_>>()],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        dead, 30,
        "every revoked key stays revoked, with no ciphertext"
    );
    for t in &targets[..30] {
        expected.remove(&t.0);
    }
    expected.extend(added);
    assert_eq!(keys_under(&mut db, 1), 0);
    assert_eq!(keys_under(&mut db, 2), 50);
    db.batch_execute("DROP TRIGGER slow_rewrap ON byok.keys; DROP FUNCTION public.slow_rewrap();")
        .unwrap();
    rotate_to(&mut c, &keyring(&[(2, &k2)]));
    assert_all_open(&c, &expected, "after a concurrent rewrap, primary only");
}
