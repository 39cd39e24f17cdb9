//! Where a key's ciphertext lives: pg_byok's own envelope (`native`) or a
//! Supabase Vault secret (`vault`), and the rules of the Vault backend that
//! need no database: the secret's name, which setting picks which storage,
//! whether Vault is preloaded, and what Vault's errors mean.
//!
//! Vault 0.3 encrypts with a root key its library reads at server start
//! (`vault.getkey_script`), and only when it is in
//! `shared_preload_libraries`; loaded later, every encrypt and decrypt fails
//! with "no server secret key defined". A wrong root key and a tampered
//! secret both come out of Vault as "invalid ciphertext"; pg_byok tells them
//! apart with a check secret of its own ([`ROOT_CHECK_NAME`]) encrypted under
//! the root key at first use: if that one does not open either, the root key
//! changed.

use crate::error::CoreError;

/// Where a key's ciphertext is kept (the `storage` column of byok.keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// pg_byok's envelope in `byok.keys.ciphertext`, under the keyring.
    Native,
    /// A row of `vault.secrets`, under Vault's root key.
    Vault,
}

impl Storage {
    /// The name stored in byok.keys and accepted by byok.migrate_storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::Native => "native",
            Storage::Vault => "vault",
        }
    }
}

/// The value of the `byok.storage` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageSetting {
    Native,
    Vault,
    /// Vault where supabase_vault is installed in the database and
    /// preloaded (so it has a root key), native elsewhere.
    Auto,
}

/// What is known about Supabase Vault in this server and database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaultPresence {
    /// `supabase_vault` is in pg_extension of this database.
    pub installed: bool,
    /// `supabase_vault` is in shared_preload_libraries.
    pub preloaded: bool,
}

/// The storage new keys go to. `auto` never picks a Vault that cannot
/// encrypt (not installed here, or without its root key); an explicit
/// `vault` is kept, so that its use fails with the reason.
pub fn resolve(setting: StorageSetting, vault: VaultPresence) -> Storage {
    match setting {
        StorageSetting::Native => Storage::Native,
        StorageSetting::Vault => Storage::Vault,
        StorageSetting::Auto if vault.installed && vault.preloaded => Storage::Vault,
        StorageSetting::Auto => Storage::Native,
    }
}

/// The Vault library's name, as installed by its Makefile.
pub const VAULT_LIBRARY: &str = "supabase_vault";

/// Whether `shared_preload_libraries` (its raw text) names `library`.
/// Entries are comma-separated, may be double-quoted, and may be a path
/// (`$libdir/supabase_vault`) or carry the `.so` suffix; Postgres loads
/// each the same way.
pub fn preloads(shared_preload_libraries: &str, library: &str) -> bool {
    shared_preload_libraries.split(',').any(|entry| {
        let entry = entry.trim().trim_matches('"').trim();
        let base = entry.rsplit('/').next().unwrap_or(entry);
        base.strip_suffix(".so").unwrap_or(base) == library
    })
}

/// The Vault secret name of key `key_id` of workspace `workspace_id`:
/// `byok/<workspace_id>/<key_id>`, both uuids in Postgres's spelling. Read
/// back on every use: a mapping that points at a secret of another name is
/// refused.
pub fn secret_name(workspace_id: &[u8; 16], key_id: &[u8; 16]) -> String {
    format!("byok/{}/{}", uuid_text(workspace_id), uuid_text(key_id))
}

/// A uuid as Postgres prints it: lowercase, hyphenated 8-4-4-4-12. Vault's
/// additional data is the secret id in this spelling (`id::text`).
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Name of pg_byok's root key check secret in `vault.secrets`.
pub const ROOT_CHECK_NAME: &str = "byok/root-key-check";

/// The check secret's known plaintext (not a secret: it proves only which
/// root key encrypted it).
pub const ROOT_CHECK_TEXT: &str = "pg_byok: supabase_vault root key check v1";

/// Vault's own words when it has no root key (pgsodium_derive_helper).
const NO_ROOT_KEY: &str = "no server secret key defined";

/// What a failed Vault encrypt or decrypt means, from Vault's message
/// (Vault raises every failure as SQLSTATE 22000, so only the text differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultFailure {
    /// The library was loaded after server start and holds no root key.
    NoRootKey,
    /// The ciphertext did not authenticate, or is not base64 / too short.
    Undecryptable,
}

/// The SQLSTATEs of Vault's failures that pg_byok catches and raises again
/// as its own: Vault's (22000) and `decode`'s for a secret that is not
/// base64 (22023). Anything else (a cancel, out of memory) passes through.
pub const VAULT_FAILURE_SQLSTATES: &[&str] = &["22000", "22023"];

/// A packed error code (Postgres's MAKE_SQLSTATE: six bits a character,
/// first character lowest) as its five-character SQLSTATE.
pub fn sqlstate_text(code: i32) -> String {
    (0..5)
        .map(|i| char::from(b'0' + ((code >> (6 * i)) & 0x3F) as u8))
        .collect()
}

pub fn classify_vault_error(message: &str) -> VaultFailure {
    if message.contains(NO_ROOT_KEY) {
        VaultFailure::NoRootKey
    } else {
        VaultFailure::Undecryptable
    }
}

/// The error for a problem code of `byok._vault_problem()` (sql/vault.sql):
/// `not_installed`, `too_old:<version>` or `unsafe:<object>`.
pub fn problem_error(code: &str) -> CoreError {
    let shown = |s: &str| s.chars().take(80).collect::<String>();
    match code.split_once(':') {
        Some(("too_old", version)) => CoreError::VaultTooOld {
            version: shown(version),
        },
        Some(("unsafe", object)) => CoreError::VaultUnsafe {
            object: shown(object),
        },
        _ => CoreError::VaultNotInstalled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_vault_only_where_it_can_encrypt() {
        let p = |installed, preloaded| VaultPresence {
            installed,
            preloaded,
        };
        assert_eq!(resolve(StorageSetting::Auto, p(true, true)), Storage::Vault);
        assert_eq!(
            resolve(StorageSetting::Auto, p(true, false)),
            Storage::Native
        );
        assert_eq!(
            resolve(StorageSetting::Auto, p(false, true)),
            Storage::Native
        );
        assert_eq!(
            resolve(StorageSetting::Vault, p(false, false)),
            Storage::Vault
        );
        assert_eq!(
            resolve(StorageSetting::Native, p(true, true)),
            Storage::Native
        );
    }

    #[test]
    fn preload_list_spellings() {
        assert!(preloads("pg_byok,supabase_vault", VAULT_LIBRARY));
        assert!(preloads(" pg_byok , \"supabase_vault\" ", VAULT_LIBRARY));
        assert!(preloads("$libdir/supabase_vault.so", VAULT_LIBRARY));
        assert!(!preloads("pg_byok", VAULT_LIBRARY));
        assert!(!preloads("", VAULT_LIBRARY));
        assert!(!preloads(
            "supabase_vault_x,my_supabase_vault",
            VAULT_LIBRARY
        ));
    }

    #[test]
    fn secret_names_spell_uuids_like_postgres() {
        let ws = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        let key = [0xff; 16];
        assert_eq!(
            secret_name(&ws, &key),
            "byok/12345678-9abc-def0-0123-456789abcdef/ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
    }

    #[test]
    fn vault_messages_are_told_apart() {
        assert_eq!(
            classify_vault_error(
                "pgsodium_derive_helper: pgsodium_derive: no server secret key defined."
            ),
            VaultFailure::NoRootKey
        );
        assert_eq!(
            classify_vault_error("pgsodium_crypto_aead_det_decrypt_by_id: invalid ciphertext"),
            VaultFailure::Undecryptable
        );
        assert_eq!(
            classify_vault_error("invalid symbol \"!\" found while decoding base64 sequence"),
            VaultFailure::Undecryptable
        );
    }

    #[test]
    fn packed_error_codes_unpack_to_their_sqlstate() {
        // MAKE_SQLSTATE('2','2','0','0','0') and ('X','X','0','0','1').
        let pack = |s: &str| {
            s.bytes()
                .enumerate()
                .map(|(i, b)| i32::from((b - b'0') & 0x3F) << (6 * i))
                .sum::<i32>()
        };
        for state in ["22000", "22023", "XX001", "57014", "P0002"] {
            assert_eq!(sqlstate_text(pack(state)), state);
        }
        assert_eq!(pack("22000"), 130);
    }

    #[test]
    fn problem_codes_map_to_errors() {
        assert!(matches!(
            problem_error("not_installed"),
            CoreError::VaultNotInstalled
        ));
        assert!(
            matches!(problem_error("too_old:0.2.8"), CoreError::VaultTooOld { version } if version == "0.2.8")
        );
        assert!(
            matches!(problem_error("unsafe:table vault.secrets"), CoreError::VaultUnsafe { object } if object == "table vault.secrets")
        );
    }
}
