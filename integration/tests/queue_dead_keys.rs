//! Security finding 4: one revoked key must not stop the whole queue.
//!
//! A revocation that waits for `revalidate_key`'s row lock used to delete
//! the key's jobs with the snapshot it took before the wait, so the job
//! `revalidate_key` had just queued outlived its revoked key; from then on
//! `claim_jobs` failed with 22004 for every worker. These tests replay the
//! race deterministically with two sessions (the second is shown to be
//! waiting on the first's lock before the first commits), and check that
//! `claim_jobs` retires a dead key's job instead of failing the batch.

mod common;

use byok_integration::postgres::Client;
use byok_integration::{sample_key, wait_until, Cluster, ClusterOptions};
use common::*;
use std::thread;
use std::time::Duration;
use uuid::Uuid;

fn cluster() -> Cluster {
    let c = Cluster::start(ClusterOptions::default());
    create_login(&c, "sidecar", &["byok_worker"]);
    c
}

fn count(db: &mut Client, sql: &str, id: Uuid) -> i64 {
    db.query_one(sql, &[&id])
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// An active key of `ws` with no job left (added and validated as the sidecar).
fn active_key(c: &Cluster, ws: Uuid, seed: u64) -> Uuid {
    let id = add_key(
        &mut c.client(),
        ws,
        "anthropic",
        &sample_key("anthropic", seed),
        None,
    )
    .unwrap_or_else(|e| c.fail("add_key", &e))
    .id;
    let done = finish_all(&mut c.client_as("sidecar"), "valid");
    assert!(done
        .iter()
        .any(|(cl, st)| cl.key_id == id && st == "active"));
    id
}

/// Session A opens `revalidate_key(key)` and keeps its transaction open;
/// session B runs `revoke_sql` (one statement), which must then wait for
/// A's lock on the key; A commits; B finishes. Returns B's result.
fn race_revalidate_against(c: &Cluster, key: Uuid, revoke_sql: String) -> Result<u64, String> {
    let mut a = c.client();
    let mut b = c.client();
    let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    a.batch_execute("BEGIN").unwrap();
    revalidate_key(&mut a, key).unwrap_or_else(|e| c.fail("revalidate_key", &e));
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM byok.jobs WHERE key_id = $1",
            key
        ),
        1,
        "revalidate_key queued a job (inside A's open transaction)"
    );
    let revoker = thread::spawn(move || {
        b.execute(revoke_sql.as_str(), &[])
            .map_err(|e| error_text(&e))
    });
    let mut watcher = c.client();
    wait_until(
        "session B to wait for session A's row lock",
        Duration::from_secs(30),
        || {
            watcher
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted",
                    &[&b_pid],
                )
                .unwrap()
                .get::<_, i64>(0)
                > 0
        },
    );
    a.batch_execute("COMMIT").unwrap();
    revoker.join().expect("revoker thread")
}

/// After the race: the key is revoked, holds no ciphertext and has no job,
/// and the queue still serves a live key of another workspace.
fn assert_dead_and_queue_flows(c: &Cluster, key: Uuid, what: &str) {
    let mut db = c.client();
    let status: String = db
        .query_one("SELECT status FROM byok.keys WHERE id = $1", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(status, "revoked", "{what}: the key was revoked");
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM byok.jobs WHERE key_id = $1",
            key
        ),
        0,
        "{what}: the job revalidate_key queued must not outlive its revoked key"
    );
    let other_ws = Uuid::new_v4();
    let live = add_key(
        &mut db,
        other_ws,
        "openai",
        &sample_key("openai", 4242),
        None,
    )
    .unwrap()
    .id;
    let claims = claim_jobs(&mut c.client_as("sidecar"), "w-1", 16, 60)
        .unwrap_or_else(|e| panic!("{what}: claim_jobs after the race: {}", error_text(&e)));
    assert_eq!(
        claims.iter().map(|cl| cl.key_id).collect::<Vec<_>>(),
        vec![live],
        "{what}: the queue serves the live key"
    );
}

#[test]
fn revoke_workspace_waiting_on_revalidate_cancels_the_new_job() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let key = active_key(&c, ws, 1);
    let n = race_revalidate_against(
        &c,
        key,
        format!("SELECT byok.revoke_workspace('{ws}', 'offboarded')"),
    )
    .unwrap_or_else(|e| panic!("revoke_workspace: {e}"));
    assert_eq!(n, 1);
    assert_dead_and_queue_flows(&c, key, "revoke_workspace");
}

#[test]
fn workspace_delete_and_pause_waiting_on_revalidate_cancel_the_new_job() {
    let c = cluster();
    c.client()
        .batch_execute(
            "CREATE TABLE public.spaces (id uuid PRIMARY KEY, state text NOT NULL DEFAULT 'live');
             SELECT byok.attach_workspaces(workspace_table => 'public.spaces', id_column => 'id',
                                           status_column => 'state');",
        )
        .unwrap_or_else(|e| c.fail("attach_workspaces", &e));
    for (seed, sql) in [
        (2, "DELETE FROM public.spaces WHERE id = '{ws}'"),
        (
            3,
            "UPDATE public.spaces SET state = 'paused' WHERE id = '{ws}'",
        ),
    ] {
        let ws = Uuid::new_v4();
        c.client()
            .execute("INSERT INTO public.spaces (id) VALUES ($1)", &[&ws])
            .unwrap();
        let key = active_key(&c, ws, seed);
        let stmt = sql.replace("{ws}", &ws.to_string());
        let n = race_revalidate_against(&c, key, stmt.clone())
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        assert_eq!(n, 1, "{stmt}");
        assert_dead_and_queue_flows(&c, key, &stmt);
    }
}

#[test]
fn claim_jobs_retires_a_dead_keys_job_and_serves_the_live_ones() {
    let c = cluster();
    let mut db = c.client();
    let ws = Uuid::new_v4();
    let live: Vec<Uuid> = (10..13)
        .map(|seed| {
            add_key(
                &mut db,
                Uuid::new_v4(),
                "anthropic",
                &sample_key("anthropic", seed),
                None,
            )
            .unwrap()
            .id
        })
        .collect();
    let dead = add_key(&mut db, ws, "openai", &sample_key("openai", 20), None)
        .unwrap()
        .id;
    revoke_key(&mut db, dead, Some("compromised")).unwrap();
    // The state the race above left behind in 0.1.0: a job whose key is
    // revoked, here placed in the middle of the ready jobs.
    db.execute(
        "INSERT INTO byok.jobs (key_id, run_after)
         SELECT $1, (SELECT run_after FROM byok.jobs WHERE key_id = $2)",
        &[&dead, &live[1]],
    )
    .unwrap();

    let mut w = c.client_as("sidecar");
    let mut claimed: Vec<Uuid> = claim_jobs(&mut w, "w-1", 16, 60)
        .unwrap_or_else(|e| {
            panic!(
                "claim_jobs with a dead key's job queued: {}",
                error_text(&e)
            )
        })
        .iter()
        .map(|cl| cl.key_id)
        .collect();
    claimed.sort();
    let mut expected = live.clone();
    expected.sort();
    assert_eq!(
        claimed, expected,
        "every live key is claimed, the dead one is not"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM byok.jobs WHERE key_id = $1",
            dead
        ),
        0,
        "the dead key's job was retired"
    );
    let status: String = db
        .query_one("SELECT status FROM byok.keys WHERE id = $1", &[&dead])
        .unwrap()
        .get(0);
    assert_eq!(
        status, "revoked",
        "retiring the job leaves the key as it was"
    );
    assert!(
        claim_jobs(&mut w, "w-1", 16, 60).unwrap().is_empty(),
        "nothing else is ready, and claiming again does not fail"
    );
}
