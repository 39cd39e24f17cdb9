//! Security finding 3: partitions and inheritance children escape
//! revocation (the triggers sit on the attached table only, and a parent's
//! statement triggers do not fire for statements on a child). pg_byok
//! refuses such tables at attach, and fails closed — add_key and the
//! table's own statements error, byok.attachment_problems reports it — when
//! an attached table later gains a child or a parent.

mod attack_support;
mod common;

use attack_support::App;
use byok_integration::sample_key;
use common::*;

#[test]
fn partitioned_and_inheriting_tables_are_refused_at_attach() {
    let app = App::start();
    app.owner_exec(
        "CREATE TABLE app.parted (id uuid NOT NULL, status text) PARTITION BY HASH (id);
         CREATE TABLE app.part0 PARTITION OF app.parted FOR VALUES WITH (MODULUS 1, REMAINDER 0);
         CREATE TABLE app.parent (id uuid PRIMARY KEY, status text);
         CREATE TABLE app.child () INHERITS (app.parent);",
    );
    let mut su = app.c.client();
    for t in ["app.parted", "app.part0", "app.parent", "app.child"] {
        expect_state(
            su.execute(
                "SELECT byok.attach_workspaces($1::text::regclass, 'id', 'status')",
                &[&t],
            ),
            "22023",
            &format!("attach_workspaces({t})"),
        );
    }
    // Nothing was attached, no trigger was left behind.
    let attached: i64 = su
        .query_one("SELECT count(*) FROM byok.workspace_source", &[])
        .unwrap()
        .get(0);
    assert_eq!(attached, 1, "only app.workspaces is attached");
}

#[test]
fn a_table_that_gains_a_child_or_a_parent_fails_closed() {
    let app = App::start();
    let (ws, member) = (app.ws, app.member);
    let key_id = app.su_add_key(ws, 1);

    app.owner_exec("CREATE TABLE app.ws_child () INHERITS (app.workspaces)");
    expect_state(
        app.as_member(member, |tx| {
            add_key(tx, ws, "openai", &sample_key("openai", 2), None)
        }),
        "55000",
        "add_key while the workspace table has a child",
    );
    expect_state(
        app.owner()
            .execute("DELETE FROM app.workspaces WHERE id = $1", &[&ws]),
        "55000",
        "DELETE on a workspace table with a child",
    );
    let found = problems(&app);
    assert!(
        found.iter().any(|p| p.contains("inheritance children")),
        "attachment_problems reports the child: {found:?}"
    );
    assert_eq!(app.key_status(key_id), "pending", "nothing changed");

    // A partition of someone else's table: the parent's statements skip
    // this table's triggers.
    app.owner_exec(
        "DROP TABLE app.ws_child;
         CREATE TABLE app.all_ws (id uuid NOT NULL, status text NOT NULL DEFAULT 'active')
             PARTITION BY HASH (id);
         ALTER TABLE app.all_ws ATTACH PARTITION app.workspaces FOR VALUES WITH (MODULUS 1, REMAINDER 0);",
    );
    expect_state(
        app.as_member(member, |tx| {
            add_key(tx, ws, "openai", &sample_key("openai", 3), None)
        }),
        "55000",
        "add_key while the workspace table is a partition",
    );
    let found = problems(&app);
    assert!(
        found.iter().any(|p| p.contains("partition of")),
        "attachment_problems reports the parent: {found:?}"
    );

    // Back to a plain table: everything works again.
    app.owner_exec("ALTER TABLE app.all_ws DETACH PARTITION app.workspaces");
    app.as_member(member, |tx| {
        add_key(tx, ws, "openai", &sample_key("openai", 4), None)
    })
    .unwrap_or_else(|e| panic!("add_key after detaching: {}", error_text(&e)));
    assert!(problems(&app).is_empty());
}

fn problems(app: &App) -> Vec<String> {
    app.c
        .client()
        .query(
            "SELECT table_name || ': ' || problem FROM byok.attachment_problems()",
            &[],
        )
        .unwrap_or_else(|e| app.c.fail("byok.attachment_problems()", &e))
        .iter()
        .map(|r| r.get(0))
        .collect()
}
