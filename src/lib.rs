//! pg_byok: bring-your-own-key vendor key store for Postgres.
//!
//! The Rust side converts types and calls byok-core (normalise, seal, open,
//! mask, redact, retry rules); the policy that is naturally SQL (tables,
//! RLS, grants, triggers, the queue) lives in sql/, wired in by schema.rs.
//! Reads of the app's own tables run as their owner (as_owner.rs).

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod active_key;
mod api;
mod app_tables;
mod as_owner;
mod error;
mod kept_plan;
mod log_hook;
mod master_key;
mod pinned_path;
mod queue;
mod rewrap;
mod schema;
mod sealing;
mod settings;
mod tenancy;
mod text;
mod usage;
mod usage_worker;
mod use_key;
mod vault;
mod vault_read;

#[cfg(any(test, feature = "pg_test"))]
mod tests_support;

/// Settings and hooks, nothing else. In the postmaster (preloaded) the
/// keyring is also loaded here, so `BYOK_MASTER_KEY` leaves the environment
/// before any backend is forked, and the shared use counters and their
/// background worker are set up (they need preloading).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    log_hook::install();
    // SAFETY: a plain read of a Postgres global, on the only thread, during
    // library load.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if preloading {
        master_key::preload();
        usage::init();
        usage_worker::register();
    }
}

/// Used by `cargo pgrx test`: the cluster pgrx starts for the #[pg_test]s.
#[cfg(test)]
pub mod pg_test {
    /// Where the tests' keyring file lives; the server is pointed at it.
    const KEYRING: &str = "/tmp/pg_byok_pg_test.keyring";

    /// Runs in the test process before each test: make sure the keyring
    /// file exists, readable by the server's OS user only.
    pub fn setup(_options: Vec<&str>) {
        use std::os::unix::fs::PermissionsExt;
        let path = std::path::Path::new(KEYRING);
        if !path.exists() {
            let key = byok_core::keyring::generate_hex_key();
            std::fs::write(
                path,
                format!("# pg_byok test keyring\n1 {}\n", key.as_str()),
            )
            .unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Ok(user) = std::env::var("CARGO_PGRX_TEST_RUNAS") {
                let status = std::process::Command::new("chown")
                    .arg(&user)
                    .arg(path)
                    .status()
                    .unwrap();
                assert!(status.success(), "chown {user} {KEYRING} failed");
            }
        }
    }

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_byok'",
            "byok.master_key_file = '/tmp/pg_byok_pg_test.keyring'",
            // The #[pg_test]s flush and prune themselves (in their own
            // transaction, which sees their keys); the worker stays idle.
            "byok.usage_database = 'pgrx_tests'",
            "byok.usage_flush_interval = 3600",
        ]
    }
}
