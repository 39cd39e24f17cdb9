//! Tenancy (issue 3), the workspace table's triggers: deleting a workspace
//! or changing its status revokes exactly that workspace's keys (restoring
//! the status brings none back), a rolled-back change leaves them intact,
//! and a detached table revokes nothing.

mod common;

use byok_integration::postgres::Client;
use byok_integration::sample_key;
use common::supabase::*;
use common::*;
use serde_json::Value;
use uuid::Uuid;

/// A workspace with a member, an active anthropic key, a key that was
/// rotated out (already revoked) and a pending openai key (job queued).
struct Tenant {
    ws: Uuid,
    active: Uuid,
    active_key: String,
    pending: Uuid,
    revoked: Uuid,
}

/// Create tenants in phases so that validating one tenant's keys never
/// touches another tenant's pending job: every pending key is added last.
fn tenants(w: &World, specs: &[(u64, &str)]) -> Vec<Tenant> {
    let mut out = Vec::new();
    let members: Vec<(Uuid, Uuid)> = specs
        .iter()
        .map(|(_, name)| {
            let m = Uuid::new_v4();
            (w.new_org(name, &[m]), m)
        })
        .collect();
    let mut olds = Vec::new();
    for ((seed, _), (ws, m)) in specs.iter().zip(&members) {
        let k = sample_key("anthropic", seed + 1);
        olds.push(
            w.act("authenticated", Some(*m), |tx| {
                add_key(tx, *ws, "anthropic", &k, None)
            })
            .unwrap()
            .id,
        );
    }
    w.validate_all();
    let mut actives = Vec::new();
    for ((seed, _), (ws, m)) in specs.iter().zip(&members) {
        let k = sample_key("anthropic", *seed);
        actives.push((
            w.act("authenticated", Some(*m), |tx| {
                add_key(tx, *ws, "anthropic", &k, None)
            })
            .unwrap()
            .id,
            k,
        ));
    }
    w.validate_all(); // rotates the old keys out
    for (i, ((seed, _), (ws, m))) in specs.iter().zip(&members).enumerate() {
        let k = sample_key("openai", seed + 2);
        let pending = w
            .act("authenticated", Some(*m), |tx| {
                add_key(tx, *ws, "openai", &k, None)
            })
            .unwrap()
            .id;
        let mut db = w.su();
        assert_eq!(
            key_by_id(&mut db, *ws, olds[i]).status,
            "revoked",
            "rotated out"
        );
        assert_eq!(key_by_id(&mut db, *ws, actives[i].0).status, "active");
        out.push(Tenant {
            ws: *ws,
            active: actives[i].0,
            active_key: actives[i].1.clone(),
            pending,
            revoked: olds[i],
        });
    }
    out
}

fn jobs_for(db: &mut Client, ids: &[Uuid]) -> i64 {
    db.query_one(
        "SELECT count(*) FROM byok.jobs WHERE key_id = ANY($1)",
        &[&ids.to_vec()],
    )
    .unwrap()
    .get(0)
}

fn assert_revoked_by_lifecycle(w: &World, t: &Tenant, audit_before: &[Value], what: &str) {
    let mut db = w.su();
    let keys = list_keys(&mut db, t.ws).unwrap();
    for k in &keys {
        assert_eq!(
            k.status, "revoked",
            "{what}: key {} of the workspace is revoked",
            k.id
        );
        assert!(k.revoked_at.is_some());
        assert_eq!(ciphertext(&mut db, k.id), None, "{what}: ciphertext erased");
    }
    assert_eq!(
        jobs_for(&mut db, &[t.pending]),
        0,
        "{what}: pending job cancelled"
    );
    expect_state(use_key(&mut db, t.ws, "anthropic"), "P0002", what);
    let after = audit_rows(&mut db);
    for id in [t.active, t.pending] {
        let new_rows = audit_for_key(&after, id).len() - audit_for_key(audit_before, id).len();
        assert!(new_rows >= 1, "{what}: an audit row for revoked key {id}");
        assert!(
            audit_for_key(&after, id)
                .iter()
                .any(|r| has_value(r, "revoke")),
            "{what}: a 'revoke' audit row for {id}"
        );
    }
}

fn assert_untouched(w: &World, t: &Tenant, before: &[KeyInfo], what: &str) {
    let mut db = w.su();
    assert_eq!(
        &list_keys(&mut db, t.ws).unwrap(),
        before,
        "{what}: other workspace unchanged"
    );
    assert!(ciphertext(&mut db, t.active).is_some());
    assert!(ciphertext(&mut db, t.pending).is_some());
    assert_eq!(
        jobs_for(&mut db, &[t.pending]),
        1,
        "{what}: other workspace's job still queued"
    );
    assert_eq!(
        use_key(&mut db, t.ws, "anthropic").unwrap(),
        t.active_key,
        "{what}: other workspace still serves"
    );
}

#[test]
fn workspace_delete_revokes_exactly_that_workspaces_keys() {
    let w = world(RolesCreated::BeforeExtension);
    let mut ts = tenants(
        &w,
        &[
            (7500, "Initech"),
            (7510, "Hooli"),
            (7520, "Umbrella"),
            (7530, "Stark"),
        ],
    )
    .into_iter();
    let (c1, d1, e1, f1) = (
        ts.next().unwrap(),
        ts.next().unwrap(),
        ts.next().unwrap(),
        ts.next().unwrap(),
    );
    let mut db = w.su();
    let d_before = list_keys(&mut db, d1.ws).unwrap();
    let revoked_before = key_by_id(&mut db, c1.ws, c1.revoked);
    let audit_before = audit_rows(&mut db);
    let d_audit_before = audit_rows(&mut db)
        .iter()
        .filter(|r| has_value(r, &d1.ws.to_string()))
        .count();

    // The app deletes a workspace through the API as service_role.
    let n = w
        .act("service_role", None, |tx| {
            tx.execute("DELETE FROM app.orgs WHERE org_uuid = $1", &[&c1.ws])
        })
        .unwrap();
    assert_eq!(n, 1);
    assert_revoked_by_lifecycle(&w, &c1, &audit_before, "DELETE");
    // A key revoked earlier keeps its own revocation.
    let r = key_by_id(&mut db, c1.ws, c1.revoked);
    assert_eq!(
        (r.status.as_str(), r.revoked_at),
        ("revoked", revoked_before.revoked_at)
    );
    assert_eq!(
        audit_rows(&mut db)
            .iter()
            .filter(|r| has_value(r, &d1.ws.to_string()))
            .count(),
        d_audit_before,
        "no audit rows for the untouched workspace"
    );
    assert_untouched(&w, &d1, &d_before, "DELETE of another workspace");
    // The worker only ever sees the live workspace's job.
    let mut s = w.c.client_as("sidecar");
    let claims = claim_jobs(&mut s, "w", 100, 60).unwrap();
    assert!(
        claims.iter().all(|cl| cl.workspace_id != c1.ws),
        "no job of the deleted workspace is claimable"
    );
    assert!(claims.iter().any(|cl| cl.key_id == d1.pending));
    for cl in &claims {
        finish_job(
            &mut s,
            cl.job_id,
            cl.lease_token,
            "retry",
            None,
            Some(503),
            None,
        )
        .unwrap();
    }

    // Several workspaces in one statement (superuser this time).
    let audit_before = audit_rows(&mut db);
    let n = db
        .execute(
            "DELETE FROM app.orgs WHERE org_uuid IN ($1, $2)",
            &[&e1.ws, &f1.ws],
        )
        .unwrap();
    assert_eq!(n, 2);
    assert_revoked_by_lifecycle(&w, &e1, &audit_before, "multi-row DELETE (e)");
    assert_revoked_by_lifecycle(&w, &f1, &audit_before, "multi-row DELETE (f)");
    assert_eq!(
        use_key(&mut db, w.a, "anthropic").unwrap(),
        w.key_a,
        "A still serves"
    );
    assert_eq!(
        use_key(&mut db, w.b, "anthropic").unwrap(),
        w.key_b,
        "B still serves"
    );
}

#[test]
fn status_changes_revoke_and_restoring_does_not_bring_keys_back() {
    let w = world(RolesCreated::BeforeExtension);
    let mut db = w.su();
    let statuses = ["Paused", "CANCELLED", "canceled", "suspended", "Deleted"];
    let mut specs: Vec<(u64, &str)> = statuses
        .iter()
        .enumerate()
        .map(|(i, s)| (7600 + 10 * i as u64, *s))
        .collect();
    specs.push((7700, "control"));
    specs.push((7710, "control2"));
    let mut tenants = tenants(&w, &specs);
    let control2 = tenants.pop().unwrap();
    let control = tenants.pop().unwrap();
    let control_before = list_keys(&mut db, control.ws).unwrap();
    let control2_before = list_keys(&mut db, control2.ws).unwrap();
    let audit_before = audit_rows(&mut db);

    // One at a time through service_role, except the last two in one statement.
    for (t, s) in tenants.iter().zip(statuses.iter()).take(3) {
        w.act("service_role", None, |tx| {
            tx.execute(
                "UPDATE app.orgs SET lifecycle = $2 WHERE org_uuid = $1",
                &[&t.ws, s],
            )
        })
        .unwrap();
    }
    db.execute(
        "UPDATE app.orgs SET lifecycle = CASE org_uuid WHEN $1 THEN $3 ELSE $4 END WHERE org_uuid IN ($1, $2)",
        &[&tenants[3].ws, &tenants[4].ws, &statuses[3], &statuses[4]],
    )
    .unwrap();
    // Not a revoking status, and an update of another column.
    db.execute(
        "UPDATE app.orgs SET lifecycle = 'trialing' WHERE org_uuid = $1",
        &[&control.ws],
    )
    .unwrap();
    db.execute(
        "UPDATE app.orgs SET display_name = 'renamed' WHERE org_uuid = $1",
        &[&control2.ws],
    )
    .unwrap();

    for (t, s) in tenants.iter().zip(statuses.iter()) {
        assert_revoked_by_lifecycle(&w, t, &audit_before, &format!("status {s}"));
    }
    assert_untouched(&w, &control, &control_before, "status trialing");
    assert_untouched(&w, &control2, &control2_before, "rename");

    // Restoring does not bring keys back; the customer adds them again.
    let t = &tenants[0];
    db.execute(
        "UPDATE app.orgs SET lifecycle = 'live' WHERE org_uuid = $1",
        &[&t.ws],
    )
    .unwrap();
    assert!(list_keys(&mut db, t.ws)
        .unwrap()
        .iter()
        .all(|k| k.status == "revoked"));
    expect_state(
        use_key(&mut db, t.ws, "anthropic"),
        "P0002",
        "restored workspace has no key",
    );
    let fresh = sample_key("anthropic", 7800);
    let k = add_key(&mut db, t.ws, "anthropic", &fresh, None).unwrap();
    assert_eq!(k.status, "pending");
    let mut s = w.c.client_as("sidecar");
    for cl in claim_jobs(&mut s, "w", 100, 60).unwrap() {
        let outcome = if cl.key_id == k.id { "valid" } else { "retry" };
        finish_job(&mut s, cl.job_id, cl.lease_token, outcome, None, None, None).unwrap();
    }
    assert_eq!(use_key(&mut db, t.ws, "anthropic").unwrap(), fresh);

    // An inactive workspace takes no new keys: no later status change would
    // ever revoke them.
    let t2 = &tenants[1];
    let refused = sample_key("openai", 7801);
    let e = expect_state(
        add_key(&mut db, t2.ws, "openai", &refused, None),
        "55000",
        "add_key to a cancelled workspace",
    );
    assert_no_key_material(&error_text(&e), &[&refused], "55000 error");
    assert!(
        list_keys(&mut db, t2.ws)
            .unwrap()
            .iter()
            .all(|k| k.status == "revoked"),
        "the refused add left no live key"
    );
    // A workspace the attached table does not have may take keys (apps
    // create rows and keys in either order).
    add_key(&mut db, Uuid::new_v4(), "openai", &refused, None)
        .unwrap_or_else(|e| panic!("add_key to a workspace not in the table: {e}"));
}

#[test]
fn rolled_back_delete_or_status_change_leaves_keys_intact() {
    let w = world(RolesCreated::BeforeExtension);
    let t = tenants(&w, &[(7900, "Wayne")]).pop().unwrap();
    let mut db = w.su();
    let before = list_keys(&mut db, t.ws).unwrap();

    let mut tx = db.transaction().unwrap();
    tx.execute("DELETE FROM app.orgs WHERE org_uuid = $1", &[&t.ws])
        .unwrap();
    // Inside the transaction the keys are already revoked...
    assert!(list_keys(&mut tx, t.ws)
        .unwrap()
        .iter()
        .all(|k| k.status == "revoked"));
    expect_state(
        use_key(&mut tx, t.ws, "anthropic"),
        "P0002",
        "inside the deleting transaction",
    );
    tx.rollback().unwrap();
    // ...and after the rollback they are intact.
    assert_untouched(&w, &t, &before, "rolled-back DELETE");

    let r = w.act("service_role", None, |tx| {
        tx.execute(
            "UPDATE app.orgs SET lifecycle = 'paused' WHERE org_uuid = $1",
            &[&t.ws],
        )?;
        // Fail the request after the update: everything rolls back.
        tx.execute("SELECT 1/0", &[])
    });
    expect_state(r, "22012", "the failing request");
    assert_untouched(&w, &t, &before, "rolled-back status change");
}

#[test]
fn detached_workspace_table_revokes_nothing() {
    let w = world(RolesCreated::BeforeExtension);
    let mut ts = tenants(&w, &[(8000, "Cyberdyne"), (8010, "Tyrell")]);
    let t2 = ts.pop().unwrap();
    let t = ts.pop().unwrap();
    let mut db = w.su();
    db.execute(
        "SELECT byok.detach_workspaces(workspace_table => 'app.orgs')",
        &[],
    )
    .unwrap_or_else(|e| w.c.fail("detach_workspaces", &e));
    let before = list_keys(&mut db, t.ws).unwrap();
    db.execute(
        "UPDATE app.orgs SET lifecycle = 'cancelled' WHERE org_uuid = $1",
        &[&t.ws],
    )
    .unwrap();
    db.execute("DELETE FROM app.orgs WHERE org_uuid = $1", &[&t.ws])
        .unwrap();
    assert_untouched(&w, &t, &before, "after detach");

    // Attaching again restores the behaviour.
    db.batch_execute(ATTACH).unwrap();
    let audit_before = audit_rows(&mut db);
    db.execute("DELETE FROM app.orgs WHERE org_uuid = $1", &[&t2.ws])
        .unwrap();
    assert_revoked_by_lifecycle(&w, &t2, &audit_before, "DELETE after re-attach");
}
