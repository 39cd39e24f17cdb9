//! The leak scenario shared by the tests of `leak_suite.rs`: one cluster
//! configured to log everything Postgres can log ([`LOG_EVERYTHING`]). Keys
//! of both vendors go through literals (simple protocol) and bound
//! parameters (extended protocol), through statements that fail while
//! holding a key, through rotation, use and revocation, and through a full
//! validation cycle of the real sidecar against its mock vendor
//! ([`statements`], [`flows`]). Afterwards every place a key could land is
//! collected into files; the tests search one place each.
//!
//! The scenario runs once per test binary ([`scenario()`], in
//! `scenario.rs`): it is the costly part (a cluster, the sidecar, dumps,
//! pg_waldump), and every channel is searched for the keys of the same run.
//! This file holds the keys the scenario mints and its SQL helpers.

pub mod flows;
mod scenario;
pub mod statements;

// leak_suite.rs runs `scenario`, vault_leak_suite.rs `vault_scenario`.
#[allow(unused_imports)]
pub use scenario::{assert_no_problems, scenario, vault_scenario, Control, Scenario};

use byok_integration::postgres::{Client, SimpleQueryMessage};
use byok_integration::sidecar::{sidecar_bin, sidecar_cycle};
use byok_integration::{sample_key, sample_key_marked, Cluster};
use std::fs;
use std::io::Read;
use std::path::Path;
use uuid::Uuid;

/// The logging configuration of issue 5, plus a few knobs that only add
/// more places for a key to show up (verbose errors, auto_explain's output
/// columns, connection lines).
const LOG_EVERYTHING: &[&str] = &[
    "shared_preload_libraries = 'pg_byok,auto_explain,pg_stat_statements'",
    "log_statement = 'all'",
    "log_min_duration_statement = 0",
    "log_min_messages = debug1",
    "log_min_error_statement = debug1",
    "log_parameter_max_length = -1",
    "log_parameter_max_length_on_error = -1",
    "log_destination = 'stderr,csvlog,jsonlog'",
    "logging_collector = on",
    "log_directory = 'log'",
    "log_error_verbosity = verbose",
    "log_connections = on",
    "log_disconnections = on",
    "auto_explain.log_min_duration = 0",
    "auto_explain.log_nested_statements = on",
    "auto_explain.log_analyze = on",
    "auto_explain.log_verbose = on",
    "auto_explain.log_triggers = on",
    "pg_stat_statements.track = all",
];

// ---------------------------------------------------------------- keys

/// A secret the suite hands to the system, and where it came from.
#[derive(Clone)]
pub struct Secret {
    pub what: String,
    pub key: String,
}

impl Secret {
    /// The strings searched for: the whole key and 20-character windows
    /// (right after the vendor prefix, in the middle, and ending just
    /// before the 4 characters the mask may show). Any leak of 20+
    /// consecutive characters of the body is caught by one of them.
    pub fn needles(&self) -> Vec<String> {
        let k = &self.key;
        let body_start = prefix_len(k);
        let n = k.len();
        let mut v = vec![k.clone()];
        for start in [body_start, (n - 20) / 2, n - 24] {
            let w = k[start..start + 20].to_string();
            if !v.contains(&w) {
                v.push(w);
            }
        }
        v
    }
}

/// Length of the vendor prefix (`sk-ant-api03-`, `sk-proj-`, `sk-svcacct-`, `sk-`).
fn prefix_len(k: &str) -> usize {
    for p in [
        "sk-ant-api03-",
        "sk-ant-admin01-",
        "sk-proj-",
        "sk-svcacct-",
        "sk-admin-",
        "sk-",
    ] {
        if k.starts_with(p) {
            return p.len();
        }
    }
    panic!("not a key: {k}")
}

/// API.md's mask.
pub fn mask(key: &str) -> String {
    format!("…{}", &key[key.len() - 4..])
}

/// The keys the suite uses, recorded as they are minted.
struct Keys {
    seed: u64,
    protected: Vec<Secret>,
}

impl Keys {
    fn new() -> Keys {
        // A different family of keys on every run, so a stale file from an
        // earlier run can never produce (or hide) a hit.
        Keys {
            seed: rand::random::<u32>() as u64 * 1000,
            protected: Vec::new(),
        }
    }

    fn mint(&mut self, vendor: &str, what: &str) -> String {
        self.seed += 1;
        let key = sample_key(vendor, self.seed);
        self.protected.push(Secret {
            what: what.to_string(),
            key: key.clone(),
        });
        key
    }

    fn mint_marked(&mut self, vendor: &str, marker: &str, what: &str) -> String {
        self.seed += 1;
        let key = sample_key_marked(vendor, marker, self.seed);
        self.protected.push(Secret {
            what: what.to_string(),
            key: key.clone(),
        });
        key
    }
}

// ---------------------------------------------------------------- SQL helpers

fn simple(db: &mut Client, sql: &str) -> Result<Vec<String>, String> {
    db.simple_query(sql)
        .map(|msgs| {
            msgs.into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .map_err(|e| describe_error(&e))
}

fn describe_error(e: &byok_integration::postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => format!("{e}"),
    }
}

/// Run `sql` (simple protocol), expecting SQLSTATE `state`.
pub fn simple_fails(db: &mut Client, sql: &str, state: &str) {
    match db.simple_query(sql) {
        Ok(_) => panic!("expected {state}, but it succeeded: {sql}"),
        Err(e) => {
            let got = e.as_db_error().map(|d| d.code().code().to_string());
            assert_eq!(got.as_deref(), Some(state), "{sql}: {e:?}");
        }
    }
}

/// Expect a bound-parameter statement to fail with `state`.
fn bound_fails(
    db: &mut Client,
    sql: &str,
    params: &[&(dyn byok_integration::postgres::types::ToSql + Sync)],
    state: &str,
) {
    match db.query(sql, params) {
        Ok(_) => panic!("expected {state}, but it succeeded: {sql}"),
        Err(e) => {
            let got = e.as_db_error().map(|d| d.code().code().to_string());
            assert_eq!(got.as_deref(), Some(state), "{sql}: {e:?}");
        }
    }
}

fn add_literal(db: &mut Client, ws: Uuid, vendor: &str, key: &str) -> String {
    let rows = simple(
        db,
        &format!("SELECT (byok.add_key('{ws}', '{vendor}', '{key}')).masked"),
    )
    .unwrap_or_else(|e| panic!("add_key (literal, {vendor}): {e}"));
    rows[0].clone()
}

fn add_bound(db: &mut Client, ws: Uuid, vendor: &str, key: &str, label: Option<&str>) -> Uuid {
    db.query_one(
        "SELECT id FROM byok.add_key(workspace_id => $1, vendor => $2, api_key => $3, label => $4)",
        &[&ws, &vendor, &key, &label],
    )
    .unwrap_or_else(|e| panic!("add_key (bound, {vendor}): {}", describe_error(&e)))
    .get(0)
}

fn status_of(db: &mut Client, id: Uuid) -> String {
    db.query_one("SELECT status FROM byok.keys WHERE id = $1", &[&id])
        .unwrap()
        .get(0)
}

/// Claim every ready job as the sidecar role and finish it with `outcome`;
/// `detail` is given the claimed key itself, as a careless worker copying a
/// vendor's echo would.
fn validate_by_sql(c: &Cluster, outcome: &str, echo_key_in_detail: bool) -> usize {
    let mut w = c.client_as("sidecar");
    let mut n = 0;
    for _ in 0..20 {
        let rows = w
            .query(
                "SELECT job_id, lease_token, api_key FROM byok.claim_jobs(worker => $1, max_jobs => $2)",
                &[&"leak-suite", &100i32],
            )
            .unwrap_or_else(|e| panic!("claim_jobs: {}", describe_error(&e)));
        if rows.is_empty() {
            return n;
        }
        for r in rows {
            let (job, lease, key): (i64, Uuid, String) = (r.get(0), r.get(1), r.get(2));
            let detail =
                echo_key_in_detail.then(|| format!("vendor said: invalid x-api-key {key}"));
            w.query_one(
                "SELECT byok.finish_job(job_id => $1, lease_token => $2, outcome => $3, detail => $4, http_status => $5)",
                &[&job, &lease, &outcome, &detail, &200i32],
            )
            .unwrap_or_else(|e| panic!("finish_job: {}", describe_error(&e)));
            n += 1;
        }
    }
    panic!("validate_by_sql: the queue never drained");
}
