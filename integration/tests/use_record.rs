//! The record of uses (issue 11): use_key counts in shared memory, the
//! background worker flushes into byok.key_usage, a crash loses at most the
//! uses since the last flush, a clean shutdown none; `byok.use_audit =
//! 'each'` keeps one durable audit row per call; a full counter table and a
//! database the worker does not serve write each use through.

mod common;

use byok_integration::postgres::Client;
use byok_integration::{sample_key, wait_until, ClusterOptions};
use common::lifecycle::*;
use common::*;
use std::time::Duration;
use uuid::Uuid;

fn uses_of(db: &mut Client, key: Uuid) -> i64 {
    db.query_one(
        "SELECT coalesce(sum(uses), 0)::bigint FROM byok.key_usage WHERE key_id = $1",
        &[&key],
    )
    .unwrap()
    .get(0)
}

fn live_uses_of(db: &mut Client, key: Uuid) -> i64 {
    db.query_one(
        "SELECT coalesce(sum(uses), 0)::bigint FROM byok.key_usage_live WHERE key_id = $1",
        &[&key],
    )
    .unwrap()
    .get(0)
}

fn audit_uses(db: &mut Client, key: Uuid) -> i64 {
    db.query_one(
        "SELECT count(*) FROM byok.audit_log WHERE action = 'use' AND key_id = $1",
        &[&key],
    )
    .unwrap()
    .get(0)
}

fn use_n(c: &byok_integration::Cluster, ws: Uuid, vendor: &str, expected: &str, n: usize) {
    let mut b = c.client_as("backend");
    for _ in 0..n {
        let got = use_key(&mut b, ws, vendor).unwrap_or_else(|e| c.fail("use_key", &e));
        assert_eq!(got, expected);
    }
}

fn set_system(c: &byok_integration::Cluster, setting: &str, value: &str) {
    c.client()
        .batch_execute(&format!("ALTER SYSTEM SET {setting} = '{value}'"))
        .unwrap_or_else(|e| c.fail("ALTER SYSTEM", &e));
    c.client()
        .batch_execute("SELECT pg_reload_conf()")
        .unwrap_or_else(|e| c.fail("pg_reload_conf", &e));
}

/// The worker starts with the server, before the harness creates database
/// `byok`, and is restarted by Postgres until it can connect: until then
/// use_key writes each use through. Wait for it.
pub fn wait_for_flusher(c: &byok_integration::Cluster) {
    let mut admin = c.client();
    wait_until(
        "the usage worker serves database byok",
        Duration::from_secs(60),
        || {
            admin
            .query_one(
                "SELECT flusher_database_oid = (SELECT oid FROM pg_database WHERE datname = 'byok')
                   FROM byok.usage_status()",
                &[],
            )
            .map(|r| r.get::<_, Option<bool>>(0) == Some(true))
            .unwrap_or(false)
        },
    );
}

fn counted_cluster(opts: ClusterOptions) -> byok_integration::Cluster {
    let c = cluster_with(opts);
    wait_for_flusher(&c);
    c
}

fn fast_flushes() -> ClusterOptions {
    ClusterOptions {
        extra_conf: vec!["byok.usage_flush_interval = 1".into()],
        ..Default::default()
    }
}

#[test]
fn aggregate_mode_counts_uses_without_a_write_and_the_worker_flushes_them() {
    let c = counted_cluster(ClusterOptions {
        extra_conf: vec!["byok.usage_flush_interval = 3600".into()],
        ..Default::default()
    });
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 31);
    let k = add_active(&c, ws, "openai", &key);
    let mut admin = c.client();
    use_n(&c, ws, "openai", &key, 5);
    // No write per call: no audit row, no table row, and no transaction id
    // (every write of a row needs one).
    assert_eq!(audit_uses(&mut admin, k.id), 0);
    assert_eq!(uses_of(&mut admin, k.id), 0);
    let mut b = c.client_as("backend");
    let mut tx = b.transaction().unwrap();
    assert_eq!(use_key(&mut tx, ws, "openai").unwrap(), key);
    let xid: Option<String> = tx
        .query_one("SELECT pg_current_xact_id_if_assigned()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(xid, None, "use_key wrote in aggregate mode");
    tx.commit().unwrap();
    assert_eq!(live_uses_of(&mut admin, k.id), 6);
    let r = admin
        .query_one(
            "SELECT role, database FROM byok.key_usage_live WHERE key_id = $1",
            &[&k.id],
        )
        .unwrap();
    let (role, db): (String, String) = (r.get(0), r.get(1));
    assert_eq!((role.as_str(), db.as_str()), ("backend", "byok"));

    // A reload wakes the worker (SIGHUP sets its latch): it flushes then,
    // and every second from then on.
    set_system(&c, "byok.usage_flush_interval", "1");
    wait_until("the worker flushes 6 uses", Duration::from_secs(30), || {
        uses_of(&mut admin, k.id) == 6
    });
    assert_eq!(
        live_uses_of(&mut admin, k.id),
        0,
        "flushed counters are taken away"
    );
    let (role, ws_row, vendor, fresh): (String, Uuid, String, bool) = {
        let r = admin
            .query_one(
                "SELECT u.role, u.workspace_id, u.vendor,
                        k.last_used_at <= u.last_used_at AND k.last_used_at > u.last_used_at - interval '1 hour'
                        AND u.hour = date_trunc('hour', u.last_used_at)
                   FROM byok.key_usage u JOIN byok.keys k ON k.id = u.key_id WHERE u.key_id = $1",
                &[&k.id],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(
        (role.as_str(), ws_row, vendor.as_str()),
        ("backend", ws, "openai")
    );
    assert!(
        fresh,
        "keys.last_used_at is within the hour before the last flushed use (it moves to the hour)"
    );
    let status: (bool, i32, Option<String>) = {
        let r = admin
            .query_one(
                "SELECT s.preloaded, s.slots_used, d.datname::text FROM byok.usage_status() s
                   LEFT JOIN pg_database d ON d.oid = s.flusher_database_oid::oid",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(status, (true, 0, Some("byok".to_string())));
    // key_health's last use is the flushed one.
    let health_used: bool = admin
        .query_one(
            "SELECT h.last_used_at IS NOT NULL FROM byok.key_health($1) h WHERE h.key_id = $2",
            &[&ws, &k.id],
        )
        .unwrap()
        .get(0);
    assert!(health_used);
}

#[test]
fn a_crash_loses_at_most_the_uses_since_the_last_flush_and_a_clean_stop_none() {
    let mut c = counted_cluster(fast_flushes());
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 32);
    let k = add_active(&c, ws, "anthropic", &key);
    let (n, m) = (20_i64, 15_i64);
    use_n(&c, ws, "anthropic", &key, n as usize);
    wait_until("N uses flushed", Duration::from_secs(30), || {
        uses_of(&mut c.client(), k.id) == n
    });
    // No flush from here on, so the next M uses live in shared memory only.
    set_system(&c, "byok.usage_flush_interval", "3600");
    std::thread::sleep(Duration::from_millis(1500));
    use_n(&c, ws, "anthropic", &key, m as usize);
    assert_eq!(live_uses_of(&mut c.client(), k.id), m);
    c.stop_immediate();
    c.start_again();
    let after_crash = uses_of(&mut c.client(), k.id);
    assert!(
        (n..=n + m).contains(&after_crash),
        "after a crash the aggregate holds {after_crash} uses; expected between {n} and {}",
        n + m
    );
    assert_eq!(
        live_uses_of(&mut c.client(), k.id),
        0,
        "shared memory starts empty"
    );

    // A clean shutdown flushes: nothing is lost.
    use_n(&c, ws, "anthropic", &key, 7);
    c.stop();
    c.start_again();
    assert_eq!(uses_of(&mut c.client(), k.id), after_crash + 7);
}

#[test]
fn each_mode_writes_one_durable_audit_row_per_use() {
    let mut c = counted_cluster(fast_flushes());
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 33);
    let k = add_active(&c, ws, "openai", &key);
    // Read at each new session, so the next connection has it.
    c.client()
        .batch_execute("ALTER DATABASE byok SET byok.use_audit = 'each'")
        .unwrap();
    let (n, m) = (6, 4);
    use_n(&c, ws, "openai", &key, n);
    assert_eq!(audit_uses(&mut c.client(), k.id), n as i64);
    use_n(&c, ws, "openai", &key, m);
    c.stop_immediate();
    c.start_again();
    assert_eq!(
        audit_uses(&mut c.client(), k.id),
        (n + m) as i64,
        "every committed use_key has its audit row after a crash"
    );
    let r = c
        .client()
        .query_one(
            "SELECT actor_role, outcome FROM byok.audit_log WHERE action = 'use' AND key_id = $1 LIMIT 1",
            &[&k.id],
        )
        .unwrap();
    let (role, outcome): (String, String) = (r.get(0), r.get(1));
    assert_eq!((role.as_str(), outcome.as_str()), ("backend", "ok"));
    // A use rolled back with its transaction takes its audit row with it.
    let mut b = c.client_as("backend");
    let mut tx = b.transaction().unwrap();
    use_key(&mut tx, ws, "openai").unwrap();
    tx.rollback().unwrap();
    assert_eq!(audit_uses(&mut c.client(), k.id), (n + m) as i64);
}

#[test]
fn a_full_counter_table_writes_the_use_through() {
    let c = counted_cluster(ClusterOptions {
        extra_conf: vec![
            "byok.usage_slots = 2".into(),
            "byok.usage_flush_interval = 3600".into(),
        ],
        ..Default::default()
    });
    let keys: Vec<_> = (0..3)
        .map(|i| {
            let ws = Uuid::new_v4();
            let key = sample_key("anthropic", 40 + i);
            let info = add_active(&c, ws, "anthropic", &key);
            (ws, key, info.id)
        })
        .collect();
    // The first use takes one of the two slots: half full, so the worker is
    // woken at once. It is held up here (its flush waits for the lock on
    // the first key's row, where it notes last_used_at) so that the table
    // stays full while the third key is used.
    let mut holder = c.client();
    let mut hold = holder.transaction().unwrap();
    hold.execute(
        "SELECT 1 FROM byok.keys WHERE id = $1 FOR UPDATE",
        &[&keys[0].2],
    )
    .unwrap();
    for (ws, key, _) in &keys {
        use_n(&c, *ws, "anthropic", key, 2);
    }
    let mut admin = c.client();
    // The first two keys took the two slots; the third was written at once.
    assert_eq!(live_uses_of(&mut admin, keys[0].2), 2);
    assert_eq!(live_uses_of(&mut admin, keys[1].2), 2);
    assert_eq!(live_uses_of(&mut admin, keys[2].2), 0);
    assert_eq!(
        uses_of(&mut admin, keys[2].2),
        2,
        "no use is lost when full"
    );
    let last_used: bool = admin
        .query_one(
            "SELECT last_used_at IS NOT NULL FROM byok.keys WHERE id = $1",
            &[&keys[2].2],
        )
        .unwrap()
        .get(0);
    assert!(last_used);
    let r = admin
        .query_one("SELECT slots_used, slots FROM byok.usage_status()", &[])
        .unwrap();
    let (used, slots): (i32, i32) = (r.get(0), r.get(1));
    assert_eq!((used, slots), (2, 2));
    // Let the woken worker finish: every use is then in the table once.
    hold.rollback().unwrap();
    wait_until(
        "the held-up flush completes",
        Duration::from_secs(30),
        || keys.iter().all(|k| uses_of(&mut admin, k.2) == 2),
    );
}

/// Many keys used between two flushes fill the table long before the
/// interval ends; at half full a backend wakes the worker, so uses stay in
/// shared memory instead of being written through one by one.
#[test]
fn half_full_counters_wake_the_worker_before_its_interval() {
    let c = counted_cluster(ClusterOptions {
        extra_conf: vec![
            "byok.usage_slots = 8".into(),
            "byok.usage_flush_interval = 3600".into(),
        ],
        ..Default::default()
    });
    let keys: Vec<_> = (0..4)
        .map(|i| {
            let ws = Uuid::new_v4();
            let key = sample_key("openai", 60 + i);
            let info = add_active(&c, ws, "openai", &key);
            (ws, key, info.id)
        })
        .collect();
    for (ws, key, _) in &keys {
        use_n(&c, *ws, "openai", key, 1);
    }
    // Four of eight slots taken: flushed now, not in an hour.
    let mut admin = c.client();
    wait_until(
        "the half-full counters are flushed",
        Duration::from_secs(30),
        || keys.iter().all(|k| uses_of(&mut admin, k.2) == 1),
    );
    for k in &keys {
        assert_eq!(
            live_uses_of(&mut admin, k.2),
            0,
            "flushed, not counted twice"
        );
    }
    let used: i32 = admin
        .query_one("SELECT slots_used FROM byok.usage_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(used, 0, "a flush frees the slots it wrote");
}

#[test]
fn a_database_the_worker_does_not_serve_writes_each_use_through() {
    let c = cluster();
    c.client_db("postgres")
        .batch_execute("CREATE DATABASE other")
        .unwrap();
    let mut other = c.client_db("other");
    other.batch_execute("CREATE EXTENSION pg_byok").unwrap();
    other
        .batch_execute("GRANT byok_consumer TO backend")
        .unwrap();
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 34);
    let info = add_key(&mut other, ws, "openai", &key, None).unwrap();
    finish_all(&mut other, "valid");
    let got: String = other
        .query_one("SELECT byok.use_key($1, 'openai')", &[&ws])
        .unwrap()
        .get(0);
    assert_eq!(got, key);
    assert_eq!(uses_of(&mut other, info.id), 1, "written through at once");
    assert_eq!(live_uses_of(&mut other, info.id), 0);
}
