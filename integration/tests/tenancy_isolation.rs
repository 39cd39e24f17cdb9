//! Tenancy (issue 3), isolation: through the members rule and row-level
//! security, a member reaches exactly their own workspace, others (other
//! members, non-members, requests without a subject, anon) nothing;
//! service_role reaches every workspace but never the ciphertext. Run with
//! the Supabase roles created before and after the extension.

mod common;

use byok_integration::sample_key;
use common::supabase::*;
use common::*;
use uuid::Uuid;

/// The whole isolation check on a world fresh from [`world`]. The phases
/// share the world's state and run in this order.
fn isolation_checks(w: &World) {
    let before_b = list_keys(&mut w.su(), w.b).unwrap();
    alice_in_her_own_workspace(w);
    // A key nobody outside a workspace may add anywhere.
    let k = sample_key("anthropic", 7102);
    alice_kept_out_of_b(w, &k);
    bob_kept_out_of_a(w, &k);
    nobody_and_no_subject_get_nothing(w, &k);
    anon_gets_nothing(w, &k);
    // Nothing of B changed, and B still serves.
    assert_eq!(list_keys(&mut w.su(), w.b).unwrap(), before_b);
    assert!(ciphertext(&mut w.su(), w.id_b).is_some());
    assert_eq!(w.consumer_use_key(w.b, "anthropic").unwrap(), w.key_b);
    service_role_reaches_every_workspace(w);
}

/// alice, in her own workspace: add, list, authorize, revalidate, mask, redact, select, revoke.
fn alice_in_her_own_workspace(w: &World) {
    let (a, b, alice) = (w.a, w.b, w.alice);
    let extra = sample_key("openai", 7101);
    let own = w
        .act("authenticated", Some(alice), |tx| {
            add_key(tx, a, "openai", &extra, Some("second"))
        })
        .unwrap();
    assert_eq!(own.status, "pending");
    let listed = w
        .act("authenticated", Some(alice), |tx| list_keys(tx, a))
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.workspace_id == a));
    let ok: bool = w
        .act("authenticated", Some(alice), |tx| {
            tx.query_one("SELECT byok.authorize(workspace_id => $1)", &[&a])
                .map(|r| r.get(0))
        })
        .unwrap();
    assert!(ok, "authorize(A) for alice");
    let no: bool = w
        .act("authenticated", Some(alice), |tx| {
            tx.query_one("SELECT byok.authorize(workspace_id => $1)", &[&b])
                .map(|r| r.get(0))
        })
        .unwrap();
    assert!(!no, "authorize(B) for alice");
    let r = w
        .act("authenticated", Some(alice), |tx| {
            revalidate_key(tx, own.id)
        })
        .unwrap();
    assert_eq!(r.id, own.id);
    let m: String = w
        .act("authenticated", Some(alice), |tx| {
            tx.query_one("SELECT byok.mask(api_key => $1)", &[&extra])
                .map(|r| r.get(0))
        })
        .unwrap();
    assert_eq!(m, mask(&extra));
    let red: String = w
        .act("authenticated", Some(alice), |tx| {
            tx.query_one(
                "SELECT byok.redact(input => $1)",
                &[&format!("key={extra}")],
            )
            .map(|r| r.get(0))
        })
        .unwrap();
    assert_no_key_material(&red, &[&extra], "redact for authenticated");
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query(
                "SELECT id, workspace_id, vendor, label, masked, status FROM byok.keys",
                &[],
            )
        }),
        "42501",
        "alice SELECT byok.keys",
    );
    let revoked = w
        .act("authenticated", Some(alice), |tx| {
            revoke_key(tx, own.id, Some("not needed"))
        })
        .unwrap();
    assert_eq!(revoked.status, "revoked");
}

/// alice against workspace B: 42501 everywhere, zero rows for SELECT; authenticated cannot use_key, even for its own workspace, nor act as the worker.
fn alice_kept_out_of_b(w: &World, k: &str) {
    let (a, b, alice) = (w.a, w.b, w.alice);
    let id_b = w.id_b;
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            add_key(tx, b, "anthropic", k, None)
        }),
        "42501",
        "alice add_key(B)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| list_keys(tx, b)),
        "42501",
        "alice list_keys(B)",
    );
    let e_existing = expect_state(
        w.act("authenticated", Some(alice), |tx| {
            revoke_key(tx, id_b, None)
        }),
        "42501",
        "alice revoke_key(B's key)",
    );
    let ghost = Uuid::new_v4();
    let e_ghost = expect_state(
        w.act("authenticated", Some(alice), |tx| {
            revoke_key(tx, ghost, None)
        }),
        "42501",
        "alice revoke_key(unknown id)",
    );
    // The refusal does not reveal whether the key exists.
    assert_eq!(
        error_text(&e_existing).replace(&id_b.to_string(), "<id>"),
        error_text(&e_ghost).replace(&ghost.to_string(), "<id>"),
        "same refusal for another workspace's key and for no key"
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| revalidate_key(tx, id_b)),
        "42501",
        "alice revalidate_key(B's key)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| revalidate_key(tx, ghost)),
        "42501",
        "alice revalidate_key(unknown)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            revoke_workspace(tx, b, None)
        }),
        "42501",
        "alice revoke_workspace(B)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query(
                "SELECT id, masked, status FROM byok.keys WHERE workspace_id = $1",
                &[&b],
            )
        }),
        "42501",
        "alice SELECT B's rows",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query("SELECT id FROM byok.keys WHERE id = $1", &[&id_b])
        }),
        "42501",
        "alice SELECT B's key by id",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query("SELECT ciphertext FROM byok.keys", &[])
        }),
        "42501",
        "alice ciphertext",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.query("SELECT * FROM byok.keys", &[])
        }),
        "42501",
        "alice SELECT *",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.execute(
                "UPDATE byok.keys SET label = 'x' WHERE workspace_id = $1",
                &[&b],
            )
        }),
        "42501",
        "alice UPDATE byok.keys",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            tx.execute("DELETE FROM byok.keys WHERE workspace_id = $1", &[&b])
        }),
        "42501",
        "alice DELETE byok.keys",
    );
    // authenticated cannot use_key, even for its own workspace, nor act as the worker.
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            use_key(tx, a, "anthropic")
        }),
        "42501",
        "alice use_key(A)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            use_key(tx, b, "anthropic")
        }),
        "42501",
        "alice use_key(B)",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| {
            claim_jobs(tx, "x", 1, 60)
        }),
        "42501",
        "alice claim_jobs",
    );
    expect_state(
        w.act("authenticated", Some(alice), |tx| tx.execute("SELECT byok.attach_members(member_table => 'app.orgs', workspace_column => 'org_uuid', user_column => 'display_name')", &[])),
        "42501",
        "alice attach_members",
    );
}

/// bob against A, symmetrically.
fn bob_kept_out_of_a(w: &World, k: &str) {
    let (a, b, bob) = (w.a, w.b, w.bob);
    let id_a = w.id_a;
    expect_state(
        w.act("authenticated", Some(bob), |tx| list_keys(tx, a)),
        "42501",
        "bob list_keys(A)",
    );
    expect_state(
        w.act("authenticated", Some(bob), |tx| revoke_key(tx, id_a, None)),
        "42501",
        "bob revoke_key(A's key)",
    );
    expect_state(
        w.act("authenticated", Some(bob), |tx| revalidate_key(tx, id_a)),
        "42501",
        "bob revalidate_key(A's key)",
    );
    expect_state(
        w.act("authenticated", Some(bob), |tx| {
            add_key(tx, a, "anthropic", k, None)
        }),
        "42501",
        "bob add_key(A)",
    );
    expect_state(
        w.act("authenticated", Some(bob), |tx| {
            tx.query("SELECT id, workspace_id FROM byok.keys", &[])
        }),
        "42501",
        "bob SELECT",
    );
    // Members read keys through list_keys only (security finding 8: RLS
    // filters after the scan, and EXPLAIN ANALYZE showed what it filtered).
    assert_eq!(
        w.act("authenticated", Some(bob), |tx| list_keys(tx, b))
            .unwrap()
            .iter()
            .map(|k| k.workspace_id)
            .collect::<Vec<_>>(),
        vec![b],
        "bob lists only B's key"
    );
}

/// carol belongs nowhere; a request without a subject is nobody.
fn nobody_and_no_subject_get_nothing(w: &World, k: &str) {
    let (a, carol) = (w.a, w.carol);
    expect_state(
        w.act("authenticated", Some(carol), |tx| list_keys(tx, a)),
        "42501",
        "carol list_keys(A)",
    );
    expect_state(
        w.act("authenticated", Some(carol), |tx| {
            add_key(tx, a, "anthropic", k, None)
        }),
        "42501",
        "carol add_key(A)",
    );
    expect_state(
        w.act("authenticated", Some(carol), |tx| {
            tx.query("SELECT id FROM byok.keys", &[])
        }),
        "42501",
        "carol SELECT",
    );
    expect_state(
        w.act("authenticated", None, |tx| list_keys(tx, a)),
        "42501",
        "no sub list_keys(A)",
    );
    expect_state(
        w.act("authenticated", None, |tx| {
            tx.query("SELECT id FROM byok.keys", &[])
        }),
        "42501",
        "no-sub SELECT",
    );
}

/// anon: nothing, even carrying a member's subject.
fn anon_gets_nothing(w: &World, k: &str) {
    let (a, alice) = (w.a, w.alice);
    let id_a = w.id_a;
    for sub in [None, Some(alice)] {
        let what = |f: &str| {
            format!(
                "anon ({}) {f}",
                if sub.is_some() {
                    "alice's sub"
                } else {
                    "no sub"
                }
            )
        };
        expect_state(
            w.act("anon", sub, |tx| add_key(tx, a, "anthropic", k, None)),
            "42501",
            &what("add_key"),
        );
        expect_state(
            w.act("anon", sub, |tx| list_keys(tx, a)),
            "42501",
            &what("list_keys"),
        );
        expect_state(
            w.act("anon", sub, |tx| revoke_key(tx, id_a, None)),
            "42501",
            &what("revoke_key"),
        );
        expect_state(
            w.act("anon", sub, |tx| revalidate_key(tx, id_a)),
            "42501",
            &what("revalidate_key"),
        );
        expect_state(
            w.act("anon", sub, |tx| revoke_workspace(tx, a, None)),
            "42501",
            &what("revoke_workspace"),
        );
        expect_state(
            w.act("anon", sub, |tx| use_key(tx, a, "anthropic")),
            "42501",
            &what("use_key"),
        );
        expect_state(
            w.act("anon", sub, |tx| claim_jobs(tx, "x", 1, 60)),
            "42501",
            &what("claim_jobs"),
        );
        expect_state(
            w.act("anon", sub, |tx| {
                tx.query("SELECT byok.mask(api_key => 'abcdef')", &[])
            }),
            "42501",
            &what("mask"),
        );
        expect_state(
            w.act("anon", sub, |tx| {
                tx.query("SELECT byok.redact(input => 'abcdef')", &[])
            }),
            "42501",
            &what("redact"),
        );
        expect_state(
            w.act("anon", sub, |tx| {
                tx.query("SELECT byok.authorize(workspace_id => $1)", &[&a])
            }),
            "42501",
            &what("authorize"),
        );
        expect_state(
            w.act("anon", sub, |tx| tx.query("SELECT id FROM byok.keys", &[])),
            "42501",
            &what("SELECT byok.keys"),
        );
        expect_state(
            w.act("anon", sub, |tx| {
                tx.query("SELECT 1 FROM byok.audit_log", &[])
            }),
            "42501",
            &what("SELECT audit_log"),
        );
    }
}

/// service_role: every workspace, use_key included; never the ciphertext column.
fn service_role_reaches_every_workspace(w: &World) {
    let (a, b) = (w.a, w.b);
    assert_eq!(
        w.act("service_role", None, |tx| list_keys(tx, b))
            .unwrap()
            .len(),
        1
    );
    expect_state(
        w.act("service_role", None, |tx| {
            tx.query("SELECT ciphertext FROM byok.keys", &[])
        }),
        "42501",
        "service_role ciphertext",
    );
    assert_eq!(w.service_use_key(a, "anthropic"), w.key_a);
    assert_eq!(w.service_use_key(b, "anthropic"), w.key_b);
}

#[test]
fn isolation_with_supabase_roles_created_before_the_extension() {
    let w = world(RolesCreated::BeforeExtension);
    isolation_checks(&w);
}

#[test]
fn isolation_with_supabase_roles_created_after_the_extension() {
    let w = world(RolesCreated::AfterExtension);
    isolation_checks(&w);
    // Calling it again changes nothing.
    w.su()
        .batch_execute("SELECT byok.grant_supabase_roles()")
        .unwrap();
    isolation_checks_light(&w);
}

fn isolation_checks_light(w: &World) {
    expect_state(
        w.act("authenticated", Some(w.alice), |tx| list_keys(tx, w.b)),
        "42501",
        "alice list_keys(B)",
    );
    assert_eq!(
        w.act("authenticated", Some(w.alice), |tx| list_keys(tx, w.a))
            .unwrap()
            .len(),
        2
    );
    expect_state(
        w.act("anon", None, |tx| list_keys(tx, w.a)),
        "42501",
        "anon",
    );
    assert_eq!(w.service_use_key(w.a, "anthropic"), w.key_a);
}
