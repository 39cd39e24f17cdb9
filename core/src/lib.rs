//! byok-core: every pg_byok rule that needs no database.
//!
//! The extension and the sidecar both link this crate, so a key shape, a mask
//! rule or a redaction pattern exists exactly once.
//!
//! Modules in layers, each using only those on earlier lines (no import
//! cycles; `tests/module_layers.rs` checks):
//! 1. `vendor` (the `Vendor` enum), `backoff`: nothing;
//! 2. `error`: only `Vendor`, so every module can return `CoreError`;
//! 3. `keys` (key shapes), `keyring` (master keys), `storage` (native or
//!    Supabase Vault);
//! 4. `mask`, then `redact` (the log redaction rule);
//! 5. `vendor_name` (parsing vendor names), `envelope`.
//!
//! `samples` (feature `samples`): sample keys for the tests of every crate.
#![forbid(unsafe_code)]

pub mod app_sql;
pub mod backoff;
pub mod envelope;
pub mod error;
pub mod keyring;
pub mod keys;
pub mod mask;
pub mod redact;
#[cfg(feature = "samples")]
pub mod samples;
pub mod storage;
pub mod trust;
pub mod vendor;
mod vendor_name;

pub use error::{CoreError, ErrorKind};
pub use vendor::Vendor;
