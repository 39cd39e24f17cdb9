//! byok-core: every pg_byok rule that needs no database.
//!
//! The extension and the sidecar both link this crate, so a key shape, a mask
//! rule or a redaction pattern exists exactly once.

pub mod app_sql;
pub mod backoff;
pub mod classify;
pub mod envelope;
pub mod error;
pub mod keyring;
pub mod keys;
pub mod mask;
pub mod redact;
pub mod vendor;

pub use error::{CoreError, ErrorKind};
pub use vendor::Vendor;
