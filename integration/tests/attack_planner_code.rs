//! Security finding 1: code the planner evaluates — index expressions,
//! partial-index predicates, extended-statistics expressions — belongs to
//! the table's owner. pg_byok plans queries over the member and workspace
//! tables; it must never do so with its own (superuser) privileges. Every
//! kind of planner-evaluated code, on both tables, through every pg_byok
//! path that reads them or their transition tables: the payload may run as
//! appowner only, and appowner must never become a superuser.

mod attack_support;
mod common;

use attack_support::App;
use common::*;
use uuid::Uuid;

/// The three kinds of code the planner evaluates, on table `t` whose
/// columns `a` and `b` exist; each statement is run by appowner.
fn hostile(kind: &str, t: &str, a: &str, b: &str) -> String {
    match kind {
        "index expression" => {
            format!("CREATE INDEX hostile ON {t} (({a}::text || app.boom()::text))")
        }
        "partial-index predicate" => {
            format!("CREATE INDEX hostile ON {t} ({a}) WHERE ({b}::text || app.boom()::text) <> ''")
        }
        "statistics expression" => {
            format!(
                "CREATE STATISTICS app.hostile ON ({a}::text || app.boom()::text), {b} FROM {t}"
            )
        }
        _ => unreachable!(),
    }
}

fn unhostile(kind: &str) -> &'static str {
    match kind {
        "statistics expression" => "DROP STATISTICS app.hostile",
        _ => "DROP INDEX app.hostile",
    }
}

const KINDS: [&str; 3] = [
    "index expression",
    "partial-index predicate",
    "statistics expression",
];

#[test]
fn planner_code_on_the_member_table_runs_as_its_owner_only() {
    let app = App::start();
    let key_id = app.su_add_key(app.ws, 1);
    let (ws, member) = (app.ws, app.member);
    for (n, kind) in KINDS.iter().enumerate() {
        app.owner_exec(&hostile(kind, "app.members", "workspace_id", "user_id"));
        app.take_seen(); // CREATE INDEX itself ran it, as appowner

        let keys = app
            .as_member(member, |tx| list_keys(tx, ws))
            .unwrap_or_else(|e| panic!("{kind}: list_keys as member: {}", error_text(&e)));
        assert!(
            keys.iter().any(|k| k.id == key_id),
            "{kind}: member authorized"
        );
        app.assert_only_owner_ran(&format!("{kind}: list_keys"));

        let seed = 100 + n as u64;
        app.as_member(member, |tx| {
            add_key(
                tx,
                ws,
                "openai",
                &byok_integration::sample_key("openai", seed),
                None,
            )
        })
        .unwrap_or_else(|e| panic!("{kind}: add_key as member: {}", error_text(&e)));
        app.assert_only_owner_ran(&format!("{kind}: add_key"));

        // Row-level security on byok.keys calls byok.authorize per row.
        let visible: i64 = app
            .as_member(member, |tx| {
                tx.query_one("SELECT count(*) FROM byok.keys", &[])
                    .map(|r| r.get(0))
            })
            .unwrap_or_else(|e| panic!("{kind}: select byok.keys: {}", error_text(&e)));
        assert!(visible >= 1, "{kind}: RLS shows the member its keys");
        app.assert_only_owner_ran(&format!("{kind}: RLS on byok.keys"));

        app.owner_exec(unhostile(kind));
        app.take_seen();
    }
}

#[test]
fn planner_code_on_the_workspace_table_runs_as_its_owner_only() {
    let app = App::start();
    let (ws, member) = (app.ws, app.member);
    for (n, kind) in KINDS.iter().enumerate() {
        let n = n as u64 * 10;
        let fresh = |status: &str| {
            let id = Uuid::new_v4();
            app.owner_exec(&format!(
                "INSERT INTO app.workspaces VALUES ('{id}', '{status}')"
            ));
            id
        };
        let doomed = [fresh("active"), fresh("active"), fresh("active")];
        let keys: Vec<Uuid> = doomed
            .iter()
            .enumerate()
            .map(|(i, w)| app.su_add_key(*w, n + i as u64))
            .collect();
        let later = Uuid::new_v4();
        let later_key = app.su_add_key(later, n + 7);
        app.owner_exec(&hostile(kind, "app.workspaces", "id", "status"));
        app.take_seen();

        // add_key's workspace-state check reads the workspace table.
        app.as_member(member, |tx| {
            add_key(
                tx,
                ws,
                "openai",
                &byok_integration::sample_key("openai", n + 5),
                None,
            )
        })
        .unwrap_or_else(|e| panic!("{kind}: add_key as member: {}", error_text(&e)));
        app.assert_only_owner_ran(&format!("{kind}: add_key's workspace check"));

        app.owner_exec(&format!(
            "DELETE FROM app.workspaces WHERE id = '{}'",
            doomed[0]
        ));
        assert_eq!(app.key_status(keys[0]), "revoked", "{kind}: DELETE");
        app.assert_only_owner_ran(&format!("{kind}: DELETE trigger"));

        app.owner_exec(&format!(
            "UPDATE app.workspaces SET status = 'paused' WHERE id = '{}'",
            doomed[1]
        ));
        assert_eq!(app.key_status(keys[1]), "revoked", "{kind}: UPDATE");
        app.assert_only_owner_ran(&format!("{kind}: UPDATE trigger"));

        app.owner_exec(&format!(
            "INSERT INTO app.workspaces VALUES ('{later}', 'suspended')"
        ));
        app.assert_only_owner_ran(&format!("{kind}: INSERT trigger"));
        assert_eq!(app.key_status(later_key), "revoked", "{kind}: INSERT");

        app.owner_exec("TRUNCATE app.workspaces");
        assert_eq!(app.key_status(keys[2]), "revoked", "{kind}: TRUNCATE");
        app.assert_only_owner_ran(&format!("{kind}: TRUNCATE trigger"));

        app.owner_exec(unhostile(kind));
        app.owner_exec(&format!(
            "INSERT INTO app.workspaces VALUES ('{ws}', 'active')"
        ));
        app.take_seen();
    }
}
