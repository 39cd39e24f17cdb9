//! SQL-callable sealing and opening of vendor keys.
//!
//! These are the only functions that see a plaintext key inside Postgres.
//! They live in schema `byok` under `_`-prefixed names, are revoked from
//! PUBLIC (sql/grants.sql) and are called only by the extension's own
//! SECURITY DEFINER functions. Normalisation and encryption happen here,
//! before any row exists, so the plaintext never reaches a table or the WAL.

use crate::error::{spi_failed, ExtError, OrRaise};
use crate::master_key::{keyring, keyring_holding};
use crate::settings::min_decrypt_version;
use crate::text::TextArg;
use byok_core::envelope::{self, Aad};
use byok_core::keyring::Keyring;
use byok_core::{keys, mask, trust, CoreError, Vendor};
use pgrx::prelude::*;
use pgrx::Uuid;
use std::sync::Arc;

pub(crate) fn required<T>(value: Option<T>, what: &'static str) -> T {
    value.unwrap_or_else(|| ExtError::from(CoreError::NullArgument { name: what }).raise())
}

pub(crate) fn aad(key_id: &Uuid, workspace_id: &Uuid, vendor: Vendor) -> Aad {
    Aad {
        key_id: *key_id.as_bytes(),
        workspace_id: *workspace_id.as_bytes(),
        vendor,
    }
}

/// Canonical vendor name ('anthropic' | 'openai'), or 22023.
#[pg_extern(immutable, parallel_safe, name = "_vendor")]
#[search_path(pg_catalog, pg_temp)]
fn vendor_name(vendor: Option<TextArg<'_>>) -> &'static str {
    Vendor::parse(required(vendor, "vendor").utf8("vendor"))
        .or_raise()
        .as_str()
}

/// Normalise, check and encrypt a key for a new row whose id is chosen here.
#[pg_extern(volatile, name = "_seal")]
#[search_path(pg_catalog, pg_temp)]
fn seal(
    workspace_id: Option<Uuid>,
    vendor: Option<TextArg<'_>>,
    api_key: Option<TextArg<'_>>,
) -> TableIterator<
    'static,
    (
        name!(id, Uuid),
        name!(vendor, String),
        name!(masked, String),
        name!(ciphertext, Vec<u8>),
    ),
> {
    let workspace_id = required(workspace_id, "workspace_id");
    let vendor = Vendor::parse(required(vendor, "vendor").utf8("vendor")).or_raise();
    let key = keys::normalize(vendor, required(api_key, "api_key").utf8("api_key")).or_raise();
    let id = new_uuid();
    let blob = seal_key(&id, &workspace_id, vendor, key.as_bytes());
    let row = (id, vendor.as_str().to_string(), mask::mask(&key), blob);
    TableIterator::once(row)
}

/// Decrypt the ciphertext of key `key_id`. XX001 when it fails
/// authentication (tampered, or moved to another row), 55000 when the master
/// key version it needs is absent, different or retired
/// (`byok.min_decrypt_version`).
#[pg_extern(volatile, name = "_open")]
#[search_path(pg_catalog, pg_temp)]
fn open(
    key_id: Option<Uuid>,
    workspace_id: Option<Uuid>,
    vendor: Option<TextArg<'_>>,
    ciphertext: Option<&[u8]>,
) -> String {
    let key_id = required(key_id, "key_id");
    let workspace_id = required(workspace_id, "workspace_id");
    let vendor = Vendor::parse(required(vendor, "vendor").utf8("vendor")).or_raise();
    let blob = required(ciphertext, "ciphertext");
    open_key(&key_id, &workspace_id, vendor, blob)
}

/// A fresh uuid (a key id, a Vault secret id): version 7, time-ordered
/// with 74 random bits, so that new ids land at the right edge of the
/// primary-key B-trees instead of splitting pages all over them (WAL per
/// stored key, BENCHMARKS.md). An id is no secret and grants nothing; the
/// time it carries is the key's created_at, shown beside it anyway.
pub(crate) fn new_uuid() -> Uuid {
    Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes())
}

/// `key` sealed under the primary master key for row `id`; 55000 without a
/// usable keyring.
pub(crate) fn seal_key(id: &Uuid, workspace_id: &Uuid, vendor: Vendor, key: &[u8]) -> Vec<u8> {
    envelope::seal_unretired(
        &keyring().or_raise(),
        min_decrypt_version(),
        &aad(id, workspace_id, vendor),
        key,
    )
    .or_raise()
}

/// The plaintext of a natively stored key (see `_open`).
pub(crate) fn open_key(key_id: &Uuid, workspace_id: &Uuid, vendor: Vendor, blob: &[u8]) -> String {
    // The blob's own version: a newer one than this backend holds makes it
    // re-read the keyring file (see master_key::keyring_holding).
    let ring = match envelope::header_version(blob) {
        Ok(version) => keyring_holding(version),
        Err(_) => keyring(),
    };
    let plain = envelope::open_unretired(
        &ring.or_raise(),
        min_decrypt_version(),
        &aad(key_id, workspace_id, vendor),
        blob,
    )
    .or_raise();
    // The plaintext was produced by `normalize`, so it is ASCII; a failure here
    // means the bytes are not ours, which is the same as tampering.
    match std::str::from_utf8(&plain) {
        Ok(s) => s.to_string(),
        Err(_) => ExtError::Core(CoreError::Tampered {
            reason: "not valid UTF-8",
        })
        .raise(),
    }
}

/// The keyring, or None when none is loaded and none is needed (every
/// live key and every new one is in Supabase Vault); 55000 otherwise.
fn needed_keyring() -> Option<Arc<Keyring>> {
    match keyring() {
        Ok(ring) => Some(ring),
        Err(ExtError::NoMasterKey | ExtError::Core(CoreError::NoMasterKey))
            if !crate::vault::keyring_needed() =>
        {
            None
        }
        Err(e) => e.raise(),
    }
}

/// Fails (55000) when a keyring is needed and none is usable: what
/// `byok.claim_jobs` checks before it hands out work, without counting keys.
#[pg_extern(volatile, name = "_require_keyring")]
#[search_path(pg_catalog, pg_temp)]
fn require_keyring() {
    needed_keyring();
}

/// Live keys per storage and envelope version.
fn live_keys() -> trust::LiveKeys {
    let mut live = trust::LiveKeys::default();
    Spi::connect(|c| {
        let table = c.select(
            "SELECT k.storage, byok._ciphertext_version(k.ciphertext), count(*)
               FROM byok.keys k WHERE k.status NOT IN ('invalid', 'revoked') GROUP BY 1, 2",
            None,
            &[],
        )?;
        for row in table {
            let storage = row.get::<String>(1)?.unwrap_or_default();
            let version = row.get::<i64>(2)?.and_then(|v| u32::try_from(v).ok());
            let n = row.get::<i64>(3)?.unwrap_or(0);
            if storage == "vault" {
                live.vault += n;
            } else {
                *live.native.entry(version).or_insert(0) += n;
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e: pgrx::spi::Error| spi_failed(e));
    live
}

/// Which root of trust serves which keys: each master key version this
/// backend holds and where it came from, the live keys it protects, versions
/// live keys need that are not loaded, and Supabase Vault's root key where
/// Vault holds keys or takes new ones (core's trust.rs). No key material,
/// not even a fingerprint: it tells an operator whether a restart picked up
/// the keyring they meant and what rotating or moving keys has left to do.
/// SECURITY DEFINER: the envelope versions are read from the ciphertext
/// column, which is granted to no role; it returns counts only.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn master_key_status() -> TableIterator<
    'static,
    (
        name!(version, Option<i64>),
        name!(is_primary, bool),
        name!(source, String),
        name!(root_of_trust, String),
        name!(live_keys, i64),
        name!(stores_new_keys, bool),
    ),
> {
    let ring = needed_keyring();
    let loaded = ring.as_ref().map(|ring| trust::Loaded {
        versions: ring.versions(),
        primary: ring.primary_version(),
        source: crate::master_key::source().unwrap_or("unknown"),
    });
    let rows = trust::rows(
        loaded.as_ref(),
        &live_keys(),
        crate::vault::storage_for_new_keys(),
    );
    TableIterator::new(rows.into_iter().map(|r| {
        (
            r.version.map(i64::from),
            r.is_primary,
            r.source,
            r.root_of_trust.to_string(),
            r.live_keys,
            r.stores_new_keys,
        )
    }))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn seal_then_open_round_trips() {
        let key = crate::tests_support::anthropic_key('a');
        let opened = Spi::get_one::<String>(&format!(
            "SELECT byok._open(s.id, '00000000-0000-0000-0000-00000000000a', s.vendor, s.ciphertext)
               FROM byok._seal('00000000-0000-0000-0000-00000000000a', 'Anthropic', ' {key}\r\n') s"
        ));
        assert_eq!(opened.unwrap().as_deref(), Some(key.as_str()));
    }

    #[pg_test]
    fn vendor_gemini_is_refused() {
        let err = crate::tests_support::sqlstate_of("SELECT byok._vendor('gemini')");
        assert_eq!(err.as_deref(), Some("22023"));
    }

    #[pg_test]
    fn ciphertext_moved_to_another_workspace_fails() {
        let key = crate::tests_support::anthropic_key('b');
        let err = crate::tests_support::sqlstate_of(&format!(
            "SELECT byok._open(s.id, '00000000-0000-0000-0000-0000000000bb', s.vendor, s.ciphertext)
               FROM byok._seal('00000000-0000-0000-0000-00000000000b', 'anthropic', '{key}') s"
        ));
        assert_eq!(err.as_deref(), Some("XX001"));
    }

    #[pg_test]
    fn master_key_status_lists_versions_without_key_material() {
        let (version, primary, source) = Spi::get_three::<i64, bool, String>(
            "SELECT version, is_primary, source FROM byok.master_key_status()",
        )
        .unwrap();
        assert_eq!(
            (version, primary, source.as_deref()),
            (Some(1), Some(true), Some("file"))
        );
    }

    #[pg_test]
    fn master_key_status_counts_the_live_keys_each_version_serves() {
        crate::tests_support::add("anthropic", &crate::tests_support::anthropic_key('m'));
        let gone = crate::tests_support::add("openai", &crate::tests_support::openai_key('m'));
        Spi::run(&format!("SELECT byok.revoke_key('{gone}')")).unwrap();
        let (root, live, new_keys) = Spi::get_three::<String, i64, bool>(
            "SELECT root_of_trust, live_keys, stores_new_keys FROM byok.master_key_status()",
        )
        .unwrap();
        assert_eq!(
            (root.as_deref(), live, new_keys),
            (Some("pg_byok master key"), Some(1), Some(true))
        );
    }
}
