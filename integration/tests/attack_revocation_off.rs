//! Security finding 5: an attached table's owner can switch revocation off
//! (disable or drop pg_byok's triggers, drop the table). Nothing in the
//! database can stop a table's owner; SECURITY.md says so, and
//! byok.attachment_problems() shows it to operators. What pg_byok controls
//! must fail safe: a dropped attached table neither breaks add_key for
//! workspaces of the other attached tables nor detach_workspaces.

mod attack_support;
mod common;

use attack_support::App;
use byok_integration::sample_key;
use common::*;
use uuid::Uuid;

fn problems(app: &App) -> Vec<String> {
    app.c
        .client()
        .query(
            "SELECT attached_as || ' ' || table_name || ': ' || problem FROM byok.attachment_problems()",
            &[],
        )
        .unwrap_or_else(|e| app.c.fail("byok.attachment_problems()", &e))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn disabled_and_dropped_triggers_are_reported() {
    let app = App::start();
    assert!(problems(&app).is_empty(), "{:?}", problems(&app));
    app.owner_exec("ALTER TABLE app.workspaces DISABLE TRIGGER byok_revoke_on_delete");
    app.owner_exec("DROP TRIGGER byok_revoke_on_truncate ON app.workspaces");
    app.owner_exec("ALTER TABLE app.workspaces ENABLE REPLICA TRIGGER byok_revoke_on_update");
    let p = problems(&app);
    for expected in [
        "trigger byok_revoke_on_delete is disabled",
        "trigger byok_revoke_on_truncate is missing",
        "trigger byok_revoke_on_update fires only in replica sessions",
    ] {
        assert!(
            p.iter().any(|x| x.contains(expected)),
            "{expected} not in {p:?}"
        );
    }
    assert_eq!(p.len(), 3, "{p:?}");
    // Attaching again repairs them.
    app.su_exec("SELECT byok.attach_workspaces('app.workspaces', 'id', 'status')");
    assert!(problems(&app).is_empty(), "{:?}", problems(&app));
}

#[test]
fn a_dropped_attached_table_fails_safe() {
    let app = App::start();
    let (ws, member) = (app.ws, app.member);
    // A second attached table, holding a paused workspace the member is in.
    let paused = Uuid::new_v4();
    app.owner_exec(&format!(
        "CREATE TABLE app.teams (team uuid PRIMARY KEY, state text);
         INSERT INTO app.teams VALUES ('{paused}', 'paused');
         INSERT INTO app.members VALUES ('{paused}', '{member}');"
    ));
    app.su_exec("SELECT byok.attach_workspaces('app.teams', 'team', 'state')");
    let dropped_oid: u32 = app
        .c
        .client()
        .query_one("SELECT 'app.workspaces'::regclass::oid", &[])
        .unwrap()
        .get(0);
    app.owner_exec("DROP TABLE app.workspaces");

    // add_key still consults the remaining table...
    expect_state(
        app.as_member(member, |tx| {
            add_key(tx, paused, "openai", &sample_key("openai", 1), None)
        }),
        "55000",
        "add_key for a workspace paused in the remaining table",
    );
    // ...and works for a workspace no table has.
    app.as_member(member, |tx| {
        add_key(tx, ws, "openai", &sample_key("openai", 2), None)
    })
    .unwrap_or_else(|e| panic!("add_key with a dropped attached table: {}", error_text(&e)));

    let p = problems(&app);
    assert!(
        p.iter().any(|x| x.contains("dropped")),
        "the dropped table is reported: {p:?}"
    );
    app.c
        .client()
        .execute(
            "SELECT byok.detach_workspaces($1::oid::regclass)",
            &[&dropped_oid],
        )
        .unwrap_or_else(|e| app.c.fail("detach_workspaces(<dropped oid>)", &e));
    assert!(problems(&app).is_empty(), "{:?}", problems(&app));
}
