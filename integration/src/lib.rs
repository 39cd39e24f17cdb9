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

mod cluster;
mod keys;
mod scan;
mod sql;
mod supabase;

pub use cluster::{Cluster, ClusterOptions, PG_BIN};
pub use keys::{random_master_key_hex, sample_key};
pub use scan::grep_dir;
pub use sql::{sqlstate, wait_until};
pub use supabase::{supabase_project, SupabaseCluster, SupabaseOptions, SupabaseProject};

/// Re-exported so tests use the same `postgres` crate version as the harness.
pub use postgres;
