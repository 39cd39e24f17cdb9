//! Every hand-written SQL file, wired into CREATE EXTENSION from this one
//! place, each naming what it needs.
//!
//! CREATE EXTENSION runs: bootstrap (roles, type, tables and the audit
//! trail's guards) → the Rust functions → internals (caller, audit writer,
//! revocation) → api / queue / tenancy / admin, which call internals → health
//! (key health, failure reports, events: needs api and queue) → rewrap
//! (master key rotation; its view needs its Rust functions) → grants (last:
//! it grants what all the others created). Function bodies are checked only
//! when called, so `requires` lists what a file's statements use when they
//! run: the tables, and internals for the function groups built on them.

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
// UTF8 databases only: refuses the install anywhere else (see src/text.rs).
pgrx::extension_sql_file!(
    "../sql/encoding.sql",
    name = "encoding",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/internals.sql",
    name = "internals",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!("../sql/api.sql", name = "api", requires = ["internals"]);
pgrx::extension_sql_file!("../sql/queue.sql", name = "queue", requires = ["internals"]);
pgrx::extension_sql_file!(
    "../sql/tenancy.sql",
    name = "tenancy",
    requires = ["internals"]
);
pgrx::extension_sql_file!("../sql/admin.sql", name = "admin", requires = ["internals"]);
pgrx::extension_sql_file!(
    "../sql/health.sql",
    name = "health",
    requires = ["api", "queue"]
);
pgrx::extension_sql_file!(
    "../sql/rewrap.sql",
    name = "rewrap",
    requires = [
        "internals",
        "tenancy",
        rewrap::ciphertext_version,
        rewrap::loaded_key_versions,
        rewrap::rewrap,
        sealing::master_key_status
    ]
);
pgrx::extension_sql_file!(
    "../sql/usage.sql",
    name = "usage",
    requires = [
        "internals",
        use_key::use_key,
        usage::usage_counters,
        usage::usage_status
    ]
);
// Supabase Vault storage: alters byok.keys, so after every file that
// creates on it; its functions call the Rust ones of src/vault.rs.
pgrx::extension_sql_file!(
    "../sql/vault.sql",
    name = "vault",
    requires = ["internals", "rewrap", vault::vault_delete, vault::to_vault]
);
pgrx::extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::tests_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn audit_log_records_actions_and_is_append_only() {
        let key = anthropic_key('x');
        add("anthropic", &key);
        validate_all("valid");
        // Per-call audit of use_key (the default counts uses instead).
        Spi::run("SET LOCAL byok.use_audit = 'each'").unwrap();
        Spi::run(&format!("SELECT byok.use_key('{WS}', 'anthropic')")).unwrap();
        let actions =
            Spi::get_one::<Vec<String>>("SELECT array_agg(action ORDER BY id) FROM byok.audit_log")
                .unwrap()
                .unwrap();
        assert_eq!(actions, vec!["add", "validate", "use"]);
        let leaked = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM byok.audit_log a WHERE a::text LIKE '%' || $1 || '%'",
            &[key[10..40].into()],
        )
        .unwrap();
        assert_eq!(leaked, Some(0));
        assert_eq!(
            sqlstate_of("DELETE FROM byok.audit_log").as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of("UPDATE byok.audit_log SET detail = 'x'").as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of("TRUNCATE byok.audit_log").as_deref(),
            Some("42501")
        );
    }

    #[pg_test]
    fn nothing_is_granted_to_public_and_ciphertext_to_no_role() {
        let public_fns = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
              WHERE p.pronamespace = 'byok'::regnamespace AND a.grantee = 0 AND a.privilege_type = 'EXECUTE'",
        )
        .unwrap();
        assert_eq!(
            public_fns,
            Some(0),
            "a byok function is executable by PUBLIC"
        );
        let grantees = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_attribute a, aclexplode(a.attacl) x
              WHERE a.attrelid = 'byok.keys'::regclass AND a.attname = 'ciphertext'",
        )
        .unwrap();
        assert_eq!(
            grantees,
            Some(0),
            "the ciphertext column is granted to some role"
        );
        let table_grants = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) x
              WHERE c.oid = 'byok.keys'::regclass AND x.grantee <> c.relowner",
        )
        .unwrap();
        assert_eq!(
            table_grants,
            Some(0),
            "byok.keys is granted as a whole to some role"
        );
    }

    #[pg_test]
    fn grant_supabase_roles_grants_exactly_the_contract() {
        for role in ["anon", "authenticated", "service_role"] {
            Spi::run(&format!("CREATE ROLE {role} NOLOGIN")).unwrap();
        }
        Spi::run("SELECT byok.grant_supabase_roles()").unwrap();
        let can = |role: &str, f: &str| {
            Spi::get_one::<bool>(&format!(
                "SELECT has_function_privilege('{role}', '{f}', 'EXECUTE')"
            ))
            .unwrap()
            .unwrap()
        };
        assert!(can("authenticated", "byok.add_key(uuid, text, text, text)"));
        assert!(!can("authenticated", "byok.use_key(uuid, text)"));
        assert!(!can("anon", "byok.add_key(uuid, text, text, text)"));
        assert!(!can("anon", "byok.list_keys(uuid)"));
        assert!(can("service_role", "byok.use_key(uuid, text)"));
        assert!(!can(
            "service_role",
            "byok.claim_jobs(text, integer, integer)"
        ));
        let col = Spi::get_one::<bool>(
            "SELECT has_column_privilege('service_role', 'byok.keys', 'ciphertext', 'SELECT')",
        )
        .unwrap();
        assert_eq!(col, Some(false));
        // Members read their workspaces' audit trail (RLS limits the rows).
        let audit = Spi::get_one::<bool>(
            "SELECT has_table_privilege('authenticated', 'byok.audit_log', 'SELECT')
                AND NOT has_table_privilege('anon', 'byok.audit_log', 'SELECT')",
        )
        .unwrap();
        assert_eq!(audit, Some(true));
    }
}
