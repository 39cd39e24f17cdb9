//! The extension's one error enum, and its mapping to Postgres error reports.
//!
//! Every error leaves the backend as an `ErrorReport` with an explicit SQLSTATE
//! (API.md's table), a message saying what went wrong and a hint saying what to
//! do. pgrx would otherwise report a Rust panic as 22000/XX000 with a message
//! we do not control. No variant carries key material: the core errors are
//! built to hold none, and everything else here holds settings or paths.

use byok_core::{CoreError, ErrorKind};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum ExtError {
    /// A rule from byok-core refused the input or the ciphertext.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The keyring file could not be used (missing, unreadable, too open).
    #[error("master keyring file {path} {problem}")]
    KeyringFile { path: String, problem: String },
    /// Neither `byok.master_key_file` nor `BYOK_MASTER_KEY` was provided.
    #[error("no master key is configured")]
    NoMasterKey,
    /// A text argument is not UTF-8 (a database in another encoding; pg_byok
    /// refuses to be installed in one, but the library may be called there).
    #[error("{what} is not valid UTF-8 text")]
    NotUtf8 { what: &'static str },
    /// An attached app table (by OID) is no longer what pg_byok checked when
    /// it was attached: not a plain table, or a column retyped or dropped.
    #[error("workspace table {table} no longer matches what byok.attach_workspaces checked")]
    AppTableChanged { table: String },
    /// A required argument is NULL, worded as sql/internals.sql's
    /// `byok._require` words it (use_key moved from PL/pgSQL to Rust and
    /// keeps its errors).
    #[error("{name} must not be NULL")]
    Required { name: &'static str },
    /// `use_key` called by a role that is not a member of byok_consumer.
    #[error("permission denied: byok.use_key is for the byok_consumer role")]
    NotConsumer,
    /// No active key for the workspace and vendor; `pending` when one awaits
    /// validation.
    #[error("no active {vendor} key for workspace {workspace_id}")]
    NoActiveKey {
        vendor: &'static str,
        workspace_id: String,
        pending: bool,
    },
    /// `byok.use_audit = each` on a hot standby: the per-call audit row
    /// cannot be written there.
    #[error("byok.use_audit is 'each' (an audit row per use_key), and this server is a read-only hot standby")]
    EachUseOnStandby,
    /// A kept plan was about to run without pg_byok's pinned search_path
    /// (pinned_path.rs): a bug in pg_byok, refused rather than run.
    #[error("a pg_byok query was about to run without its pinned search_path")]
    Unpinned,
}

impl ExtError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            ExtError::Core(e) => match e.kind() {
                ErrorKind::InvalidArgument => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                ErrorKind::NullValue => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                ErrorKind::Tampered => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                ErrorKind::MasterKeyUnavailable | ErrorKind::VaultUnavailable => {
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
                }
            },
            ExtError::KeyringFile { .. }
            | ExtError::NoMasterKey
            | ExtError::AppTableChanged { .. } => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            ExtError::NotUtf8 { .. } => PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            ExtError::Required { .. } => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            ExtError::NotConsumer => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            ExtError::NoActiveKey { .. } => PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            ExtError::EachUseOnStandby => PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            ExtError::Unpinned => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ExtError::Core(e) => e.hint(),
            ExtError::KeyringFile { .. } => Some(
                "Fix the file named by byok.master_key_file (one \"<version> <64 hex>\" a line, \
                 owned by the server's OS user, mode 0600), then reload the server \
                 (SELECT pg_reload_conf())."
                    .into(),
            ),
            ExtError::NoMasterKey => Some(
                "Set byok.master_key_file in postgresql.conf (or BYOK_MASTER_KEY in the server's \
                 environment) and restart the server."
                    .into(),
            ),
            ExtError::NotUtf8 { .. } => Some(
                "pg_byok works in UTF8 databases only: create the database with ENCODING 'UTF8' \
                 (or dump this one and restore it into a UTF8 database)."
                    .into(),
            ),
            ExtError::AppTableChanged { .. } => Some(
                "Run byok.attach_workspaces again for this table (a plain table without \
                 inheritance; id: uuid or text; status: text or enum)."
                    .into(),
            ),
            ExtError::Required { name } => Some(format!("Pass a non-NULL {name}.")),
            ExtError::NotConsumer => Some(
                "Call it from your backend as a role granted byok_consumer (service_role on Supabase)."
                    .into(),
            ),
            ExtError::NoActiveKey { pending: true, .. } => Some(
                "A key is pending validation; retry once the sidecar has validated it.".into(),
            ),
            ExtError::NoActiveKey { pending: false, .. } => {
                Some("Ask the workspace to add a key with byok.add_key.".into())
            }
            ExtError::EachUseOnStandby => Some(
                "Call use_key on the primary, or set byok.use_audit = 'aggregate' for this standby \
                 (its uses are then counted in its shared memory: byok.key_usage_live)."
                    .into(),
            ),
            ExtError::Unpinned => Some(
                "This is a bug in pg_byok: report it with the statement that raised it.".into(),
            ),
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            ExtError::Core(e) => e.detail(),
            _ => None,
        }
    }

    /// Raise this error in the current backend; never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "pg_byok");
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

/// Unwrap a result, raising its error as a Postgres error report.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: Into<ExtError>> OrRaise<T> for Result<T, E> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.into().raise(),
        }
    }
}

/// A failed SPI call: a Postgres error already reported, or a broken plan;
/// neither carries key material. Raised as a panic, which pgrx reports.
pub(crate) fn spi_failed(e: pgrx::spi::Error) -> ! {
    panic!("pg_byok: SPI call failed: {e}")
}

/// Unwrap an SPI result, raising a failure with [`spi_failed`].
pub(crate) trait OrRaiseSpi<T> {
    fn or_raise_spi(self) -> T;
}

impl<T> OrRaiseSpi<T> for Result<T, pgrx::spi::Error> {
    fn or_raise_spi(self) -> T {
        self.unwrap_or_else(|e| spi_failed(e))
    }
}
