//! byok-sidecar: validates pg_byok's stored vendor keys through the queue.
//!
//! The binary is a thin wrapper (`main.rs`); the modules live here so unit
//! tests and the end-to-end tests can reach them. Dependencies point one
//! way (no cycles): `worker` (claim loop, shutdown) → `task` (one job) →
//! `state` (what they share) → `probe`, `db`, `breaker`, `report`,
//! `metrics`, `config`; `probe` → `classify`. The mock vendor is not here:
//! it is the `byok-mock-vendor` crate, which tests and the demo use.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod classify;
pub mod config;
pub mod db;
pub mod db_tls;
pub mod finisher;
pub mod job;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod report;
pub mod server;
pub mod signals;
pub mod state;
pub mod task;
pub mod worker;
