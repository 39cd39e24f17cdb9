//! Test harness for SQL-level scenarios against a real Postgres 15 cluster
//! with the installed `pg_byok` extension.
//!
//! Every test starts its own throw-away cluster ([`Cluster::start`]) in a
//! temporary directory, as the `postgres` OS user when running as root
//! (initdb refuses root), on a free loopback port, with its unix socket in
//! that directory. The cluster is stopped and removed on drop (kept when the
//! environment has `BYOK_KEEP_CLUSTER=1`).
//!
//! ```no_run
//! use byok_integration::{Cluster, ClusterOptions, sample_key};
//! let c = Cluster::start(ClusterOptions::default());
//! let mut db = c.client();
//! let key = sample_key("anthropic", 1);
//! db.query_one("SELECT (byok.add_key(gen_random_uuid(), 'anthropic', $1)).masked", &[&key]).unwrap();
//! ```

pub mod api_doc;
mod catalog;
mod cluster;
pub mod collect;
mod pgroot;
pub mod release;
pub mod repo_docs;
mod scan;
pub mod sidecar;
mod sql;
mod supabase;

/// The workspace's one set of sample-key builders (byok-core, feature `samples`).
pub use byok_core::samples::{random_master_key_hex, sample_key, sample_key_marked};
pub use catalog::Catalog;
pub use cluster::{pg_bin, vault_installed, Cluster, ClusterOptions, PG_BIN};
pub use pgroot::PgRoot;
pub use scan::{grep_dir, search, Hit};
pub use sql::{sqlstate, wait_until};
pub use supabase::{supabase_project, SupabaseCluster, SupabaseOptions, SupabaseProject};

/// Re-exported so tests use the same `postgres` crate version as the harness.
pub use postgres;
