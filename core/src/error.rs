//! The one error type of byok-core.
//!
//! Every message, hint and detail here reaches end users (through SQLSTATE
//! errors in Postgres and through sidecar logs), so none of them may carry key
//! material: variants hold only vendors, lengths, line numbers, versions and
//! fixed reasons. The single exception that holds user text,
//! [`CoreError::UnknownVendor`], stores an already redacted, truncated copy.

//!
//! A leaf module: it uses only the [`Vendor`] enum (itself a leaf), so every
//! other module can return `CoreError` without an import cycle.

use crate::vendor::Vendor;

/// Everything that can go wrong in byok-core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("unknown vendor \"{shown}\"")]
    UnknownVendor {
        /// Redacted, at most 20 characters; build it with
        /// [`CoreError::unknown_vendor`] (in `vendor_name.rs`).
        shown: String,
    },
    #[error("the API key is empty")]
    EmptyKey,
    #[error("the API key is {len} bytes long; no API key is longer than {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("the API key contains whitespace inside it")]
    InnerWhitespace,
    #[error("this is not an {} API key: {}", vendor.display_name(), expected_shape(*vendor))]
    NotAKey { vendor: Vendor },
    #[error("this looks like an {} admin key ({}…); pg_byok stores only API keys", vendor.display_name(), admin_prefix(*vendor))]
    AdminKey { vendor: Vendor },
    #[error("this looks like an Anthropic OAuth token (sk-ant-oat01-… or sk-ant-ort01-…), not an API key")]
    OAuthToken,
    #[error("this looks like an {} API key, but the vendor given is {}", found.display_name(), expected.display_name())]
    WrongVendor { expected: Vendor, found: Vendor },
    #[error(
        "the stored key failed authentication: its ciphertext was altered or moved to another row"
    )]
    Tampered { reason: &'static str },
    #[error("the stored key failed authentication: its Supabase Vault secret {reason}")]
    VaultTampered { reason: &'static str },
    #[error("master key version {version} is not loaded, and this key was encrypted with it")]
    MasterKeyMissing { version: u32 },
    #[error("the master key loaded as version {version} is not the one that encrypted this key")]
    MasterKeyMismatch { version: u32 },
    #[error("master key version {version} is retired (byok.min_decrypt_version is {min}); keys encrypted with it no longer open")]
    MasterKeyRetired { version: u32, min: u32 },
    #[error("no master key is configured")]
    NoMasterKey,
    #[error("{}", keyring_message(*line, reason))]
    Keyring { line: usize, reason: &'static str },
    #[error("BYOK_MASTER_KEY is unusable: {reason}")]
    BadEnvKey { reason: &'static str },
    #[error("Supabase Vault (extension supabase_vault) is not installed in this database")]
    VaultNotInstalled,
    #[error("supabase_vault is not in shared_preload_libraries, so Supabase Vault has no root key in this server")]
    VaultNotPreloaded,
    /// `version` is the catalog's extversion, at most 80 characters.
    #[error("supabase_vault {version} is too old: pg_byok needs Vault 0.3.0 or later (vault._crypto_aead_det_encrypt, _decrypt and _noncegen)")]
    VaultTooOld { version: String },
    /// `object` names a catalog object (e.g. "table vault.secrets").
    #[error("Supabase Vault's {object} is not the one supabase_vault installed (a superuser-owned member of the extension, without triggers or policies); pg_byok will not use it")]
    VaultUnsafe { object: String },
    #[error("Supabase Vault has no root key loaded in this server")]
    VaultRootKeyMissing,
    #[error("Supabase Vault's root key is not the one this database's Vault secrets were encrypted with")]
    VaultWrongRootKey,
    /// For callers (the extension) that receive SQL NULL where a value is
    /// required; lives here so one enum covers every SQLSTATE we raise.
    #[error("{name} must not be NULL")]
    NullArgument { name: &'static str },
}

/// The class of an error; the extension maps each to one SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// SQLSTATE 22023 (invalid_parameter_value).
    InvalidArgument,
    /// SQLSTATE 22004 (null_value_not_allowed).
    NullValue,
    /// SQLSTATE XX001 (data_corrupted).
    Tampered,
    /// SQLSTATE 55000 (object_not_in_prerequisite_state).
    MasterKeyUnavailable,
    /// SQLSTATE 55000 too: Supabase Vault cannot serve (missing, too old,
    /// not preloaded, unsafe, another root key); the keys are kept.
    VaultUnavailable,
}

impl CoreError {
    /// The SQLSTATE class of this error.
    pub fn kind(&self) -> ErrorKind {
        use CoreError::*;
        match self {
            UnknownVendor { .. }
            | EmptyKey
            | KeyTooLong { .. }
            | InnerWhitespace
            | NotAKey { .. }
            | AdminKey { .. }
            | OAuthToken
            | WrongVendor { .. } => ErrorKind::InvalidArgument,
            NullArgument { .. } => ErrorKind::NullValue,
            Tampered { .. } | VaultTampered { .. } => ErrorKind::Tampered,
            MasterKeyMissing { .. }
            | MasterKeyMismatch { .. }
            | MasterKeyRetired { .. }
            | NoMasterKey
            | Keyring { .. }
            | BadEnvKey { .. } => ErrorKind::MasterKeyUnavailable,
            VaultNotInstalled
            | VaultNotPreloaded
            | VaultTooOld { .. }
            | VaultUnsafe { .. }
            | VaultRootKeyMissing
            | VaultWrongRootKey => ErrorKind::VaultUnavailable,
        }
    }

    /// What the user should do next.
    pub fn hint(&self) -> Option<String> {
        use CoreError::*;
        let text = match self {
            UnknownVendor { .. } => "Use 'anthropic' or 'openai'.".to_owned(),
            EmptyKey => "Paste the whole API key from the vendor's console.".to_owned(),
            KeyTooLong { .. } => "Paste only the API key, not the text around it.".to_owned(),
            InnerWhitespace => "Copy the key again in one piece; spaces or line breaks inside \
                 a key come from wrapped text or a partial copy."
                .to_owned(),
            NotAKey { vendor } => format!(
                "Copy the key again from {}; make sure it was not cut off.",
                console(*vendor)
            ),
            AdminKey { vendor } => format!(
                "Create an API key in {} and paste that instead.",
                console(*vendor)
            ),
            OAuthToken => format!(
                "Create an API key in {} and paste that instead; OAuth tokens from a \
                 Claude sign-in expire and are not accepted by the API with x-api-key.",
                console(Vendor::Anthropic)
            ),
            WrongVendor { found, .. } => format!(
                "Pass vendor => '{}', or paste a key of the vendor you meant.",
                found.as_str()
            ),
            Tampered { .. } => {
                "Add the key again, and check who can write to byok.keys.".to_owned()
            }
            VaultTampered { .. } => "Add the key again, and check who can write to vault.secrets \
                 and byok.keys (a secret swapped between keys is refused, never served)."
                .to_owned(),
            MasterKeyMissing { version } => format!(
                "Add version {version} of the master key to the keyring file named by \
                 byok.master_key_file (keep old versions until every key is rewrapped), \
                 then reload the server (SELECT pg_reload_conf())."
            ),
            MasterKeyMismatch { version } => format!(
                "Restore the original keyring file (byok.master_key_file) or BYOK_MASTER_KEY \
                 that held version {version}, then reload the server (SELECT pg_reload_conf())."
            ),
            MasterKeyRetired { version, .. } => format!(
                "Set byok.min_decrypt_version to {version} or lower and reload \
                 (SELECT pg_reload_conf()), run CALL byok.rewrap() to re-encrypt these keys \
                 under the primary version, then raise the setting again."
            ),
            NoMasterKey => "Set byok.master_key_file to a keyring file readable only by the \
                 server's OS user, or set BYOK_MASTER_KEY (64 hex characters) in the server's \
                 environment, then restart Postgres."
                .to_owned(),
            Keyring { .. } => "Each line must read '<version> <64 hex characters>'; '#' starts \
                 a comment. Generate a key with: openssl rand -hex 32"
                .to_owned(),
            BadEnvKey { .. } => "Set BYOK_MASTER_KEY to 64 hex characters, e.g. the output of: \
                 openssl rand -hex 32"
                .to_owned(),
            VaultNotInstalled => "Install Supabase Vault 0.3 or later (CREATE EXTENSION \
                 supabase_vault, with supabase_vault in shared_preload_libraries), or store keys \
                 natively: SET byok.storage = 'native'."
                .to_owned(),
            VaultNotPreloaded | VaultRootKeyMissing => "Add supabase_vault to \
                 shared_preload_libraries, give it its root key (vault.getkey_script names a \
                 program that prints 64 hex characters), and restart Postgres."
                .to_owned(),
            VaultTooOld { .. } => "Update it: ALTER EXTENSION supabase_vault UPDATE (0.3.0 or \
                 later), or store keys natively: SET byok.storage = 'native'."
                .to_owned(),
            VaultUnsafe { .. } => "Have a superuser reinstall supabase_vault (DROP EXTENSION \
                 supabase_vault; CREATE EXTENSION supabase_vault), or store keys natively; check \
                 who changed the vault schema."
                .to_owned(),
            VaultWrongRootKey => "This is Vault's 'invalid ciphertext' after a dump is restored \
                 on a server with another Vault root key: start the server with the original root \
                 key (the program named by vault.getkey_script). The keys are kept."
                .to_owned(),
            NullArgument { name } => format!("Pass a value for {name}."),
        };
        Some(text)
    }

    /// Extra context beyond message and hint; never key material.
    pub fn detail(&self) -> Option<String> {
        match self {
            CoreError::Tampered { reason } => Some(format!("check failed: {reason}")),
            CoreError::VaultWrongRootKey => Some(
                "pg_byok's root key check secret (byok/root-key-check in vault.secrets) does \
                 not decrypt either, so every Vault secret of this database is affected, not one"
                    .to_owned(),
            ),
            CoreError::MasterKeyMismatch { .. } => Some(
                "the fingerprint recorded in the ciphertext matches no key in the keyring"
                    .to_owned(),
            ),
            CoreError::WrongVendor { expected, .. } => Some(format!(
                "{}: {}",
                expected.display_name(),
                expected_shape(*expected)
            )),
            _ => None,
        }
    }
}

/// The accepted shape, stated the way a user can check it by eye.
fn expected_shape(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Anthropic => {
            "an Anthropic API key starts with sk-ant-api03- and is 108 characters long"
        }
        Vendor::OpenAi => {
            "an OpenAI API key starts with sk-proj- or sk-svcacct- (older keys: sk-) \
             and is about 164 characters long (51 for older keys)"
        }
    }
}

fn admin_prefix(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Anthropic => "sk-ant-admin01-",
        Vendor::OpenAi => "sk-admin-",
    }
}

fn console(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Anthropic => "the Anthropic console (Settings → API keys)",
        Vendor::OpenAi => "the OpenAI dashboard (API keys)",
    }
}

fn keyring_message(line: usize, reason: &str) -> String {
    if line == 0 {
        format!("keyring file: {reason}")
    } else {
        format!("keyring file, line {line}: {reason}")
    }
}
