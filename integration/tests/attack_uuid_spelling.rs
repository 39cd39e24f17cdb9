//! Security finding 7: a text workspace id spelled in mixed case (or in
//! braces) defeated add_key's inactive-workspace check, which compared
//! text. Ids are now compared as uuids.

mod attack_support;
mod common;

use attack_support::App;
use byok_integration::sample_key;
use common::*;
use uuid::Uuid;

#[test]
fn inactive_workspaces_are_found_however_their_text_id_is_spelled() {
    let app = App::start();
    let spellings = |u: Uuid| {
        let s = u.to_string();
        let mixed: String = s
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        [
            mixed,
            format!("{{{s}}}"),
            s.replace('-', ""),
            format!(" {s}\t"),
        ]
    };
    app.owner_exec(
        "CREATE TABLE app.orgs (org text PRIMARY KEY, state text);
         GRANT SELECT ON app.orgs TO authenticated;",
    );
    app.su_exec("SELECT byok.attach_workspaces('app.orgs', 'org', 'state')");
    for i in 0..4 {
        let w = Uuid::new_v4();
        let text = spellings(w)[i].clone();
        app.owner_exec(&format!(
            "INSERT INTO app.orgs VALUES ('{}', 'paused')",
            text.replace('\'', "''")
        ));
        app.owner_exec(&format!(
            "INSERT INTO app.members VALUES ('{w}', '{}')",
            app.member
        ));
        expect_state(
            app.as_member(app.member, |tx| {
                add_key(tx, w, "openai", &sample_key("openai", i as u64), None)
            }),
            "55000",
            &format!("add_key for a paused workspace stored as {text:?}"),
        );
    }
    // A workspace the table does not have still takes keys.
    let absent = Uuid::new_v4();
    app.owner_exec(&format!(
        "INSERT INTO app.members VALUES ('{absent}', '{}')",
        app.member
    ));
    app.as_member(app.member, |tx| {
        add_key(tx, absent, "openai", &sample_key("openai", 99), None)
    })
    .unwrap_or_else(|e| panic!("add_key for an absent workspace: {}", error_text(&e)));
}
