//! byok-sidecar: validates pg_byok's stored vendor keys through the queue.
//!
//! The binary is a thin wrapper (`main.rs`); the modules live here so unit
//! tests and the end-to-end tests can reach them.

pub mod breaker;
pub mod classify;
pub mod config;
pub mod db;
pub mod db_tls;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod probe;
pub mod report;
pub mod server;
pub mod signals;
pub mod task;
pub mod worker;
