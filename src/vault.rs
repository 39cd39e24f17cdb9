//! Supabase Vault as key storage (byok.storage = 'vault').
//!
//! A vault-stored key is a row of `vault.secrets` named
//! `byok/<workspace_id>/<key_id>`, encrypted with Vault's own functions the
//! way `vault.create_secret` would, except that the ciphertext row is
//! written directly: create_secret inserts the plaintext and then updates it,
//! which puts the plaintext in the WAL and in a dead tuple. The plaintext
//! travels only as an SPI parameter (never in a statement's text), from and
//! to these functions; SQL around them sees ids and ciphertexts.
//!
//! Before Vault is touched, `byok._vault_problem()` (sql/vault.sql) checks
//! that what answers to Vault's names is the real extension, owned by a
//! superuser: pg_byok runs with its owner's power and must never run code an
//! app role owns. Vault raises every failure as 22000; they are caught here
//! and raised again as pg_byok's errors (XX001 for a tampered or swapped
//! secret, 55000 when Vault cannot serve), with a hint. Once per backend the
//! root key is checked against pg_byok's check secret, which tells a wrong
//! root key (restored dump, other server) from a tampered secret.

use crate::error::{spi_failed, ExtError, OrRaise, OrRaiseSpi};
use crate::kept_plan::with_plan;
use crate::sealing::{new_uuid, open_key, required, seal_key};
use crate::settings::storage_setting;
use crate::text::TextArg;
use byok_core::storage::{self, Storage, VaultFailure, VaultPresence};
use byok_core::{keys, mask, CoreError, Vendor};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::PgBuiltInOids;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::Uuid;
use std::cell::{Cell, OnceCell};
use std::ffi::CStr;

thread_local! {
    /// The root key opened pg_byok's check secret in this backend. The root
    /// key is read once at server start, so one check per backend suffices.
    static ROOT_KEY_CHECKED: Cell<bool> = const { Cell::new(false) };
    /// `byok._vault_problem()` found nothing wrong and Vault is preloaded,
    /// and no catalog change that could alter that has reached this backend
    /// since. The check costs more than the Vault read it guards (≈0.7 ms
    /// against ≈0.2 ms), so use_key must not run it per call; instead every
    /// change that could make Vault's objects unsafe clears this flag:
    /// owners, languages and bodies of functions (pg_proc), roles losing
    /// superuser (pg_authid), extensions and schemas, and vault.secrets'
    /// relation cache entry (a trigger, rule, row-level security or owner
    /// change on it invalidates that entry).
    static VAULT_TRUSTED: Cell<bool> = const { Cell::new(false) };
    /// vault.secrets' oid when trust was last established: only its
    /// relation cache entry (or a reset of all of them) clears the trust,
    /// not every table's, which autovacuum and DDL elsewhere touch often.
    static SECRETS_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// `vault._crypto_aead_det_decrypt`'s oid when trust was last
    /// established, for the direct read (vault_read.rs); a change to any
    /// function clears the trust, and the next check looks it up again.
    static DECRYPT_FN: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// The read of a secret row, planned once per backend (kept_plan.rs).
    static READ_PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
    static CALLBACKS_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// A catalog change reached this backend: check Vault again before using it.
unsafe extern "C-unwind" fn distrust_on_syscache(
    _arg: pg_sys::Datum,
    _cache_id: std::ffi::c_int,
    _hash: u32,
) {
    VAULT_TRUSTED.set(false);
}

/// A relation's cache entry was invalidated: when it is vault.secrets'
/// (a trigger, rule, policy switch or owner change on it) or every
/// relation's (InvalidOid: a cache reset), check again.
unsafe extern "C-unwind" fn distrust_on_relcache(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || relid == SECRETS_RELID.get() {
        VAULT_TRUSTED.set(false);
    }
}

/// vault.secrets' oid, InvalidOid when there is no such table.
fn secrets_relid() -> pg_sys::Oid {
    // SAFETY: catalog lookups by name inside a transaction; missing_ok
    // gives InvalidOid for an absent schema, get_relname_relid for an
    // absent table.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"vault".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        pg_sys::get_relname_relid(c"secrets".as_ptr(), nsp)
    }
}

fn register_distrust_callbacks() {
    if CALLBACKS_REGISTERED.get() {
        return;
    }
    use pg_sys::SysCacheIdentifier::{AUTHOID, EXTENSIONOID, NAMESPACEOID, PROCOID};
    // SAFETY: registering invalidation callbacks is allowed at any time in a
    // backend; they are registered once per backend (Postgres keeps at most
    // 64 syscache and 10 relcache callbacks), are 'static functions, and
    // only clear a flag, so they cannot fail while invalidations are read.
    unsafe {
        for cache in [PROCOID, AUTHOID, EXTENSIONOID, NAMESPACEOID] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as std::ffi::c_int,
                Some(distrust_on_syscache),
                pg_sys::Datum::from(0),
            );
        }
        pg_sys::CacheRegisterRelcacheCallback(Some(distrust_on_relcache), pg_sys::Datum::from(0));
    }
    CALLBACKS_REGISTERED.set(true);
}

/// What vault.secrets' description says of pg_byok's rows.
const DESCRIPTION: &str = "pg_byok vendor key: written and removed by pg_byok only";

/// A secret row, encrypted with Vault's own functions exactly as its
/// decrypted_secrets view decrypts it: additional data = the row id as text,
/// key id 0, context 'pgsodium'. $4 is the plaintext, $5 the nonce.
const INSERT_SECRET: &str = "INSERT INTO vault.secrets (id, name, description, secret, nonce)
    VALUES ($1, $2, $3,
            pg_catalog.encode(vault._crypto_aead_det_encrypt($4,
                pg_catalog.convert_to($1::pg_catalog.text, 'utf8'), 0, 'pgsodium'::pg_catalog.bytea, $5),
                'base64'),
            $5)";

/// The secret's name, and its plaintext only when the name is the expected
/// one ($2): a swapped mapping never decrypts another tenant's key.
const READ_SECRET: &str = "SELECT s.name,
       CASE WHEN s.name = $2 THEN vault._crypto_aead_det_decrypt(
           pg_catalog.decode(s.secret, 'base64'), pg_catalog.convert_to(s.id::pg_catalog.text, 'utf8'),
           0, 'pgsodium'::pg_catalog.bytea, s.nonce) END
  FROM vault.secrets s WHERE s.id = $1";

/// The one value of a query that returns at most one row; None for no row.
fn at_most_one<T>(result: Result<Option<T>, pgrx::spi::Error>) -> Option<T> {
    match result {
        Ok(value) => value,
        Err(pgrx::spi::Error::InvalidPosition) => None,
        Err(e) => spi_failed(e),
    }
}

/// Run `f`, which calls Vault; Vault's errors (22000, and 22023 from a
/// secret that is not base64) come back classified instead of raised. The
/// caller raises its own error right away, so the aborted statement's state
/// is cleaned up by the transaction's abort.
fn vault_call<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, VaultFailure> {
    PgTryBuilder::new(|| Ok(f()))
        .catch_others(|e| match e {
            CaughtError::PostgresError(ref report)
                if storage::VAULT_FAILURE_SQLSTATES
                    .contains(&storage::sqlstate_text(report.sql_error_code() as i32).as_str()) =>
            {
                Err(storage::classify_vault_error(report.message()))
            }
            other => other.rethrow(),
        })
        .execute()
}

fn preloaded() -> bool {
    // SAFETY: a read of a postmaster-level setting's string, set before any
    // backend starts and never freed; NULL is checked.
    let raw = unsafe { pg_sys::shared_preload_libraries_string };
    if raw.is_null() {
        return false;
    }
    // SAFETY: non-NULL, NUL-terminated (a GUC string).
    let list = unsafe { CStr::from_ptr(raw) }.to_string_lossy();
    storage::preloads(&list, storage::VAULT_LIBRARY)
}

/// `byok._vault_problem()`: NULL when Vault may be used, else a code.
fn problem() -> Option<String> {
    Spi::get_one::<String>("SELECT byok._vault_problem()").or_raise_spi()
}

/// The oid of the decrypt function `byok._vault_problem()` just vouched for.
fn decrypt_fn() -> pg_sys::Oid {
    Spi::get_one::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regprocedure('vault._crypto_aead_det_decrypt(bytea, bytea, bigint, bytea, bytea)')::pg_catalog.oid",
    )
    .or_raise_spi()
    .unwrap_or(pg_sys::InvalidOid)
}

/// Vault is installed, new enough, genuine, preloaded, and its root key is
/// the one this database's secrets were encrypted with.
fn require_vault() -> Result<(), CoreError> {
    if !VAULT_TRUSTED.get() {
        register_distrust_callbacks();
        // Trusted before the check, not after: an invalidation read while
        // the check runs clears the flag again, so it is never left set on
        // the strength of a check that a concurrent change overtook. The
        // table's oid is taken first for the same reason.
        SECRETS_RELID.set(secrets_relid());
        VAULT_TRUSTED.set(true);
        if let Some(code) = problem() {
            VAULT_TRUSTED.set(false);
            return Err(storage::problem_error(&code));
        }
        if !preloaded() {
            VAULT_TRUSTED.set(false);
            return Err(CoreError::VaultNotPreloaded);
        }
        DECRYPT_FN.set(decrypt_fn());
    }
    if !ROOT_KEY_CHECKED.get() && check_root_key()? {
        ROOT_KEY_CHECKED.set(true);
    }
    Ok(())
}

/// Open pg_byok's check secret, writing it first if this database has none
/// yet (the first vault key). It goes where the keys' ciphertexts go
/// (vault.secrets, which pg_dump includes), so a restored dump brings it.
/// Returns whether the check secret was already there: one written in this
/// transaction vouches for nothing until it commits, so it is not cached.
fn check_root_key() -> Result<bool, CoreError> {
    let name = storage::ROOT_CHECK_NAME;
    let find = || {
        at_most_one(Spi::get_one_with_args::<Uuid>(
            "SELECT s.id FROM vault.secrets s WHERE s.name = $1",
            &[name.into()],
        ))
    };
    let (id, existed) = match find() {
        Some(id) => (id, true),
        None => {
            vouch_for_existing_keys()?;
            let fresh = new_uuid();
            write_row(&fresh, name, storage::ROOT_CHECK_TEXT.as_bytes(), true)
                .map_err(root_key_error)?;
            (find().unwrap_or(fresh), false)
        }
    };
    let opened = vault_call(|| read_row(&id, name)).map_err(root_key_error)?;
    match opened {
        Some((_, Some(plain))) if plain == storage::ROOT_CHECK_TEXT.as_bytes() => Ok(existed),
        _ => Err(CoreError::VaultWrongRootKey),
    }
}

/// Before a new check secret is written where vault keys already exist
/// (the check secret was deleted), one of those keys' secrets must open
/// under this root key: otherwise a new check secret would vouch for the
/// wrong root key, and every key would look tampered (and be retired)
/// instead of waiting for the right one.
fn vouch_for_existing_keys() -> Result<(), CoreError> {
    let some_key = Spi::connect(|c| {
        let table = c.select(
            "SELECT k.id, k.workspace_id, k.vault_secret_id FROM byok.keys k
              WHERE k.vault_secret_id IS NOT NULL ORDER BY k.id LIMIT 1",
            Some(1),
            &[],
        )?;
        if table.is_empty() {
            return Ok(None);
        }
        let row = table.first();
        Ok(Some((
            row.get::<Uuid>(1)?,
            row.get::<Uuid>(2)?,
            row.get::<Uuid>(3)?,
        )))
    })
    .unwrap_or_else(|e: pgrx::spi::Error| spi_failed(e));
    let Some((Some(key_id), Some(workspace_id), Some(secret_id))) = some_key else {
        return Ok(());
    };
    let name = storage::secret_name(workspace_id.as_bytes(), key_id.as_bytes());
    vault_call(|| read_row(&secret_id, &name))
        .map(|_| ())
        .map_err(root_key_error)
}

fn root_key_error(failure: VaultFailure) -> CoreError {
    match failure {
        VaultFailure::NoRootKey => CoreError::VaultRootKeyMissing,
        VaultFailure::Undecryptable => CoreError::VaultWrongRootKey,
    }
}

/// Insert secret row `id` holding `plain`; the nonce comes from Vault.
/// `if_absent`: a concurrent writer of the same name wins (check secret).
fn write_row(id: &Uuid, name: &str, plain: &[u8], if_absent: bool) -> Result<(), VaultFailure> {
    let sql = if if_absent {
        format!("{INSERT_SECRET} ON CONFLICT (name) WHERE name IS NOT NULL DO NOTHING")
    } else {
        INSERT_SECRET.to_string()
    };
    vault_call(|| {
        // Vault's noncegen is IMMUTABLE: called on its own, never folded
        // into a plan that could be reused.
        let nonce =
            Spi::get_one::<Vec<u8>>("SELECT vault._crypto_aead_det_noncegen()").or_raise_spi();
        Spi::run_with_args(
            &sql,
            &[
                (*id).into(),
                name.into(),
                DESCRIPTION.into(),
                plain.into(),
                nonce.into(),
            ],
        )
        .or_raise_spi()
    })
}

/// Secret row `id`: its name, and its plaintext if the name is `name`.
/// None when the row does not exist. The plan is kept (READ_PLAN): it runs
/// only after require_vault, and Postgres re-plans it when vault.secrets or
/// Vault's functions change, which also clears the trust.
fn read_row(id: &Uuid, name: &str) -> Option<(String, Option<Vec<u8>>)> {
    // Straight from the table and one call of Vault's decrypt, where that
    // returns what the query would (vault_read.rs); else the query.
    let decrypt = DECRYPT_FN.get();
    if VAULT_TRUSTED.get() && decrypt != pg_sys::InvalidOid {
        if let Some(found) = crate::vault_read::read(SECRETS_RELID.get(), id) {
            return found.map(|row| {
                let plain = if row.name.as_deref() == Some(name) {
                    crate::vault_read::decrypt(decrypt, id, &row)
                } else {
                    None
                };
                (row.name.unwrap_or_default(), plain)
            });
        }
    }
    Spi::connect_mut(|client| {
        let args = [(*id).into(), name.into()];
        with_plan(
            &READ_PLAN,
            client,
            READ_SECRET,
            &[PgBuiltInOids::UUIDOID, PgBuiltInOids::TEXTOID],
            false,
            |plan, client| {
                let table = client.select(plan, Some(1), &args).or_raise_spi();
                if table.is_empty() {
                    return None;
                }
                let (found, plain) = table.first().get_two::<String, Vec<u8>>().or_raise_spi();
                Some((found.unwrap_or_default(), plain))
            },
        )
    })
}

/// Store `key` (already normalised) for key row `key_id` in Vault; returns
/// the secret's id.
fn store_in_vault(key_id: &Uuid, workspace_id: &Uuid, key: &[u8]) -> Uuid {
    require_vault().or_raise();
    let secret_id = new_uuid();
    let name = storage::secret_name(workspace_id.as_bytes(), key_id.as_bytes());
    write_row(&secret_id, &name, key, false)
        .map_err(root_key_error)
        .or_raise();
    secret_id
}

/// The plaintext of a vault-stored key. `moved_ok`: a missing secret may
/// mean the key moved to native storage since the caller read its row
/// (byok.migrate_storage); read the row again once.
fn open_from_vault(
    key_id: &Uuid,
    workspace_id: &Uuid,
    vendor: Vendor,
    secret_id: &Uuid,
    moved_ok: bool,
) -> String {
    require_vault().or_raise();
    let name = storage::secret_name(workspace_id.as_bytes(), key_id.as_bytes());
    let row = vault_call(|| read_row(secret_id, &name)).unwrap_or_else(|failure| match failure {
        VaultFailure::NoRootKey => ExtError::Core(CoreError::VaultRootKeyMissing).raise(),
        VaultFailure::Undecryptable => tampered("does not decrypt"),
    });
    let plain = match row {
        None if moved_ok => return open_moved(key_id, workspace_id, vendor, secret_id),
        None => tampered("is gone"),
        Some((found, _)) if found != name => tampered("is named for another key"),
        Some((_, plain)) => plain.unwrap_or_else(|| tampered("is empty")),
    };
    // What pg_byok stored was normalised for this vendor; anything else was
    // put there by someone else.
    match String::from_utf8(plain) {
        Ok(text) if keys::normalize(vendor, &text).is_ok_and(|k| *k == text) => text,
        _ => tampered("does not hold a key of this vendor"),
    }
}

/// The key's row as it is now, for a key whose Vault secret was not found.
fn open_moved(key_id: &Uuid, workspace_id: &Uuid, vendor: Vendor, old: &Uuid) -> String {
    let row = Spi::connect(|c| {
        let table = c.select(
            "SELECT k.ciphertext, k.vault_secret_id FROM byok.keys k WHERE k.id = $1",
            Some(1),
            &[(*key_id).into()],
        )?;
        if table.is_empty() {
            return Ok((None, None));
        }
        table.first().get_two::<Vec<u8>, Uuid>()
    })
    .unwrap_or_else(|e: pgrx::spi::Error| spi_failed(e));
    match row {
        (Some(blob), _) => open_key(key_id, workspace_id, vendor, &blob),
        (None, Some(now)) if now != *old => {
            open_from_vault(key_id, workspace_id, vendor, &now, false)
        }
        _ => tampered("is gone"),
    }
}

/// XX001: the key's Vault secret is not what pg_byok stored for it.
fn tampered(reason: &'static str) -> ! {
    ExtError::Core(CoreError::VaultTampered { reason }).raise()
}

/// The storage new keys go to, from byok.storage (`auto`: Vault where it
/// is installed here and preloaded).
pub(crate) fn storage_for_new_keys() -> Storage {
    let installed = || {
        Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'supabase_vault')",
        )
        .or_raise_spi()
        .unwrap_or(false)
    };
    let setting = storage_setting();
    let presence = match setting {
        byok_core::storage::StorageSetting::Auto => VaultPresence {
            installed: installed(),
            preloaded: preloaded(),
        },
        _ => VaultPresence {
            installed: false,
            preloaded: false,
        },
    };
    storage::resolve(setting, presence)
}

/// Whether this database needs pg_byok's keyring: new keys are stored
/// natively, or some live key is.
pub(crate) fn keyring_needed() -> bool {
    storage_for_new_keys() == Storage::Native
        || Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM byok.keys k WHERE k.storage = 'native'
                              AND k.status NOT IN ('invalid', 'revoked'))",
        )
        .or_raise_spi()
        .unwrap_or(true)
}

/// Normalise, check and store a key for a new row whose id is chosen here,
/// where byok.storage says: its envelope (native) or its Vault secret's id.
// The row type is spelled out: pgrx reads the column names from it.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, name = "_store")]
#[search_path(pg_catalog, pg_temp)]
fn store(
    workspace_id: Option<Uuid>,
    vendor: Option<TextArg<'_>>,
    api_key: Option<TextArg<'_>>,
) -> TableIterator<
    'static,
    (
        name!(id, Uuid),
        name!(vendor, String),
        name!(masked, String),
        name!(storage, String),
        name!(ciphertext, Option<Vec<u8>>),
        name!(vault_secret_id, Option<Uuid>),
    ),
> {
    let workspace_id = required(workspace_id, "workspace_id");
    let vendor = Vendor::parse(required(vendor, "vendor").utf8("vendor")).or_raise();
    let key = keys::normalize(vendor, required(api_key, "api_key").utf8("api_key")).or_raise();
    let id = new_uuid();
    let target = storage_for_new_keys();
    let (ciphertext, secret_id) = match target {
        Storage::Native => (
            Some(seal_key(&id, &workspace_id, vendor, key.as_bytes())),
            None,
        ),
        Storage::Vault => (
            None,
            Some(store_in_vault(&id, &workspace_id, key.as_bytes())),
        ),
    };
    let row = (
        id,
        vendor.as_str().to_string(),
        mask::mask(&key),
        target.as_str().to_string(),
        ciphertext,
        secret_id,
    );
    TableIterator::once(row)
}

/// The plaintext of a live key, from wherever it is stored: its envelope
/// (as `_open`) or its Vault secret, whose name must be the key's. XX001
/// for a tampered, missing or swapped secret; 55000 when the keyring or
/// Vault cannot serve.
#[pg_extern(volatile, name = "_open_stored")]
#[search_path(pg_catalog, pg_temp)]
fn open_stored(
    key_id: Option<Uuid>,
    workspace_id: Option<Uuid>,
    vendor: Option<TextArg<'_>>,
    ciphertext: Option<&[u8]>,
    vault_secret_id: Option<Uuid>,
) -> String {
    let key_id = required(key_id, "key_id");
    let workspace_id = required(workspace_id, "workspace_id");
    let vendor = Vendor::parse(required(vendor, "vendor").utf8("vendor")).or_raise();
    match open_live(&key_id, &workspace_id, vendor, ciphertext, vault_secret_id) {
        Some(plain) => plain,
        None => required(None, "ciphertext"),
    }
}

/// The plaintext of a live key from its envelope or its Vault secret (as
/// `_open_stored`; `use_key` calls it directly); None when the row holds
/// neither.
pub(crate) fn open_live(
    key_id: &Uuid,
    workspace_id: &Uuid,
    vendor: Vendor,
    ciphertext: Option<&[u8]>,
    vault_secret_id: Option<Uuid>,
) -> Option<String> {
    match (ciphertext, vault_secret_id) {
        (Some(blob), _) => Some(open_key(key_id, workspace_id, vendor, blob)),
        (None, Some(secret)) => Some(open_from_vault(key_id, workspace_id, vendor, &secret, true)),
        (None, None) => None,
    }
}

/// Move a natively stored key into Vault: its new secret's id. The
/// plaintext stays in Rust.
#[pg_extern(volatile, name = "_to_vault")]
#[search_path(pg_catalog, pg_temp)]
fn to_vault(
    key_id: Option<Uuid>,
    workspace_id: Option<Uuid>,
    vendor: Option<&str>,
    ciphertext: Option<&[u8]>,
) -> Uuid {
    let key_id = required(key_id, "key_id");
    let workspace_id = required(workspace_id, "workspace_id");
    let vendor = Vendor::parse(required(vendor, "vendor")).or_raise();
    let plain = open_key(
        &key_id,
        &workspace_id,
        vendor,
        required(ciphertext, "ciphertext"),
    );
    store_in_vault(&key_id, &workspace_id, plain.as_bytes())
}

/// Move a vault-stored key to native storage: its envelope. The caller
/// clears the mapping, which removes the secret (sql/vault.sql's trigger).
#[pg_extern(volatile, name = "_to_native")]
#[search_path(pg_catalog, pg_temp)]
fn to_native(
    key_id: Option<Uuid>,
    workspace_id: Option<Uuid>,
    vendor: Option<&str>,
    vault_secret_id: Option<Uuid>,
) -> Vec<u8> {
    let key_id = required(key_id, "key_id");
    let workspace_id = required(workspace_id, "workspace_id");
    let vendor = Vendor::parse(required(vendor, "vendor")).or_raise();
    let secret = required(vault_secret_id, "vault_secret_id");
    let plain = open_from_vault(&key_id, &workspace_id, vendor, &secret, false);
    seal_key(&key_id, &workspace_id, vendor, plain.as_bytes())
}

/// Delete a dead or moved key's Vault secret. Nothing to do where
/// supabase_vault is gone (its table went with it); refused where Vault's
/// table is not the genuine one.
#[pg_extern(volatile, name = "_vault_delete")]
#[search_path(pg_catalog, pg_temp)]
fn vault_delete(secret_id: Option<Uuid>) {
    let secret_id = required(secret_id, "secret_id");
    match problem() {
        Some(code) if code == "not_installed" => {}
        Some(code) => ExtError::Core(storage::problem_error(&code)).raise(),
        None => Spi::run_with_args(
            "DELETE FROM vault.secrets WHERE id = $1",
            &[secret_id.into()],
        )
        .or_raise_spi(),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::tests_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn native_is_the_default_and_auto_falls_back_where_vault_is_absent() {
        let id = add("anthropic", &anthropic_key('n'));
        Spi::run("SET byok.storage = 'auto'").unwrap();
        let auto = add("openai", &openai_key('a'));
        let stored = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM byok.keys WHERE id IN ('{id}', '{auto}')
                AND storage = 'native' AND ciphertext IS NOT NULL AND vault_secret_id IS NULL"
        ))
        .unwrap();
        assert_eq!(stored, Some(2));
        assert_eq!(
            Spi::get_one::<String>("SELECT byok._vault_problem()")
                .unwrap()
                .as_deref(),
            Some("not_installed")
        );
    }

    #[pg_test]
    fn vault_storage_without_vault_is_refused_before_any_row_exists() {
        Spi::run("SET byok.storage = 'vault'").unwrap();
        let key = anthropic_key('v');
        let (state, msg, hint) = error_of(&format!(
            "SELECT byok.add_key('{WS}', 'anthropic', '{key}')"
        ));
        assert_eq!(state, "55000");
        assert!(msg.contains("not installed"), "{msg}");
        assert!(hint.unwrap().contains("byok.storage = 'native'"));
        assert!(!msg.contains(&key[20..40]));
        assert_eq!(count("keys"), 0);
        refused("SET byok.storage = 'elsewhere'", "22023");
    }

    #[pg_test]
    fn a_key_cannot_be_in_both_places_or_a_dead_key_in_either() {
        let id = add("anthropic", &anthropic_key('b'));
        for change in [
            "vault_secret_id = gen_random_uuid()",
            "storage = 'vault'",
            "status = 'revoked', revoked_at = now(), ciphertext = NULL, storage = 'vault', \
             vault_secret_id = gen_random_uuid()",
        ] {
            let (state, _, _) =
                error_of(&format!("UPDATE byok.keys SET {change} WHERE id = '{id}'"));
            assert_eq!(state, "23514", "{change}");
        }
    }
}
