//! Tenancy (sql/tenancy.sql, wired in by schema.rs: authorize, attach and
//! detach members and workspaces, revocation triggers, RLS policies): the
//! workspace statuses that revoke keys, and the #[pg_test]s. The reads of
//! app tables are in app_tables.rs.

use pgrx::prelude::*;

/// The statuses that revoke a workspace's keys (setting `byok.inactive_statuses`).
#[pg_extern(stable, name = "_inactive_statuses")]
#[search_path(pg_catalog, pg_temp)]
fn inactive_statuses() -> Vec<String> {
    crate::settings::inactive_statuses()
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::tests_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn inactive_statuses_default_list() {
        let list = Spi::get_one::<Vec<String>>("SELECT byok._inactive_statuses()")
            .unwrap()
            .unwrap();
        for s in ["paused", "cancelled", "canceled", "suspended", "deleted"] {
            assert!(list.iter().any(|x| x == s), "{s} missing from {list:?}");
        }
    }

    #[pg_test]
    fn authorize_is_true_for_superusers_and_closed_otherwise() {
        assert_eq!(
            Spi::get_one::<bool>(&format!("SELECT byok.authorize('{WS}')")).unwrap(),
            Some(true)
        );
        assert_eq!(
            Spi::get_one::<bool>("SELECT byok.authorize(NULL)").unwrap(),
            Some(false)
        );
        Spi::run("CREATE ROLE byok_test_outsider NOLOGIN").unwrap();
        Spi::run("GRANT USAGE ON SCHEMA byok TO byok_test_outsider").unwrap();
        Spi::run("GRANT EXECUTE ON FUNCTION byok.authorize(uuid) TO byok_test_outsider").unwrap();
        Spi::run("SET LOCAL ROLE byok_test_outsider").unwrap();
        let outsider = Spi::get_one::<bool>(&format!("SELECT byok.authorize('{WS}')")).unwrap();
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(
            outsider,
            Some(false),
            "no membership rule configured: closed by default"
        );
    }

    fn app_schema() {
        Spi::run(
            "CREATE SCHEMA app;
             CREATE TABLE app.orgs (org_uuid uuid PRIMARY KEY, lifecycle text, seats integer);
             CREATE TABLE app.people (org_ref text, person uuid);
             INSERT INTO app.orgs VALUES ('11111111-1111-1111-1111-111111111111', 'active'),
                                         ('22222222-2222-2222-2222-222222222222', 'active');",
        )
        .unwrap();
    }

    fn live_keys(ws: &str) -> i64 {
        Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM byok.keys WHERE workspace_id = '{ws}' AND status NOT IN ('revoked', 'invalid')"
        ))
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn attach_members_authorizes_jwt_subjects_of_the_workspace() {
        app_schema();
        Spi::run("INSERT INTO app.people VALUES ('11111111-1111-1111-1111-111111111111', 'aaaaaaaa-0000-0000-0000-000000000001')").unwrap();
        Spi::run("SELECT byok.attach_members('app.people', 'org_ref', 'person')").unwrap();
        Spi::run(
            "CREATE ROLE byok_test_member NOLOGIN; GRANT USAGE ON SCHEMA byok TO byok_test_member;
                  GRANT EXECUTE ON FUNCTION byok.authorize(uuid) TO byok_test_member",
        )
        .unwrap();
        Spi::run("SELECT set_config('request.jwt.claims', '{\"sub\":\"aaaaaaaa-0000-0000-0000-000000000001\"}', true)").unwrap();
        Spi::run("SET LOCAL ROLE byok_test_member").unwrap();
        let own = Spi::get_one::<bool>(&format!("SELECT byok.authorize('{WS}')")).unwrap();
        let other =
            Spi::get_one::<bool>("SELECT byok.authorize('22222222-2222-2222-2222-222222222222')")
                .unwrap();
        Spi::run("RESET ROLE").unwrap();
        assert_eq!((own, other), (Some(true), Some(false)));
        refused(
            "SELECT byok.attach_members('app.people', 'nope', 'person')",
            "22023",
        );
        refused(
            "SELECT byok.attach_members('app.orgs', 'org_uuid', 'seats')",
            "22023",
        );
    }

    #[pg_test]
    fn workspace_delete_and_pause_revoke_exactly_that_workspace() {
        app_schema();
        Spi::run("SELECT byok.attach_workspaces('app.orgs', 'org_uuid', 'lifecycle')").unwrap();
        let other = "22222222-2222-2222-2222-222222222222";
        add("anthropic", &anthropic_key('d'));
        Spi::run(&format!(
            "SELECT byok.add_key('{other}', 'openai', '{}')",
            openai_key('e')
        ))
        .unwrap();
        Spi::run(&format!(
            "UPDATE app.orgs SET lifecycle = 'Paused' WHERE org_uuid = '{WS}'"
        ))
        .unwrap();
        assert_eq!((live_keys(WS), live_keys(other)), (0, 1));
        Spi::run(&format!(
            "UPDATE app.orgs SET lifecycle = 'active' WHERE org_uuid = '{WS}'"
        ))
        .unwrap();
        assert_eq!(
            live_keys(WS),
            0,
            "restoring a workspace does not revive its keys"
        );
        Spi::run(&format!("DELETE FROM app.orgs WHERE org_uuid = '{other}'")).unwrap();
        assert_eq!(live_keys(other), 0);
        assert_eq!(count("jobs"), 0, "revocation cancels pending jobs");
        let causes = Spi::get_one::<Vec<String>>(
            "SELECT array_agg(outcome ORDER BY id) FROM byok.audit_log WHERE action = 'revoke'",
        )
        .unwrap()
        .unwrap();
        assert_eq!(causes, vec!["workspace_paused", "workspace_deleted"]);
        Spi::run("SELECT byok.detach_workspaces('app.orgs')").unwrap();
        add("anthropic", &anthropic_key('f'));
        Spi::run(&format!("DELETE FROM app.orgs WHERE org_uuid = '{WS}'")).unwrap();
        assert_eq!(live_keys(WS), 1, "a detached table revokes nothing");
    }

    #[pg_test]
    fn detach_members_closes_authorization_again() {
        app_schema();
        Spi::run("SELECT byok.attach_members('app.people', 'org_ref', 'person')").unwrap();
        assert_eq!(count("member_source"), 1);
        Spi::run("SELECT byok.detach_members()").unwrap();
        assert_eq!(count("member_source"), 0);
    }

    #[pg_test]
    fn truncating_the_workspace_table_revokes_its_workspaces_keys() {
        app_schema();
        Spi::run("SELECT byok.attach_workspaces('app.orgs', 'org_uuid')").unwrap();
        add("anthropic", &anthropic_key('g'));
        Spi::run("TRUNCATE app.orgs").unwrap();
        assert_eq!(live_keys(WS), 0);
    }

    /// A non-superuser app owner, and a table recording whoever runs its code.
    fn hostile_app_owner() {
        app_schema();
        Spi::run(
            "CREATE ROLE byok_test_owner NOLOGIN;
             CREATE TABLE app.seen (who text);
             GRANT INSERT ON app.seen TO PUBLIC;
             ALTER SCHEMA app OWNER TO byok_test_owner;
             ALTER TABLE app.people OWNER TO byok_test_owner;
             ALTER TABLE app.orgs OWNER TO byok_test_owner;
             CREATE ROLE byok_test_member NOLOGIN;
             GRANT USAGE ON SCHEMA byok TO byok_test_member;
             GRANT EXECUTE ON FUNCTION byok.authorize(uuid) TO byok_test_member;
             INSERT INTO app.people VALUES ('11111111-1111-1111-1111-111111111111', 'aaaaaaaa-0000-0000-0000-000000000001');
             CREATE FUNCTION app.pwn() RETURNS boolean LANGUAGE plpgsql AS
               $f$ BEGIN INSERT INTO app.seen VALUES (current_user); RETURN true; END $f$;
             ALTER FUNCTION app.pwn() OWNER TO byok_test_owner;",
        )
        .unwrap();
        Spi::run("SELECT byok.attach_members('app.people', 'org_ref', 'person')").unwrap();
    }

    fn authorize_as_member(ws: &str) -> Option<bool> {
        Spi::run("SELECT set_config('request.jwt.claims', '{\"sub\":\"aaaaaaaa-0000-0000-0000-000000000001\"}', true)").unwrap();
        Spi::run("SET LOCAL ROLE byok_test_member").unwrap();
        let ok = Spi::get_one::<bool>(&format!("SELECT byok.authorize('{ws}')")).unwrap();
        Spi::run("RESET ROLE").unwrap();
        ok
    }

    fn code_ran_as() -> Vec<String> {
        Spi::get_one::<Vec<String>>("SELECT coalesce(array_agg(who), '{}') FROM app.seen")
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn a_view_swapped_in_for_the_member_table_is_never_read() {
        hostile_app_owner();
        Spi::run(
            "SET LOCAL ROLE byok_test_owner;
             ALTER TABLE app.people RENAME TO people_real;
             CREATE VIEW app.people AS SELECT * FROM app.people_real WHERE app.pwn();
             RESET ROLE;",
        )
        .unwrap();
        assert_eq!(
            authorize_as_member(WS),
            Some(true),
            "the renamed table is still the rule"
        );
        assert!(
            code_ran_as().is_empty(),
            "the view's code ran: {:?}",
            code_ran_as()
        );
    }

    #[pg_test]
    fn a_home_made_auth_uid_is_never_called() {
        hostile_app_owner();
        Spi::run(
            "DO $d$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO byok_test_owner', current_database()); END $d$;
             SET LOCAL ROLE byok_test_owner;
             CREATE SCHEMA auth;
             CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE plpgsql AS
               $f$ BEGIN INSERT INTO app.seen VALUES (current_user); RETURN 'aaaaaaaa-0000-0000-0000-000000000001'; END $f$;
             RESET ROLE;",
        )
        .unwrap();
        assert_eq!(authorize_as_member(WS), Some(true));
        assert!(
            code_ran_as().is_empty(),
            "auth.uid() ran: {:?}",
            code_ran_as()
        );
    }

    #[pg_test]
    fn status_columns_are_never_cast_with_someone_elses_code() {
        hostile_app_owner();
        Spi::run(
            "SET LOCAL ROLE byok_test_owner;
             CREATE TYPE app.st AS (s text);
             CREATE FUNCTION app.st_text(app.st) RETURNS text LANGUAGE plpgsql AS
               $f$ BEGIN INSERT INTO app.seen VALUES (current_user); RETURN 'paused'; END $f$;
             CREATE CAST (app.st AS text) WITH FUNCTION app.st_text(app.st);
             ALTER TABLE app.orgs ADD COLUMN st app.st;
             RESET ROLE;",
        )
        .unwrap();
        refused(
            "SELECT byok.attach_workspaces('app.orgs', 'org_uuid', 'st')",
            "22023",
        );
        // Attached while text, then retyped behind pg_byok's back: fail closed.
        Spi::run("SELECT byok.attach_workspaces('app.orgs', 'org_uuid', 'lifecycle')").unwrap();
        Spi::run(
            "SET LOCAL ROLE byok_test_owner;
             ALTER TABLE app.orgs DROP COLUMN lifecycle;
             ALTER TABLE app.orgs RENAME COLUMN st TO lifecycle;
             RESET ROLE;",
        )
        .unwrap();
        let state = sqlstate_of("UPDATE app.orgs SET lifecycle = ROW('x')");
        assert_eq!(state.as_deref(), Some("55000"));
        assert!(
            code_ran_as().is_empty(),
            "the cast ran: {:?}",
            code_ran_as()
        );
    }

    #[pg_test]
    fn changing_a_workspace_id_revokes_the_old_ids_keys() {
        app_schema();
        Spi::run("SELECT byok.attach_workspaces('app.orgs', 'org_uuid', 'lifecycle')").unwrap();
        add("openai", &openai_key('i'));
        Spi::run(&format!(
            "UPDATE app.orgs SET org_uuid = gen_random_uuid(), lifecycle = 'deleted' WHERE org_uuid = '{WS}'"
        ))
        .unwrap();
        assert_eq!(live_keys(WS), 0);
    }

    #[pg_test]
    fn keys_cannot_be_added_to_inactive_workspaces() {
        app_schema();
        Spi::run("SELECT byok.attach_workspaces('app.orgs', 'org_uuid', 'lifecycle')").unwrap();
        Spi::run(&format!(
            "UPDATE app.orgs SET lifecycle = 'Suspended' WHERE org_uuid = '{WS}'"
        ))
        .unwrap();
        refused(
            &format!(
                "SELECT byok.add_key('{WS}', 'openai', '{}')",
                openai_key('m')
            ),
            "55000",
        );
        // A workspace not (yet) in the table may take keys; a notice says so.
        let added = sqlstate_of(&format!(
            "SELECT byok.add_key(gen_random_uuid(), 'openai', '{}')",
            openai_key('n')
        ));
        assert_eq!(added, None);
    }
}
