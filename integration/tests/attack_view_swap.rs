//! Security finding 2: a view swapped in for the member table between
//! pg_byok's check and its query. A session holding ACCESS EXCLUSIVE on the
//! member table renames it and creates a view of the same name; a member's
//! request waiting on that lock must, once it gets it, read the renamed
//! table (pg_byok locks by OID, then checks, then names the table from that
//! OID) and never the view.

mod attack_support;
mod common;

use attack_support::App;
use byok_integration::wait_until;
use common::*;
use std::time::Duration;

#[test]
fn a_view_swapped_in_while_a_request_waits_is_never_read() {
    let app = App::start();
    let key_id = app.su_add_key(app.ws, 1);
    app.owner_exec(
        "CREATE FUNCTION app.view_ran() RETURNS boolean LANGUAGE plpgsql AS
           $f$ BEGIN PERFORM app.record(); RETURN true; END $f$;",
    );

    let mut holder = app.owner();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE app.members IN ACCESS EXCLUSIVE MODE")
        .unwrap();

    let (ws, member) = (app.ws, app.member);
    let result = std::thread::scope(|s| {
        let waiter = s.spawn(|| app.as_member(member, |tx| list_keys(tx, ws)));
        let mut su = app.c.client();
        wait_until(
            "the member's request waits for the lock on app.members",
            Duration::from_secs(30),
            || {
                su.query_one(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                      WHERE NOT l.granted AND l.relation = 'app.members'::regclass
                        AND a.usename = 'authenticator'",
                    &[],
                )
                .map(|r| r.get::<_, i64>(0) > 0)
                .unwrap_or(false)
            },
        );
        tx.batch_execute(
            "ALTER TABLE app.members RENAME TO members_real;
             CREATE VIEW app.members AS SELECT * FROM app.members_real WHERE app.view_ran();",
        )
        .unwrap();
        tx.commit().unwrap();
        waiter.join().unwrap()
    });

    let keys = result.unwrap_or_else(|e| panic!("list_keys as member: {}", error_text(&e)));
    assert!(
        keys.iter().any(|k| k.id == key_id),
        "the renamed member table still authorizes the member"
    );
    let seen = app.take_seen();
    assert!(
        seen.is_empty(),
        "the view swapped in for the member table was read: {seen:?}"
    );
    assert!(!app.owner_is_superuser());
}
