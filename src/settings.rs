//! The extension's settings (GUCs). Each static says why it exists.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::CString;

/// Path of the keyring file. Postmaster-level and superuser-only so that no
/// session can point the extension at a key of its own choosing, and hidden
/// from non-superusers so the path is not a hint to an attacker.
pub static MASTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Masks key-shaped text in everything the server logs. On by default: the
/// safe choice must not need a configuration change. Superuser-only, so a
/// session cannot switch redaction off for itself before logging a key.
pub static REDACT_LOGS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Workspace statuses that revoke a workspace's keys when an attached
/// workspace table's status column moves into one of them. Apps spell these
/// differently ("canceled" vs "cancelled"), so the list is a setting.
/// Superuser-only: the user running the UPDATE must not be able to empty it.
pub static INACTIVE_STATUSES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"paused,cancelled,canceled,suspended,deleted"));

/// How many validation attempts a key gets before it is marked `unverified`.
/// A vendor outage must not burn a key's chances forever, nor retry forever.
pub static MAX_ATTEMPTS: GucSetting<i32> =
    GucSetting::<i32>::new(byok_core::backoff::DEFAULT_MAX_ATTEMPTS);

/// How often an active key is re-checked at its vendor, in seconds (0: never).
/// A key revoked in the vendor's console should be noticed before a user's
/// call fails; once a day costs one cheap request per key.
pub static REVALIDATE_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(86_400);

/// Days without a `use_key` after which `byok.key_health` calls an active key
/// idle: an unused key is a credential nobody watches.
pub static IDLE_KEY_DAYS: GucSetting<i32> = GucSetting::<i32>::new(90);

/// Master key versions below this are retired: what they sealed no longer
/// opens (55000), and they seal nothing. A server-wide policy, so SIGHUP
/// (postgresql.conf or ALTER SYSTEM, then reload): no session may lower it
/// for itself to open a key under a retired version.
pub static MIN_DECRYPT_VERSION: GucSetting<i32> = GucSetting::<i32>::new(1);

/// What `use_key` records of each use (docs/SECURITY.md says what a crash
/// can lose in each mode). Superuser-only: a consumer must not be able to
/// switch the per-call audit off for itself.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum UseAudit {
    /// Counters in shared memory, flushed into byok.key_usage by the
    /// background worker: no write per call.
    #[name = c"aggregate"]
    Aggregate,
    /// Also one byok.audit_log row per call, in the caller's transaction.
    #[name = c"each"]
    Each,
}

pub static USE_AUDIT: GucSetting<UseAudit> = GucSetting::<UseAudit>::new(UseAudit::Aggregate);

/// The database whose uses the background worker flushes (one worker per
/// cluster, as pg_cron's cron.database_name). Fixed at server start.
pub static USAGE_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// Seconds between flushes of the shared counters: what a crash can lose.
pub static USAGE_FLUSH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);

/// How many (database, key, role, hour) counters shared memory holds. Fixed
/// at server start (it sizes the shared memory).
pub static USAGE_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(crate::usage::DEFAULT_SLOTS);

/// Days an audit row is kept; the background worker deletes older ones
/// (0: kept forever). Server-wide, so SIGHUP.
pub static AUDIT_RETENTION_DAYS: GucSetting<i32> = GucSetting::<i32>::new(365);
/// Where new keys are stored: pg_byok's envelope under the keyring, or
/// Supabase Vault under its root key (byok-core `storage`). Superuser-only:
/// an app session must not move its keys out of the storage the operator
/// chose; existing keys stay where they are until byok.migrate_storage.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum StorageChoice {
    #[name = c"native"]
    Native,
    #[name = c"vault"]
    Vault,
    #[name = c"auto"]
    Auto,
}

pub static STORAGE: GucSetting<StorageChoice> =
    GucSetting::<StorageChoice>::new(StorageChoice::Native);

pub fn register() {
    GucRegistry::define_enum_guc(
        c"byok.storage",
        c"Where new keys are stored: native, vault (Supabase Vault) or auto.",
        c"auto: Supabase Vault where supabase_vault is installed in the database and preloaded, \
           native elsewhere. Existing keys move only with CALL byok.migrate_storage.",
        &STORAGE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"byok.master_key_file",
        c"Path of the pg_byok keyring file.",
        c"One key a line: \"<version> <64 hex chars>\". Highest version encrypts; all decrypt. \
           The file is read again on reload (SIGHUP).",
        &MASTER_KEY_FILE,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_bool_guc(
        c"byok.redact_logs",
        c"Mask key-shaped text in everything the server logs.",
        c"",
        &REDACT_LOGS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"byok.inactive_statuses",
        c"Workspace statuses (comma-separated, case-insensitive) that revoke the workspace's keys.",
        c"",
        &INACTIVE_STATUSES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"byok.max_attempts",
        c"Validation attempts before a key is marked unverified.",
        c"",
        &MAX_ATTEMPTS,
        1,
        100,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"byok.revalidate_interval",
        c"How often active keys are re-checked at their vendor (0 turns it off).",
        c"byok.enqueue_due_revalidations queues the active keys checked longer ago than this.",
        &REVALIDATE_INTERVAL,
        0,
        31_536_000,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"byok.idle_key_days",
        c"Days without use after which byok.key_health reports an active key as idle.",
        c"",
        &IDLE_KEY_DAYS,
        1,
        3650,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"byok.min_decrypt_version",
        c"Master key versions below this are retired: nothing they encrypted opens.",
        c"Run CALL byok.rewrap() before raising it; see byok.key_versions.",
        &MIN_DECRYPT_VERSION,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"byok.use_audit",
        c"What use_key records: aggregate (shared counters, flushed) or each (also an audit row per call).",
        c"aggregate: a crash loses at most the uses since the last flush. \
           each: every use_key writes a byok.audit_log row in the caller's transaction.",
        &USE_AUDIT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"byok.usage_database",
        c"Database whose use_key counters the pg_byok background worker flushes into byok.key_usage.",
        c"Other databases record each use with a write of their own.",
        &USAGE_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"byok.usage_flush_interval",
        c"Seconds between flushes of the use_key counters into byok.key_usage.",
        c"Also how often audit retention is applied.",
        &USAGE_FLUSH_INTERVAL,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"byok.usage_slots",
        c"Counters (database, key, role, hour) kept in shared memory between flushes.",
        c"When they are all taken, use_key writes its use to byok.key_usage itself.",
        &USAGE_SLOTS,
        1,
        crate::usage::MAX_SLOTS,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"byok.audit_retention_days",
        c"Days byok.audit_log rows are kept; the background worker deletes older ones (0: forever).",
        c"",
        &AUDIT_RETENTION_DAYS,
        0,
        36_500,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// The database the usage worker connects to.
pub fn usage_database() -> String {
    USAGE_DATABASE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".to_string())
}

/// The minimum master key version that may decrypt, as a keyring version.
pub fn min_decrypt_version() -> u32 {
    u32::try_from(MIN_DECRYPT_VERSION.get()).unwrap_or(1)
}

/// The inactive-status list, lower-cased and trimmed.
pub fn inactive_statuses() -> Vec<String> {
    INACTIVE_STATUSES
        .get()
        .map(|s| {
            s.to_string_lossy()
                .split(',')
                .map(|p| p.trim().to_lowercase())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The `byok.storage` setting as byok-core's rule input.
pub fn storage_setting() -> byok_core::storage::StorageSetting {
    use byok_core::storage::StorageSetting;
    match STORAGE.get() {
        StorageChoice::Native => StorageSetting::Native,
        StorageChoice::Vault => StorageSetting::Vault,
        StorageChoice::Auto => StorageSetting::Auto,
    }
}
