//! The leak scenario shared by the tests of `leak_suite.rs`: one cluster
//! configured to log everything Postgres can log ([`LOG_EVERYTHING`]). Keys
//! of both vendors go through literals (simple protocol) and bound
//! parameters (extended protocol), through statements that fail while
//! holding a key, through rotation, use and revocation, and through a full
//! validation cycle of the real sidecar against its mock vendor
//! ([`statements`], [`flows`]). Afterwards every place a key could land is
//! collected into files ([`collect`]); the tests search one place each.
//!
//! The scenario runs once per test binary ([`scenario`]): it is the costly
//! part (a cluster, the sidecar, dumps, pg_waldump), and every channel is
//! searched for the keys of the same run.

pub mod flows;
pub mod statements;

use byok_integration::collect::{dumps, files_with, wal_segments, waldump_all};
use byok_integration::postgres::{Client, SimpleQueryMessage};
use byok_integration::sidecar::{sidecar_bin, sidecar_cycle};
use byok_integration::{sample_key, wait_until, Cluster, ClusterOptions};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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

/// `key` with `marker` written over the start of its body (the mock vendor
/// picks its answer by such markers; lengths and shape stay valid).
fn with_marker(key: &str, marker: &str) -> String {
    let p = prefix_len(key);
    format!("{}{}{}", &key[..p], marker, &key[p + marker.len()..])
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
        let key = with_marker(&sample_key(vendor, self.seed), marker);
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

// ---------------------------------------------------------------- the scenario, run once

/// Which control a channel must contain (the search proves itself there).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Control {
    /// Planted in an ordinary table: must be in dumps, WAL and data files.
    Table,
    /// Logged with `byok.redact_logs = off`: must be in every server log.
    Log,
}

/// What the scenario left behind: the stopped cluster, the collected
/// artifacts, and the secrets to search for.
pub struct Scenario {
    pub cluster: Cluster,
    /// Dumps, pg_waldump output, pg_stat_statements, the sidecar's output.
    pub artifacts: PathBuf,
    _artifacts_dir: Option<tempfile::TempDir>,
    /// Every key handed to the system: none may be found anywhere.
    pub protected: Vec<Secret>,
    pub ctl_table: String,
    pub ctl_log: String,
    /// `SELECT query FROM pg_stat_statements` before shutdown.
    pub pgss: Vec<String>,
    /// Records pg_waldump decoded from all segments.
    pub wal_records: usize,
    pub started: Instant,
}

impl Scenario {
    /// The server log directory (logging_collector's `log/`).
    pub fn log_dir(&self) -> PathBuf {
        self.cluster.data_dir().join("log")
    }

    /// Every needle, mapped to its secret and to the control it is (None:
    /// a protected key).
    pub fn needles(&self) -> BTreeMap<String, (Option<Control>, Secret)> {
        let mut owner = BTreeMap::new();
        for s in &self.protected {
            for n in s.needles() {
                owner.insert(n, (None, s.clone()));
            }
        }
        for (ctl, key, what) in [
            (
                Control::Table,
                &self.ctl_table,
                "control: planted in an ordinary table",
            ),
            (
                Control::Log,
                &self.ctl_log,
                "control: logged with byok.redact_logs = off",
            ),
        ] {
            let s = Secret {
                what: what.into(),
                key: key.clone(),
            };
            for n in s.needles() {
                owner.insert(n, (Some(ctl), s.clone()));
            }
        }
        owner
    }

    /// Search `paths` (the place named `place`) for every needle. Returns
    /// the problems: each protected key found, and each control in
    /// `expect` that was not found (the search is then not proven there).
    pub fn problems(&self, place: &str, paths: &[&Path], expect: &[Control]) -> Vec<String> {
        let owner = self.needles();
        let needles: Vec<String> = owner.keys().cloned().collect();
        let mut leaks = std::collections::BTreeSet::new();
        let mut found = Vec::new();
        for h in byok_integration::search(paths, &needles) {
            // grep -o prints the longest match; map it back to its secret.
            let o = owner.get(&h.matched).or_else(|| {
                owner
                    .iter()
                    .find(|(n, _)| h.matched.contains(n.as_str()))
                    .map(|(_, o)| o)
            });
            match o {
                Some((None, secret)) => {
                    leaks.insert(format!(
                        "LEAK in {place}: {} — {:?} found in {}",
                        secret.what,
                        h.matched,
                        h.file.display()
                    ));
                }
                Some((Some(ctl), _)) => found.push(*ctl),
                None => {}
            }
        }
        let mut out: Vec<String> = expect
            .iter()
            .filter(|c| !found.contains(c))
            .map(|c| {
                format!(
                    "THE SEARCH IS NOT PROVEN TO WORK: the control key {} was NOT found in: {place}",
                    match c {
                        Control::Table => "planted in a table",
                        Control::Log => "logged with redaction off",
                    }
                )
            })
            .collect();
        out.extend(leaks);
        out
    }
}

/// Panic listing `problems` (if any), with where the artifacts are.
#[track_caller]
pub fn assert_no_problems(s: &Scenario, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "\n  {}\n(artifacts in {}; set BYOK_KEEP_CLUSTER=1 to keep them and the cluster)\n",
        problems.join("\n  "),
        s.artifacts.display()
    );
}

static SCENARIO: Mutex<Option<Result<Arc<Scenario>, String>>> = Mutex::new(None);

/// The scenario of this test binary: run by the first test that asks (the
/// others wait), then shared. If it failed, every caller fails with its
/// message. It is dropped (the cluster directory removed) at process exit.
pub fn scenario() -> Arc<Scenario> {
    let mut slot = SCENARIO.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        let r = std::panic::catch_unwind(run).map(Arc::new).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into())
        });
        // SAFETY: registers a plain function with no preconditions; it runs
        // once, at exit, after every test thread has finished.
        unsafe { libc::atexit(drop_scenario) };
        *slot = Some(r);
    }
    match slot.as_ref().unwrap() {
        Ok(s) => s.clone(),
        Err(m) => panic!("the leak scenario failed, so nothing can be searched: {m}"),
    }
}

extern "C" fn drop_scenario() {
    // A panic must not unwind into libc; the cluster's Drop only stops a
    // stopped cluster and removes its directory.
    let _ = std::panic::catch_unwind(|| {
        let taken = SCENARIO.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(taken);
    });
}

/// Exercise the system with keys, then collect every place they could land.
fn run() -> Scenario {
    let started = Instant::now();
    let c = Cluster::start(ClusterOptions {
        extra_conf: LOG_EVERYTHING.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    let artifacts_dir = tempfile::Builder::new()
        .prefix("byok-leak-artifacts-")
        .tempdir()
        .unwrap();
    fs::set_permissions(artifacts_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (artifacts, artifacts_dir) = if std::env::var_os("BYOK_KEEP_CLUSTER").is_some() {
        (artifacts_dir.keep(), None)
    } else {
        (artifacts_dir.path().to_path_buf(), Some(artifacts_dir))
    };

    let mut keys = Keys::new();
    let mut db = c.client();
    db.batch_execute(
        "CREATE EXTENSION pg_stat_statements;
         CREATE ROLE sidecar LOGIN IN ROLE byok_worker;
         CREATE ROLE backend LOGIN IN ROLE byok_consumer;
         CREATE ROLE tenant LOGIN;
         CREATE TABLE app_secrets (id int PRIMARY KEY, note text CHECK (note NOT LIKE 'sk-%'));
         CREATE TABLE app_required (a text, b text NOT NULL);",
    )
    .unwrap();

    statements::keys_through_literals(&mut db, &mut keys);
    let sidecar_ids = statements::keys_through_bound_parameters(&mut db, &mut keys);
    statements::failing_and_utility_statements(&mut db, &mut keys);
    flows::sidecar_validation(&c, &mut db, &mut keys, sidecar_ids, &artifacts);
    flows::rotate_use_revoke(&c, &mut db, &mut keys);
    flows::pg_stat_activity(&c, &mut db, &mut keys);
    let (ctl_table, ctl_log) = flows::plant_controls(&c, &mut db, &keys);
    let (cluster, pgss, wal_records) = collect(c, db, &artifacts);
    Scenario {
        cluster,
        artifacts,
        _artifacts_dir: artifacts_dir,
        protected: keys.protected,
        ctl_table,
        ctl_log,
        pgss,
        wal_records,
        started,
    }
}

/// Collect: pg_stat_statements, the dumps, a checkpoint, the server logs
/// flushed, a clean shutdown (pg_stat_statements writes its file, a
/// shutdown checkpoint runs), then pg_waldump of every segment.
fn collect(c: Cluster, mut db: Client, artifacts: &Path) -> (Cluster, Vec<String>, usize) {
    let pgss: Vec<String> = db
        .query("SELECT query FROM pg_stat_statements", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    fs::write(artifacts.join("pg_stat_statements.txt"), pgss.join("\n")).unwrap();
    dumps(&c, artifacts);

    db.batch_execute("CHECKPOINT").unwrap();
    // Wait until the log collector has written a marker to all three files.
    // A space keeps the marker short of a 40-character stretch, which the
    // redaction rule would mask.
    let marker = format!("leak-suite-flush {}", Uuid::new_v4());
    simple(&mut db, &format!("SELECT '{marker}'")).unwrap();
    let log_dir = c.data_dir().join("log");
    wait_until(
        "the marker reaches the stderr, csv and json logs",
        Duration::from_secs(30),
        || {
            ["log", "csv", "json"].iter().all(|ext| {
                files_with(&log_dir, |n| n.ends_with(&format!(".{ext}")))
                    .iter()
                    .any(|f| {
                        fs::read_to_string(f)
                            .map(|t| t.contains(&marker))
                            .unwrap_or(false)
                    })
            })
        },
    );
    drop(db);
    let mut c = c;
    c.stop();
    assert!(
        !wal_segments(&c).is_empty(),
        "no WAL segment in {}",
        c.data_dir().join("pg_wal").display()
    );
    let records = waldump_all(&c, artifacts);
    (c, pgss, records)
}
