//! byok-core: every pg_byok rule that needs no database.
//!
//! The extension and the sidecar both link this crate, so a key shape, a mask
//! rule or a redaction pattern exists exactly once.
//!
//! Layers (a module uses only those above it; `error` is a leaf over the
//! `Vendor` enum):
//! `vendor` → `error` → `keys` → `mask` → `redact` → `vendor_name`,
//! `keyring` → `envelope`; `backoff` on top.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod envelope;
pub mod error;
pub mod keyring;
pub mod keys;
pub mod mask;
pub mod redact;
#[cfg(feature = "samples")]
pub mod samples;
pub mod vendor;
mod vendor_name;

pub use error::{CoreError, ErrorKind};
pub use vendor::Vendor;
