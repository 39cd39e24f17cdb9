//! The validation queue is UNLOGGED (issue 11: add_key writes no WAL for
//! its job): a crash empties it, and byok.enqueue_due_revalidations (the
//! sidecar's timer) rebuilds it from the pending keys; a clean restart keeps
//! it as it was.

mod common;

use byok_integration::sample_key;
use common::lifecycle::*;
use common::*;
use uuid::Uuid;

fn jobs(c: &byok_integration::Cluster) -> i64 {
    count(&mut c.client(), "SELECT count(*) FROM byok.jobs")
}

#[test]
fn a_crash_loses_the_queue_and_the_timer_rebuilds_it_from_the_pending_keys() {
    let mut c = cluster();
    // Validated first: add_active's claim takes every ready job.
    let active = add_active(&c, Uuid::new_v4(), "openai", &sample_key("openai", 2200));
    // One workspace each: validating a second key of a workspace and vendor
    // would rotate the first away.
    let pending: Vec<(Uuid, Uuid)> = (0..3)
        .map(|i| {
            let ws = Uuid::new_v4();
            let key = sample_key("anthropic", 2100 + i);
            (
                ws,
                add_key(&mut c.client(), ws, "anthropic", &key, None)
                    .unwrap()
                    .id,
            )
        })
        .collect();
    assert_eq!(jobs(&c), 3);

    // A clean restart keeps an unlogged table's rows.
    c.restart();
    assert_eq!(jobs(&c), 3, "a clean shutdown keeps the queue");

    c.stop_immediate();
    c.start_again();
    assert_eq!(jobs(&c), 0, "crash recovery empties the unlogged queue");
    let mut db = c.client();
    let marker = count(&mut db, "SELECT count(*) FROM byok.queue_intact");
    assert_eq!(marker, 0, "the marker is lost with the queue");

    // The sidecar's timer: the pending keys get their jobs back (attempts
    // from 0), the active key none (it is not due), once only.
    let mut w = c.client_as("sidecar");
    let due: i32 = w
        .query_one("SELECT byok.enqueue_due_revalidations(100)", &[])
        .unwrap()
        .get(0);
    assert_eq!(due, 0, "no active key is due for a re-check");
    let rows = db
        .query(
            "SELECT key_id, attempts FROM byok.jobs ORDER BY key_id",
            &[],
        )
        .unwrap();
    let mut queued: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let mut expected: Vec<Uuid> = pending.iter().map(|p| p.1).collect();
    queued.sort();
    expected.sort();
    assert_eq!(
        queued, expected,
        "exactly the pending keys are queued again"
    );
    assert!(rows.iter().all(|r| r.get::<_, i32>(1) == 0));
    assert!(!queued.contains(&active.id));
    assert!(
        c.server_log()
            .contains("the validation queue was lost (a crash or a promotion); 3 pending keys were queued again"),
        "the rebuild is reported in the server log"
    );
    w.query_one("SELECT byok.enqueue_due_revalidations(100)", &[])
        .unwrap();
    assert_eq!(jobs(&c), 3, "the second tick finds the queue intact");

    // The rebuilt jobs validate their keys as usual.
    let claims = claim_jobs(&mut w, "sidecar-1", 16, 60).unwrap();
    assert_eq!(claims.len(), 3);
    for j in &claims {
        assert_eq!(
            finish_job(
                &mut w,
                j.job_id,
                j.lease_token,
                "valid",
                None,
                Some(200),
                None
            )
            .unwrap(),
            "active"
        );
    }
    for (ws, id) in pending {
        assert_eq!(key_by_id(&mut db, ws, id).status, "active");
    }
}

#[test]
fn a_job_whose_key_row_was_deleted_is_retired_at_its_claim() {
    // No foreign key from the queue to byok.keys (it would lock the key row
    // and write WAL on every add_key): a superuser deleting a key row by
    // hand leaves its job, which the next claim retires.
    let c = cluster();
    let ws = Uuid::new_v4();
    let info = add_key(
        &mut c.client(),
        ws,
        "anthropic",
        &sample_key("anthropic", 2300),
        None,
    )
    .unwrap();
    let mut db = c.client();
    db.execute("DELETE FROM byok.keys WHERE id = $1", &[&info.id])
        .unwrap();
    assert_eq!(jobs(&c), 1);
    let mut w = c.client_as("sidecar");
    assert!(claim_jobs(&mut w, "sidecar-1", 16, 60).unwrap().is_empty());
    assert_eq!(jobs(&c), 0, "the claim retired the job of the deleted key");
}
