//! Tenancy (sql/tenancy.sql: authorize, attach/detach members and
//! workspaces, revocation triggers, RLS policies) and its #[pg_test]s.

pgrx::extension_sql_file!(
    "../sql/tenancy.sql",
    name = "tenancy",
    requires = ["internals"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::tests_support::*;
    use pgrx::prelude::*;

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
}
