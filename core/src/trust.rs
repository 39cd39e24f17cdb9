//! Which root of trust serves which keys: the rows of
//! `byok.master_key_status()`. A key is protected either by a version of
//! pg_byok's master key (its envelope's header names the version) or by
//! Supabase Vault's root key (`vault.getkey_script`); an operator rotating,
//! retiring or moving keys needs to see both, with the live keys each one
//! serves and which one new keys go to.

use crate::storage::Storage;
use std::collections::BTreeMap;

/// `root_of_trust` of a master key version's row.
pub const MASTER_KEY: &str = "pg_byok master key";
/// `root_of_trust` of Vault's row.
pub const VAULT_ROOT_KEY: &str = "Supabase Vault root key";
/// `source` of Vault's row: where Vault reads its root key at server start.
pub const VAULT_SOURCE: &str = "vault.getkey_script";
/// `source` of a version live keys were sealed with that this backend's
/// keyring does not hold (or of envelopes whose header is unreadable).
pub const NOT_LOADED: &str = "not loaded";

/// The keyring this backend holds: its versions, the primary, and where it
/// came from (`file` or `environment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<'a> {
    pub versions: Vec<u32>,
    pub primary: u32,
    pub source: &'a str,
}

/// Live keys (not invalid or revoked), by where they are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveKeys {
    /// Natively stored keys per envelope version (None: unreadable header).
    pub native: BTreeMap<Option<u32>, i64>,
    /// Keys stored in Supabase Vault.
    pub vault: i64,
}

/// One row of `byok.master_key_status()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRow {
    /// The master key version; None on Vault's row and for unreadable envelopes.
    pub version: Option<u32>,
    /// The version that seals new envelopes (never Vault's row).
    pub is_primary: bool,
    pub source: String,
    pub root_of_trust: &'static str,
    pub live_keys: i64,
    /// New keys are protected by this row's root of trust (byok.storage).
    pub stores_new_keys: bool,
}

/// The rows, in order: every loaded version (ascending), then versions live
/// keys need that are not loaded, then Vault's row where Vault holds live
/// keys or new keys go there.
pub fn rows(loaded: Option<&Loaded<'_>>, live: &LiveKeys, new_keys: Storage) -> Vec<TrustRow> {
    let mut out = Vec::new();
    let mut versions: Vec<u32> = loaded.map(|l| l.versions.clone()).unwrap_or_default();
    versions.sort_unstable();
    versions.dedup();
    for &v in &versions {
        let is_primary = loaded.is_some_and(|l| l.primary == v);
        out.push(TrustRow {
            version: Some(v),
            is_primary,
            source: loaded.map_or(NOT_LOADED, |l| l.source).to_string(),
            root_of_trust: MASTER_KEY,
            live_keys: live.native.get(&Some(v)).copied().unwrap_or(0),
            stores_new_keys: is_primary && new_keys == Storage::Native,
        });
    }
    for (&version, &n) in &live.native {
        if n > 0 && !version.is_some_and(|v| versions.contains(&v)) {
            out.push(TrustRow {
                version,
                is_primary: false,
                source: NOT_LOADED.to_string(),
                root_of_trust: MASTER_KEY,
                live_keys: n,
                stores_new_keys: false,
            });
        }
    }
    if live.vault > 0 || new_keys == Storage::Vault {
        out.push(TrustRow {
            version: None,
            is_primary: false,
            source: VAULT_SOURCE.to_string(),
            root_of_trust: VAULT_ROOT_KEY,
            live_keys: live.vault,
            stores_new_keys: new_keys == Storage::Vault,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(versions: &[u32], primary: u32) -> Loaded<'static> {
        Loaded {
            versions: versions.to_vec(),
            primary,
            source: "file",
        }
    }

    #[test]
    fn native_keys_are_counted_per_loaded_version() {
        let live = LiveKeys {
            native: BTreeMap::from([(Some(1), 3), (Some(2), 5)]),
            vault: 0,
        };
        let rows = rows(Some(&ring(&[2, 1], 2)), &live, Storage::Native);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.version, r.is_primary, r.live_keys, r.stores_new_keys))
            .collect();
        assert_eq!(
            got,
            vec![(Some(1), false, 3, false), (Some(2), true, 5, true)]
        );
        assert!(rows
            .iter()
            .all(|r| r.root_of_trust == MASTER_KEY && r.source == "file"));
    }

    #[test]
    fn a_version_keys_need_but_the_keyring_lacks_is_shown_as_not_loaded() {
        let live = LiveKeys {
            native: BTreeMap::from([(Some(1), 2), (None, 1), (Some(3), 0)]),
            vault: 0,
        };
        let rows = rows(Some(&ring(&[2], 2)), &live, Storage::Native);
        let missing: Vec<_> = rows
            .iter()
            .filter(|r| r.source == NOT_LOADED)
            .map(|r| (r.version, r.live_keys))
            .collect();
        assert_eq!(missing, vec![(None, 1), (Some(1), 2)]);
    }

    #[test]
    fn vault_has_a_row_when_it_holds_keys_or_takes_new_ones() {
        let none = LiveKeys::default();
        assert!(rows(Some(&ring(&[1], 1)), &none, Storage::Native).len() == 1);
        let to_vault = rows(None, &none, Storage::Vault);
        assert_eq!(
            to_vault,
            vec![TrustRow {
                version: None,
                is_primary: false,
                source: VAULT_SOURCE.to_string(),
                root_of_trust: VAULT_ROOT_KEY,
                live_keys: 0,
                stores_new_keys: true,
            }]
        );
        let both = LiveKeys {
            native: BTreeMap::from([(Some(1), 4)]),
            vault: 6,
        };
        let rows = rows(Some(&ring(&[1], 1)), &both, Storage::Native);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].root_of_trust, rows[1].live_keys),
            (VAULT_ROOT_KEY, 6)
        );
        assert!(rows[0].stores_new_keys && !rows[1].stores_new_keys);
    }

    proptest! {
        /// Every live key is counted exactly once, exactly one row takes new
        /// keys when their root of trust is present, and only a loaded
        /// primary is primary.
        #[test]
        fn every_live_key_is_counted_once(
            loaded in proptest::collection::vec(1u32..6, 0..4),
            needed in proptest::collection::btree_map(proptest::option::of(1u32..8), 0i64..50, 0..5),
            vault in 0i64..50,
            to_vault in any::<bool>(),
        ) {
            let ring = (!loaded.is_empty()).then(|| ring(&loaded, *loaded.iter().max().unwrap()));
            let live = LiveKeys { native: needed.clone(), vault };
            let new_keys = if to_vault { Storage::Vault } else { Storage::Native };
            let rows = rows(ring.as_ref(), &live, new_keys);
            let total: i64 = rows.iter().map(|r| r.live_keys).sum();
            prop_assert_eq!(total, needed.values().sum::<i64>() + vault);
            let takers = rows.iter().filter(|r| r.stores_new_keys).count();
            prop_assert_eq!(takers, usize::from(to_vault || ring.is_some()));
            prop_assert!(rows.iter().filter(|r| r.is_primary).count() <= 1);
            prop_assert!(rows.iter().all(|r| !r.is_primary || r.source != NOT_LOADED));
        }
    }
}
