//! `byok.mask` and `byok.redact`: the masking rules of byok-core, in SQL.

use pgrx::prelude::*;

/// '…' followed by the last 4 characters of the (trimmed) key.
#[pg_extern(immutable, parallel_safe, strict, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn mask(api_key: &str) -> String {
    byok_core::mask::mask(api_key)
}

/// The input with every key-shaped substring masked.
#[pg_extern(immutable, parallel_safe, strict, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn redact(input: &str) -> String {
    byok_core::redact::redact(input).into_owned()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::tests_support::{anthropic_key, openai_key};
    use pgrx::prelude::*;

    // Pure functions: plain tests, no database (the SQL calls are covered
    // by the integration tests).
    #[test]
    fn mask_shows_only_the_last_four() {
        let key = openai_key('q');
        assert_eq!(super::mask(&key), "…qqqq");
    }

    #[test]
    fn redact_masks_keys_inside_text() {
        let key = anthropic_key('z');
        let text = format!("call failed for {key}, retrying");
        let out = super::redact(&text);
        assert!(
            !out.contains(&key[..20]),
            "redacted text still holds the key"
        );
        assert!(out.contains("…zzAA"));
    }

    #[pg_test]
    fn mask_of_null_is_null() {
        assert_eq!(
            Spi::get_one::<String>("SELECT byok.mask(NULL)").unwrap(),
            None
        );
    }
}
