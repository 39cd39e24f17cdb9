//! The public key API (sql/api.sql: add, list, revoke, revalidate, use;
//! wired in by schema.rs) and its #[pg_test]s. The SQL holds the policy;
//! the plaintext is handled only by the Rust functions in sealing.rs.

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::tests_support::*;
    use pgrx::prelude::*;

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
            (
                format!("SELECT byok.add_key(NULL, 'anthropic', '{ant}')"),
                "22004",
            ),
            (
                format!("SELECT byok.add_key('{WS}', NULL, '{ant}')"),
                "22004",
            ),
            (
                format!("SELECT byok.add_key('{WS}', 'anthropic', NULL)"),
                "22004",
            ),
            (
                format!("SELECT byok.add_key('{WS}', 'anthropic', '')"),
                "22023",
            ),
            (
                format!("SELECT byok.add_key('{WS}', 'anthropic', E' \\t\\r\\n ')"),
                "22023",
            ),
            (
                format!("SELECT byok.add_key('{WS}', 'anthropic', 'hello')"),
                "22023",
            ),
            (
                format!(
                    "SELECT byok.add_key('{WS}', 'anthropic', '{} {}')",
                    &ant[..50],
                    &ant[50..]
                ),
                "22023",
            ),
            (
                format!("SELECT byok.add_key('{WS}', 'anthropic', '{big}')"),
                "22023",
            ),
            (
                format!("SELECT byok.add_key('{WS}', 'anthropic', '{oai}')"),
                "22023",
            ),
            (
                format!("SELECT byok.add_key('{WS}', 'openai', '{ant}')"),
                "22023",
            ),
            (
                format!(
                    "SELECT byok.add_key('{WS}', 'anthropic', 'sk-ant-admin01-{}AA')",
                    "a".repeat(93)
                ),
                "22023",
            ),
            (
                format!(
                    "SELECT byok.add_key('{WS}', 'openai', 'sk-admin-{0}T3BlbkFJ{0}')",
                    "b".repeat(74)
                ),
                "22023",
            ),
            (
                format!("SELECT byok.add_key('{WS}', 'gemini', '{ant}')"),
                "22023",
            ),
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
        let got =
            Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'OpenAI')")).unwrap();
        assert_eq!(got.as_deref(), Some(key.as_str()));
        assert_eq!(count("jobs"), 0, "finished jobs are deleted");
        refused(
            &format!("SELECT byok.use_key('{WS}', 'anthropic')"),
            "P0002",
        );
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
        let serving =
            Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'anthropic')")).unwrap();
        assert_eq!(
            serving.as_deref(),
            Some(old.as_str()),
            "old key serves until the new one is valid"
        );
        validate_all("valid");
        let serving =
            Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'anthropic')")).unwrap();
        assert_eq!(serving.as_deref(), Some(new.as_str()));
        let (status, detail) = Spi::get_two::<String, String>(&format!(
            "SELECT status, status_detail FROM byok.keys WHERE id = '{old_id}'"
        ))
        .unwrap();
        assert_eq!(status.as_deref(), Some("revoked"));
        assert!(detail.unwrap().contains("rotated"));
        let erased = Spi::get_one::<bool>(&format!(
            "SELECT ciphertext IS NULL FROM byok.keys WHERE id = '{old_id}'"
        ));
        assert_eq!(erased.unwrap(), Some(true));
    }

    #[pg_test]
    fn revoke_key_and_revoke_workspace() {
        let id = add("anthropic", &anthropic_key('v'));
        add("openai", &openai_key('w'));
        let status = Spi::get_one::<String>(&format!(
            "SELECT status FROM byok.revoke_key('{id}', 'customer asked')"
        ))
        .unwrap();
        let erased = Spi::get_one::<bool>(&format!(
            "SELECT ciphertext IS NULL FROM byok.keys WHERE id = '{id}'"
        ))
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
}
