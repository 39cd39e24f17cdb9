//! Security finding 6: a workspace row inserted already inactive (INSERT,
//! COPY) after its key was added left the key live, validated and served.
//! An AFTER INSERT statement trigger revokes it.

mod attack_support;
mod common;

use attack_support::App;
use byok_integration::sample_key;
use common::*;
use std::io::Write;
use uuid::Uuid;

#[test]
fn rows_inserted_or_copied_inactive_revoke_their_keys() {
    let app = App::start();
    create_login(&app.c, "backend", &["byok_consumer"]);
    create_login(&app.c, "sidecar", &["byok_worker"]);
    let (by_insert, by_copy, stays) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let ids: Vec<Uuid> = [by_insert, by_copy, stays]
        .iter()
        .enumerate()
        .map(|(i, w)| app.su_add_key(*w, i as u64 + 1))
        .collect();
    finish_all(&mut app.c.client_as("sidecar"), "valid");
    for id in &ids {
        assert_eq!(app.key_status(*id), "active");
    }

    app.owner_exec(&format!(
        "INSERT INTO app.workspaces VALUES ('{by_insert}', 'Paused'), ('{stays}', 'active')"
    ));
    let mut owner = app.owner();
    let mut w = owner
        .copy_in("COPY app.workspaces (id, status) FROM STDIN")
        .unwrap();
    writeln!(w, "{by_copy}\tsuspended").unwrap();
    w.finish().unwrap();

    assert_eq!(app.key_status(ids[0]), "revoked", "INSERT ... 'Paused'");
    assert_eq!(app.key_status(ids[1]), "revoked", "COPY ... suspended");
    assert_eq!(
        app.key_status(ids[2]),
        "active",
        "an active row revokes nothing"
    );
    let mut backend = app.c.client_as("backend");
    expect_state(
        use_key(&mut backend, by_insert, "anthropic"),
        "P0002",
        "use_key after the row arrived paused",
    );
    assert_eq!(
        use_key(&mut backend, stays, "anthropic").unwrap(),
        sample_key("anthropic", 3)
    );
}
