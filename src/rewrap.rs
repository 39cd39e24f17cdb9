//! Master key rotation from SQL: re-encrypting stored keys under the
//! primary master key version, and reading which version sealed what.
//!
//! `byok._rewrap` opens and re-seals inside this one call: the plaintext
//! never leaves Rust (it is wiped on return), SQL sees only ciphertexts.
//! The batching, locking and progress reporting are SQL (sql/rewrap.sql,
//! procedure `byok.rewrap`), where COMMIT per batch is possible.

use crate::error::OrRaise;
use crate::master_key::{keyring, keyring_holding};
use crate::sealing::{aad, required};
use crate::settings::min_decrypt_version;
use byok_core::envelope;
use byok_core::Vendor;
use pgrx::prelude::*;
use pgrx::Uuid;

/// The ciphertext of key `key_id` re-encrypted under the primary master
/// key version, still bound to the same key id, workspace and vendor; NULL
/// when it already is under the primary. Raises what `_open` raises
/// (XX001 tampered, 55000 version missing, different or retired).
#[pg_extern(volatile, name = "_rewrap")]
#[search_path(pg_catalog, pg_temp)]
fn rewrap(
    key_id: Option<Uuid>,
    workspace_id: Option<Uuid>,
    vendor: Option<&str>,
    ciphertext: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let key_id = required(key_id, "key_id");
    let workspace_id = required(workspace_id, "workspace_id");
    let vendor = Vendor::parse(required(vendor, "vendor")).or_raise();
    let blob = required(ciphertext, "ciphertext");
    let ring = match envelope::header_version(blob) {
        Ok(version) => keyring_holding(version),
        Err(_) => keyring(),
    };
    envelope::rewrap(
        &ring.or_raise(),
        min_decrypt_version(),
        &aad(&key_id, &workspace_id, vendor),
        blob,
    )
    .or_raise()
}

/// The master key version recorded in a ciphertext's header; NULL for NULL
/// or for bytes that are not a pg_byok envelope (too short, unknown
/// format), so that one damaged row cannot break `byok.key_versions`.
#[pg_extern(immutable, parallel_safe, name = "_ciphertext_version")]
#[search_path(pg_catalog, pg_temp)]
fn ciphertext_version(ciphertext: Option<&[u8]>) -> Option<i64> {
    envelope::header_version(ciphertext?).ok().map(i64::from)
}

/// The master key versions this backend holds (after any reload) and which
/// one encrypts; no rows when no keyring is loaded, so the view built on it
/// still shows what the stored keys need.
#[pg_extern(volatile, name = "_loaded_key_versions")]
#[search_path(pg_catalog, pg_temp)]
fn loaded_key_versions() -> TableIterator<'static, (name!(version, i64), name!(is_primary, bool))> {
    let rows: Vec<(i64, bool)> = match keyring() {
        Ok(ring) => {
            let primary = ring.primary_version();
            ring.versions()
                .into_iter()
                .map(|v| (i64::from(v), v == primary))
                .collect()
        }
        Err(_) => Vec::new(),
    };
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::tests_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn rewrap_under_the_primary_is_a_no_op_and_version_is_read() {
        let key = anthropic_key('r');
        add("anthropic", &key);
        let (version, rewrapped) = Spi::get_two::<i64, bool>(
            "SELECT byok._ciphertext_version(ciphertext),
                    byok._rewrap(id, workspace_id, vendor, ciphertext) IS NULL
               FROM byok.keys",
        )
        .unwrap();
        assert_eq!((version, rewrapped), (Some(1), Some(true)));
        assert_eq!(
            Spi::get_one::<i64>("SELECT byok._ciphertext_version('\\x0100'::bytea)").unwrap(),
            None
        );
    }
}
