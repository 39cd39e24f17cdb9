//! The hand-written SQL of the extension, in the order CREATE EXTENSION runs
//! it, and the #[pg_test]s of the functions it defines.
//!
//! bootstrap (roles, type, tables) → Rust functions → internals → api,
//! queue, tenancy → grants (last: it grants what all the others created).

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/internals.sql", name = "internals", requires = ["bootstrap"]);
pgrx::extension_sql_file!("../sql/api.sql", name = "api", requires = ["internals"]);
pgrx::extension_sql_file!("../sql/queue.sql", name = "queue", requires = ["internals"]);
pgrx::extension_sql_file!("../sql/tenancy.sql", name = "tenancy", requires = ["internals"]);
pgrx::extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::tests_support::{anthropic_key, count, error_of, openai_key, sqlstate_of};
    use pgrx::prelude::*;

    const WS: &str = "11111111-1111-1111-1111-111111111111";

    fn add(vendor: &str, key: &str) -> String {
        Spi::get_one_with_args::<String>(
            &format!("SELECT (byok.add_key('{WS}', $1, $2)).id::text"),
            &[vendor.into(), key.into()],
        )
        .unwrap()
        .unwrap()
    }

    /// Claim every ready job and finish it with `outcome`.
    fn validate_all(outcome: &str) {
        Spi::run(&format!(
            "SELECT byok.finish_job(c.job_id, c.lease_token, '{outcome}')
               FROM byok.claim_jobs('test-worker', 100) c"
        ))
        .unwrap();
    }

    /// Each bad input raises its SQLSTATE and leaves no row behind.
    fn refused(sql: &str, state: &str) {
        let (keys, jobs, audit) = (count("keys"), count("jobs"), count("audit_log"));
        let (got, msg, hint) = error_of(sql);
        assert_eq!(got, state, "{sql} raised {got}: {msg}");
        assert!(hint.is_some(), "{sql} raised {got} without a hint: {msg}");
        // The test keys' bodies are one repeated character: no run of it may
        // reach the message.
        for fill in ['a', 'b', 'o', 'v', 'w', 'x'] {
            assert!(!msg.contains(&fill.to_string().repeat(12)), "message echoes a key: {msg}");
        }
        assert_eq!((count("keys"), count("jobs"), count("audit_log")), (keys, jobs, audit));
    }

    #[pg_test]
    fn add_key_stores_masked_pending_key_and_queues_a_job() {
        let key = anthropic_key('k');
        let (status, masked) = Spi::get_two_with_args::<String, String>(
            &format!("SELECT status, masked FROM byok.add_key('{WS}', 'Anthropic', $1, 'prod')"),
            &[format!("\u{feff}  {key}\r\n").as_str().into()],
        )
        .unwrap();
        assert_eq!(status.as_deref(), Some("pending"));
        assert_eq!(masked.as_deref(), Some("…kkAA"));
        assert_eq!(count("jobs"), 1);
        let plaintext_rows = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM byok.keys k WHERE position(convert_to($1, 'UTF8') IN k.ciphertext) > 0
                OR k::text LIKE '%' || $1 || '%'",
            &[key.as_str().into()],
        )
        .unwrap();
        assert_eq!(plaintext_rows, Some(0), "plaintext found in byok.keys");
    }

    #[pg_test]
    fn add_key_refuses_every_bad_input() {
        let ant = anthropic_key('a');
        let oai = openai_key('o');
        let big = "x".repeat(1 << 20);
        let cases: Vec<(String, &str)> = vec![
            (format!("SELECT byok.add_key(NULL, 'anthropic', '{ant}')"), "22004"),
            (format!("SELECT byok.add_key('{WS}', NULL, '{ant}')"), "22004"),
            (format!("SELECT byok.add_key('{WS}', 'anthropic', NULL)"), "22004"),
            (format!("SELECT byok.add_key('{WS}', 'anthropic', '')"), "22023"),
            (format!("SELECT byok.add_key('{WS}', 'anthropic', E' \\t\\r\\n ')"), "22023"),
            (format!("SELECT byok.add_key('{WS}', 'anthropic', 'hello')"), "22023"),
            (format!("SELECT byok.add_key('{WS}', 'anthropic', '{} {}')", &ant[..50], &ant[50..]), "22023"),
            (format!("SELECT byok.add_key('{WS}', 'anthropic', '{big}')"), "22023"),
            (format!("SELECT byok.add_key('{WS}', 'anthropic', '{oai}')"), "22023"),
            (format!("SELECT byok.add_key('{WS}', 'openai', '{ant}')"), "22023"),
            (format!("SELECT byok.add_key('{WS}', 'anthropic', 'sk-ant-admin01-{}AA')", "a".repeat(93)), "22023"),
            (format!("SELECT byok.add_key('{WS}', 'openai', 'sk-admin-{0}T3BlbkFJ{0}')", "b".repeat(74)), "22023"),
            (format!("SELECT byok.add_key('{WS}', 'gemini', '{ant}')"), "22023"),
        ];
        for (sql, state) in cases {
            refused(&sql, state);
        }
        assert_eq!(count("keys"), 0);
    }

    #[pg_test]
    fn list_keys_shows_masked_keys_newest_first() {
        add("anthropic", &anthropic_key('1'));
        add("openai", &openai_key('2'));
        let masked = Spi::get_one::<Vec<String>>(&format!(
            "SELECT array_agg(masked) FROM byok.list_keys('{WS}')"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(masked, vec!["…2222".to_string(), "…11AA".to_string()]);
        refused("SELECT * FROM byok.list_keys(NULL)", "22004");
    }

    #[pg_test]
    fn valid_key_becomes_active_and_use_key_returns_it() {
        let key = openai_key('u');
        add("openai", &key);
        validate_all("valid");
        let got = Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'OpenAI')")).unwrap();
        assert_eq!(got.as_deref(), Some(key.as_str()));
        assert_eq!(count("jobs"), 0, "finished jobs are deleted");
        refused(&format!("SELECT byok.use_key('{WS}', 'anthropic')"), "P0002");
        refused(&format!("SELECT byok.use_key('{WS}', 'gemini')"), "22023");
        refused("SELECT byok.use_key(NULL, 'openai')", "22004");
        refused(&format!("SELECT byok.use_key('{WS}', NULL)"), "22004");
    }

    #[pg_test]
    fn rotation_supersedes_the_old_key_only_once_the_new_one_is_valid() {
        let (old, new) = (anthropic_key('o'), anthropic_key('n'));
        let old_id = add("anthropic", &old);
        validate_all("valid");
        add("anthropic", &new);
        let serving = Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'anthropic')")).unwrap();
        assert_eq!(serving.as_deref(), Some(old.as_str()), "old key serves until the new one is valid");
        validate_all("valid");
        let serving = Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'anthropic')")).unwrap();
        assert_eq!(serving.as_deref(), Some(new.as_str()));
        let (status, detail) = Spi::get_two::<String, String>(&format!(
            "SELECT status, status_detail FROM byok.keys WHERE id = '{old_id}'"
        ))
        .unwrap();
        assert_eq!(status.as_deref(), Some("revoked"));
        assert!(detail.unwrap().contains("rotated"));
        let erased = Spi::get_one::<bool>(&format!("SELECT ciphertext IS NULL FROM byok.keys WHERE id = '{old_id}'"));
        assert_eq!(erased.unwrap(), Some(true));
    }

    #[pg_test]
    fn invalid_key_is_erased() {
        let id = add("anthropic", &anthropic_key('i'));
        Spi::run(
            "SELECT byok.finish_job(c.job_id, c.lease_token, 'invalid', 'The vendor rejected the key (401)', 401)
               FROM byok.claim_jobs('w') c",
        )
        .unwrap();
        let (status, erased) = Spi::get_two::<String, bool>(&format!(
            "SELECT status, ciphertext IS NULL FROM byok.keys WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!((status.as_deref(), erased), (Some("invalid"), Some(true)));
        refused(&format!("SELECT byok.revalidate_key('{id}')"), "22023");
    }

    #[pg_test]
    fn retry_reschedules_and_the_attempt_limit_makes_the_key_unverified() {
        let id = add("openai", &openai_key('r'));
        Spi::run("SET byok.max_attempts = 2").unwrap();
        Spi::run("SELECT byok.finish_job(c.job_id, c.lease_token, 'retry', 'vendor 503', 503) FROM byok.claim_jobs('w') c").unwrap();
        let later = Spi::get_one::<bool>("SELECT run_after > clock_timestamp() AND lease_token IS NULL FROM byok.jobs").unwrap();
        assert_eq!(later, Some(true), "retry must reschedule into the future");
        Spi::run("UPDATE byok.jobs SET run_after = clock_timestamp()").unwrap();
        let status = Spi::get_one::<String>(
            "SELECT byok.finish_job(c.job_id, c.lease_token, 'retry', 'vendor 503', 503) FROM byok.claim_jobs('w') c",
        )
        .unwrap();
        assert_eq!(status.as_deref(), Some("unverified"));
        let kept = Spi::get_one::<bool>(&format!("SELECT ciphertext IS NOT NULL FROM byok.keys WHERE id = '{id}'"));
        assert_eq!(kept.unwrap(), Some(true), "unverified keys keep their ciphertext");
        let pending = Spi::get_one::<String>(&format!("SELECT status FROM byok.revalidate_key('{id}')")).unwrap();
        assert_eq!(pending.as_deref(), Some("pending"));
    }

    #[pg_test]
    fn stale_lease_token_changes_nothing() {
        add("openai", &openai_key('s'));
        let job = Spi::get_one::<i64>("SELECT job_id FROM byok.claim_jobs('w')").unwrap().unwrap();
        let res = Spi::get_one::<String>(&format!(
            "SELECT byok.finish_job({job}, gen_random_uuid(), 'invalid')"
        ))
        .unwrap();
        assert_eq!(res.as_deref(), Some("stale"));
        let status = Spi::get_one::<String>("SELECT status FROM byok.keys").unwrap();
        assert_eq!(status.as_deref(), Some("pending"));
    }

    #[pg_test]
    fn queue_functions_refuse_bad_arguments() {
        refused("SELECT * FROM byok.claim_jobs(NULL)", "22004");
        refused("SELECT * FROM byok.claim_jobs('w', 0)", "22023");
        refused("SELECT * FROM byok.claim_jobs('w', 1, 0)", "22023");
        refused("SELECT byok.finish_job(1, gen_random_uuid(), 'maybe')", "22023");
        refused("SELECT byok.finish_job(NULL, gen_random_uuid(), 'valid')", "22004");
        refused("SELECT byok.finish_job(1, NULL, 'valid')", "22004");
        refused("SELECT byok.finish_job(1, gen_random_uuid(), NULL)", "22004");
        refused("SELECT byok.finish_job(1, gen_random_uuid(), 'retry', NULL, 99)", "22023");
    }

    #[pg_test]
    fn revoke_key_and_revoke_workspace() {
        let id = add("anthropic", &anthropic_key('v'));
        add("openai", &openai_key('w'));
        let status =
            Spi::get_one::<String>(&format!("SELECT status FROM byok.revoke_key('{id}', 'customer asked')"))
                .unwrap();
        let erased = Spi::get_one::<bool>(&format!("SELECT ciphertext IS NULL FROM byok.keys WHERE id = '{id}'"))
            .unwrap();
        assert_eq!((status.as_deref(), erased), (Some("revoked"), Some(true)));
        let n = Spi::get_one::<i32>(&format!("SELECT byok.revoke_workspace('{WS}')")).unwrap();
        assert_eq!(n, Some(1), "only the one live key is revoked");
        assert_eq!(count("jobs"), 0, "revocation cancels pending jobs");
        refused("SELECT byok.revoke_key(NULL)", "22004");
        refused(&format!("SELECT byok.revoke_key('{id}', NULL)"), "22004");
        refused("SELECT byok.revoke_key(gen_random_uuid())", "P0002");
        refused("SELECT byok.revoke_workspace(NULL)", "22004");
    }

    #[pg_test]
    fn audit_log_records_actions_and_is_append_only() {
        let key = anthropic_key('x');
        add("anthropic", &key);
        validate_all("valid");
        Spi::run(&format!("SELECT byok.use_key('{WS}', 'anthropic')")).unwrap();
        let actions = Spi::get_one::<Vec<String>>("SELECT array_agg(action ORDER BY id) FROM byok.audit_log")
            .unwrap()
            .unwrap();
        assert_eq!(actions, vec!["add", "validate", "use"]);
        let leaked = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM byok.audit_log a WHERE a::text LIKE '%' || $1 || '%'",
            &[key[10..40].into()],
        )
        .unwrap();
        assert_eq!(leaked, Some(0));
        assert_eq!(sqlstate_of("DELETE FROM byok.audit_log").as_deref(), Some("42501"));
        assert_eq!(sqlstate_of("UPDATE byok.audit_log SET detail = 'x'").as_deref(), Some("42501"));
        assert_eq!(sqlstate_of("TRUNCATE byok.audit_log").as_deref(), Some("42501"));
    }

    #[pg_test]
    fn authorize_is_true_for_superusers_and_closed_otherwise() {
        assert_eq!(Spi::get_one::<bool>(&format!("SELECT byok.authorize('{WS}')")).unwrap(), Some(true));
        assert_eq!(Spi::get_one::<bool>("SELECT byok.authorize(NULL)").unwrap(), Some(false));
        Spi::run("CREATE ROLE byok_test_outsider NOLOGIN").unwrap();
        Spi::run("GRANT USAGE ON SCHEMA byok TO byok_test_outsider").unwrap();
        Spi::run("GRANT EXECUTE ON FUNCTION byok.authorize(uuid) TO byok_test_outsider").unwrap();
        Spi::run("SET LOCAL ROLE byok_test_outsider").unwrap();
        let outsider = Spi::get_one::<bool>(&format!("SELECT byok.authorize('{WS}')")).unwrap();
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(outsider, Some(false), "no membership rule configured: closed by default");
    }
}
