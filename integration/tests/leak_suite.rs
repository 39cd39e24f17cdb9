//! Issue 5: no key ever reaches the server log, a dump, the WAL, any file
//! of the cluster or the sidecar's output.
//!
//! One cluster configured to log everything Postgres can log
//! ([`LOG_EVERYTHING`]). Keys of both vendors go through literals (simple
//! protocol) and bound parameters (extended protocol), through statements
//! that fail while holding a key, through rotation, use and revocation, and
//! through a full validation cycle of the real sidecar against its mock
//! vendor. Afterwards every place a key could land is collected into files
//! and searched for each key and for 20-character windows of it.
//!
//! The search proves itself: a control key planted in an ordinary table
//! must be found in the dumps, the WAL and the data files, and a control
//! key logged on purpose with `byok.redact_logs = off` must be found in the
//! stderr, csv and json logs; otherwise the suite fails.
//!
//! Run: `cargo test -p byok-integration --test leak_suite` (the extension
//! must be installed; the sidecar binary is used when built, required when
//! `CI` is set).

use byok_integration::postgres::{Client, SimpleQueryMessage};
use byok_integration::{grep_dir, sample_key, wait_until, Cluster, ClusterOptions, PG_BIN};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
struct Secret {
    what: String,
    key: String,
}

impl Secret {
    /// The strings searched for: the whole key and 20-character windows
    /// (right after the vendor prefix, in the middle, and ending just
    /// before the 4 characters the mask may show). Any leak of 20+
    /// consecutive characters of the body is caught by one of them.
    fn needles(&self) -> Vec<String> {
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
fn mask(key: &str) -> String {
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
fn simple_fails(db: &mut Client, sql: &str, state: &str) {
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

// ---------------------------------------------------------------- the sidecar

fn sidecar_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BYOK_SIDECAR_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug/byok-sidecar");
    (p.is_file() && mock_vendor_bin(&p).is_file()).then_some(p)
}

/// The mock vendor's own binary (crate byok-mock-vendor), next to the sidecar's.
fn mock_vendor_bin(sidecar: &Path) -> PathBuf {
    std::env::var_os("BYOK_MOCK_VENDOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| sidecar.with_file_name("byok-mock-vendor"))
}

/// A child process whose stdout and stderr are collected by threads.
struct Captured {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn spawn_captured(cmd: &mut Command) -> Captured {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for pipe in pipes {
        let out = out.clone();
        threads.push(std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut line = Vec::new();
            while r
                .read_until(b'\n', &mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                out.lock().unwrap().extend_from_slice(&line);
                line.clear();
            }
        }));
    }
    Captured {
        child,
        out,
        threads,
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns everything printed.
    fn stop(mut self, grace: Duration) -> Vec<u8> {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > grace {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let out = self.out.lock().unwrap().clone();
        out
    }
}

/// Run the real sidecar against its mock vendor until every pending key
/// has a verdict; returns the output of both processes.
fn sidecar_cycle(c: &Cluster, bin: &Path, pending: &[Uuid]) -> Vec<u8> {
    let mock = spawn_captured(
        Command::new(mock_vendor_bin(bin))
            .args(["--listen", "127.0.0.1:0", "--slow-ms", "10"])
            .env_remove("DATABASE_URL"),
    );
    let mut addr = None;
    wait_until(
        "the mock vendor prints its address",
        Duration::from_secs(30),
        || {
            addr = mock.text().lines().find_map(|l| {
                l.split("listening on ")
                    .nth(1)
                    .map(|a| a.trim().to_string())
            });
            addr.is_some()
        },
    );
    let base = addr.unwrap();
    // One port serves both vendors under a prefix each.
    let (anthropic, openai) = (format!("{base}/anthropic"), format!("{base}/openai"));
    let worker = spawn_captured(
        Command::new(bin)
            .arg("--database-url")
            .arg(c.url_as("sidecar"))
            .args([
                "--anthropic-base-url",
                &anthropic,
                "--openai-base-url",
                &openai,
            ])
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--poll-interval",
                "0.2",
                "--request-timeout",
                "5",
            ])
            .args([
                "--log-level",
                "debug",
                "--worker-name",
                "leak-suite-sidecar",
                "--grace-period",
                "2",
            ])
            .env_remove("DATABASE_URL")
            .env_remove("BYOK_LOG"),
    );
    let ids: Vec<Uuid> = pending.to_vec();
    let mut pending_left = -1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending_left != 0 {
        if Instant::now() > deadline {
            let out = worker.stop(Duration::from_secs(5));
            panic!(
                "the sidecar left {pending_left} keys pending after 60 s; its output:\n{}",
                String::from_utf8_lossy(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        pending_left = c
            .client()
            .query_one(
                "SELECT count(*) FROM byok.keys WHERE id = ANY($1) AND status = 'pending'",
                &[&ids],
            )
            .unwrap()
            .get::<_, i64>(0);
    }
    let mut out = worker.stop(Duration::from_secs(15));
    out.extend_from_slice(b"\n---- mock vendor ----\n");
    out.extend(mock.stop(Duration::from_secs(5)));
    out
}

// ---------------------------------------------------------------- collecting and searching

fn pg_bin(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("BYOK_PG_BIN").unwrap_or_else(|| PG_BIN.into())).join(name)
}

fn conn_args(c: &Cluster) -> Vec<String> {
    vec![
        "-h".into(),
        c.dir().to_string_lossy().into_owned(),
        "-p".into(),
        c.port().to_string(),
        "-U".into(),
        "postgres".into(),
    ]
}

fn run_pg_tool(what: &str, cmd: &mut Command) -> Vec<u8> {
    let out = Cluster::run_as_postgres(cmd);
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A hit: which needle of which secret was found in which file.
struct Hit {
    file: PathBuf,
    matched: String,
}

/// Every occurrence of any needle in any file under `dirs`, by GNU grep
/// (fixed strings, binary files as text, no device/socket reads): one pass
/// for all needles. Panics if grep reports an error, so a search never
/// passes by not looking.
fn search(dirs: &[&Path], needles: &[String], scratch: &Path) -> Vec<Hit> {
    let patterns = scratch.join("needles.txt");
    fs::write(&patterns, needles.join("\n") + "\n").unwrap();
    let out = Command::new("grep")
        .args(["-r", "-a", "-F", "-o", "-D", "skip", "-f"])
        .arg(&patterns)
        .args(dirs)
        .output()
        .expect("run grep");
    match out.status.code() {
        Some(0) | Some(1) => {}
        _ => panic!(
            "grep failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once(':'))
        .map(|(f, m)| Hit {
            file: PathBuf::from(f),
            matched: m.to_string(),
        })
        .collect()
}

fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- the suite

#[test]
fn no_key_reaches_logs_dumps_wal_data_files_or_sidecar_output() {
    let started = Instant::now();
    let c = Cluster::start(ClusterOptions {
        extra_conf: LOG_EVERYTHING.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    let artifacts_dir = tempfile::Builder::new()
        .prefix("byok-leak-artifacts-")
        .tempdir()
        .unwrap();
    let artifacts = artifacts_dir.path().to_path_buf();
    fs::set_permissions(&artifacts, fs::Permissions::from_mode(0o755)).unwrap();
    let scratch = tempfile::tempdir().unwrap();

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

    // ---- 1. keys added through literals (simple protocol)
    let ws_lit = Uuid::new_v4();
    for vendor in ["anthropic", "openai", "openai-svcacct", "openai-legacy"] {
        let key = keys.mint(vendor, &format!("{vendor} key added as a literal"));
        let ws = Uuid::new_v4();
        let sql_vendor = if vendor.starts_with("openai") {
            "openai"
        } else {
            vendor
        };
        assert_eq!(add_literal(&mut db, ws, sql_vendor, &key), mask(&key));
    }
    // Mixed case vendor, whitespace around the key, inside a CTE.
    let k = keys.mint(
        "anthropic",
        "anthropic key pasted with whitespace, literal in a CTE",
    );
    simple(
        &mut db,
        &format!("WITH k AS (SELECT E'\\r\\n  {k}\\t' AS v) SELECT (byok.add_key('{ws_lit}', 'Anthropic', v)).masked FROM k"),
    )
    .unwrap();

    // ---- 2. keys added through bound parameters (extended protocol)
    let ws_bound = Uuid::new_v4();
    let mut sidecar_ids = Vec::new();
    for vendor in ["anthropic", "openai"] {
        let key = keys.mint(vendor, &format!("{vendor} key added as a bound parameter"));
        // The key also pasted into the label: the label is redacted.
        sidecar_ids.push(add_bound(
            &mut db,
            ws_bound,
            vendor,
            &key,
            Some(&format!("prod {key}")),
        ));
    }

    // ---- 3. statements that fail while holding a key
    let ws_err = Uuid::new_v4();
    for vendor in ["anthropic", "openai"] {
        let k = keys.mint(vendor, &format!("{vendor} key in failing statements"));
        // wrong argument type
        simple_fails(
            &mut db,
            &format!("SELECT byok.add_key('not-a-uuid', '{vendor}', '{k}')"),
            "22P02",
        );
        simple_fails(
            &mut db,
            &format!("SELECT byok.add_key(42, '{vendor}', '{k}')"),
            "42883",
        );
        bound_fails(
            &mut db,
            "SELECT byok.add_key($1::text::uuid, $2, $3)",
            &[&"nope", &vendor, &k],
            "22P02",
        );
        // the key itself cast to a wrong type: the message quotes the value
        simple_fails(&mut db, &format!("SELECT '{k}'::int"), "22P02");
        bound_fails(&mut db, "SELECT $1::text::int", &[&k], "22P02");
        // a bad vendor
        simple_fails(
            &mut db,
            &format!("SELECT byok.add_key('{ws_err}', 'gemini', '{k}')"),
            "22023",
        );
        bound_fails(
            &mut db,
            "SELECT byok.add_key($1, $2, $3)",
            &[&ws_err, &"gemini", &k],
            "22023",
        );
        // the other vendor's name
        let other = if vendor == "anthropic" {
            "openai"
        } else {
            "anthropic"
        };
        simple_fails(
            &mut db,
            &format!("SELECT byok.add_key('{ws_err}', '{other}', '{k}')"),
            "22023",
        );
        // division by zero in the same statement: folded at plan time, and at run time after add_key ran
        simple_fails(
            &mut db,
            &format!("SELECT byok.add_key('{ws_err}', '{vendor}', '{k}'), 1/0"),
            "22012",
        );
        simple_fails(
            &mut db,
            &format!(
                "SELECT 1/(count(*) - count(*)) FROM byok.add_key('{ws_err}', '{vendor}', '{k}')"
            ),
            "22012",
        );
        bound_fails(
            &mut db,
            "SELECT 1/(count(*) - $4::int) FROM byok.add_key($1, $2, $3)",
            &[&ws_err, &vendor, &k, &1i32],
            "22012",
        );
        // constraint violations whose DETAIL quotes the failing row
        simple_fails(
            &mut db,
            &format!("INSERT INTO app_secrets VALUES (1, '{k}')"),
            "23514",
        );
        bound_fails(
            &mut db,
            "INSERT INTO app_secrets VALUES ($1, $2)",
            &[&2i32, &k],
            "23514",
        );
        simple_fails(
            &mut db,
            &format!("INSERT INTO app_required VALUES ('{k}', NULL)"),
            "23502",
        );
        // syntax errors: the statement is all there is to log
        simple_fails(
            &mut db,
            &format!("SELECT byok.add_key('{ws_err}', '{vendor}', '{k}'"),
            "42601",
        );
        simple_fails(&mut db, &format!("SELECT '{k}"), "42601");
        // several statements in one simple query, the last one failing
        simple_fails(
            &mut db,
            &format!("SELECT 1; SELECT byok.add_key('{ws_err}', '{vendor}', '{k}'); SELECT 1/0"),
            "22012",
        );
        // a failed transaction: the key inside, then a statement that errors
        db.batch_execute("BEGIN").unwrap();
        simple(
            &mut db,
            &format!("SELECT byok.add_key('{ws_err}', '{vendor}', '{k}')"),
        )
        .unwrap();
        simple_fails(&mut db, "SELECT 1/0", "22012");
        simple_fails(&mut db, &format!("SELECT '{k}'"), "25P02");
        db.batch_execute("ROLLBACK").unwrap();
    }
    // Utility statements holding a key. pg_stat_statements stores these
    // verbatim (track_utility is on by default); pg_byok's ProcessUtility
    // hook hands it a same-length masked text.
    {
        let k = keys.mint("openai", "openai key in utility statements");
        let a = keys.mint("anthropic", "anthropic key in utility statements");
        db.batch_execute(
            "CREATE PROCEDURE leak_proc(k text) LANGUAGE plpgsql AS $$ BEGIN PERFORM length(k); END $$",
        )
        .unwrap();
        simple(
            &mut db,
            &format!(
                "DO $$ BEGIN PERFORM byok.add_key('{ws_err}', 'openai', '{k}'); RAISE EXCEPTION 'undo'; \
                 EXCEPTION WHEN raise_exception THEN NULL; END $$"
            ),
        )
        .unwrap();
        simple(&mut db, &format!("CALL leak_proc('{a}')")).unwrap();
        simple(
            &mut db,
            &format!("EXPLAIN (ANALYZE, VERBOSE) SELECT length('{k}')"),
        )
        .unwrap();
        let mut copied = String::new();
        db.copy_out(format!("COPY (SELECT length('{k}')) TO STDOUT").as_str())
            .unwrap()
            .read_to_string(&mut copied)
            .unwrap();
        assert_eq!(copied.trim(), k.len().to_string());
        simple(&mut db, &format!("SET myapp.note = 'vendor key {a}'")).unwrap();
        simple(&mut db, "RESET myapp.note").unwrap();
        simple(
            &mut db,
            &format!("CREATE TEMP TABLE leak_ctas AS SELECT length('{a}') AS n"),
        )
        .unwrap();
        simple(
            &mut db,
            &format!("BEGIN; DECLARE leak_cur CURSOR FOR SELECT length('{k}'); FETCH ALL FROM leak_cur; COMMIT"),
        )
        .unwrap();
        // A utility statement in the middle of a multi-statement string
        // (pg_stat_statements cuts it out by offset).
        simple(
            &mut db,
            &format!("SELECT 1; DO $$ BEGIN PERFORM length('{a}'); END $$; SELECT 2"),
        )
        .unwrap();
        simple(&mut db, &format!("PREPARE p_lit AS SELECT length('{k}')")).unwrap();
        assert_eq!(
            simple(&mut db, "EXECUTE p_lit").unwrap(),
            [k.len().to_string()]
        );
        let shown = simple(
            &mut db,
            "SELECT statement FROM pg_prepared_statements WHERE name = 'p_lit'",
        )
        .unwrap();
        assert!(
            !shown[0].contains(&k[30..50]),
            "pg_prepared_statements shows the key: {shown:?}"
        );
        simple(&mut db, "PREPARE p_arg(text) AS SELECT length($1)").unwrap();
        simple(&mut db, &format!("EXECUTE p_arg('{k}')")).unwrap();
        simple(&mut db, "DEALLOCATE ALL").unwrap();
        // A literal in the extended protocol's Parse, failing at parse time.
        match db.query(format!("SELECT '{k}'::int").as_str(), &[]) {
            Err(e) => assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("22P02")),
            Ok(_) => panic!("expected 22P02"),
        }
        // Errors raised inside a utility statement pass through the hook
        // untouched, also when PL/pgSQL catches them in a subtransaction.
        simple_fails(
            &mut db,
            &format!("DO $$ BEGIN RAISE EXCEPTION 'length %', length('{a}') USING ERRCODE = '22023'; END $$"),
            "22023",
        );
        let caught = simple(
            &mut db,
            &format!(
                "DO $$ BEGIN BEGIN EXECUTE 'DO $i$ BEGIN PERFORM 1/0, length(''{a}''); END $i$'; \
                 EXCEPTION WHEN division_by_zero THEN RAISE NOTICE 'caught'; END; END $$; SELECT 'still fine'"
            ),
        )
        .unwrap();
        assert_eq!(caught, ["still fine"]);
        // The utility statements were tracked (with their keys masked).
        let tracked: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_statements WHERE query LIKE 'DO $$ BEGIN PERFORM %' \
                 OR query LIKE 'CALL leak_proc(%' OR query LIKE 'COPY (SELECT length(%'",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(
            tracked >= 3,
            "pg_stat_statements tracked the utility statements ({tracked})"
        );
    }
    // admin keys are refused; they are secrets all the same
    for vendor in ["anthropic-admin", "openai-admin"] {
        let k = keys.mint(vendor, &format!("{vendor} key (refused)"));
        let v = if vendor.starts_with("openai") {
            "openai"
        } else {
            "anthropic"
        };
        simple_fails(
            &mut db,
            &format!("SELECT byok.add_key('{ws_err}', '{v}', '{k}')"),
            "22023",
        );
        bound_fails(
            &mut db,
            "SELECT byok.add_key($1, $2, $3)",
            &[&ws_err, &v, &k],
            "22023",
        );
    }
    assert_eq!(
        db.query_one(
            "SELECT count(*) FROM byok.keys WHERE workspace_id = $1",
            &[&ws_err]
        )
        .unwrap()
        .get::<_, i64>(0),
        0,
        "every failing statement rolled back"
    );

    // ---- 4. the sidecar's full validation cycle against the mock vendor
    let ws_side = Uuid::new_v4();
    for (vendor, marker) in [
        ("anthropic", None),
        ("openai", None),
        ("anthropic", Some("mockecho")),
        ("openai", Some("mockecho")),
        ("anthropic", Some("mock401")),
        ("openai", Some("mockquota")),
    ] {
        let key = match marker {
            Some(m) => keys.mint_marked(
                vendor,
                m,
                &format!("{vendor} key marked {m} for the sidecar"),
            ),
            None => keys.mint(vendor, &format!("{vendor} key for the sidecar")),
        };
        sidecar_ids.push(add_bound(&mut db, ws_side, vendor, &key, None));
    }
    let sidecar_output: Vec<u8> = match sidecar_bin() {
        Some(bin) => {
            eprintln!(
                "leak suite: running the sidecar {} against its mock vendor",
                bin.display()
            );
            let out = sidecar_cycle(&c, &bin, &sidecar_ids);
            assert!(
                out.len() > 200,
                "the sidecar printed almost nothing: {}",
                String::from_utf8_lossy(&out)
            );
            out
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: target/debug/byok-sidecar or byok-mock-vendor is missing (build them: cargo build -p byok-sidecar -p byok-mock-vendor)"
            );
            eprintln!(
                "leak suite: WARNING: no sidecar or mock vendor binary (cargo build -p byok-sidecar -p byok-mock-vendor); \
                 validating through claim_jobs/finish_job in SQL instead"
            );
            validate_by_sql(&c, "valid", true);
            Vec::new()
        }
    };
    fs::write(artifacts.join("sidecar-output.txt"), &sidecar_output).unwrap();
    for id in &sidecar_ids {
        let st = status_of(&mut db, *id);
        assert_ne!(st, "pending", "key {id} got no verdict");
    }
    // Everything else still pending (the literal keys) is validated the way
    // a careless worker would: echoing the key in the detail.
    validate_by_sql(&c, "valid", true);

    // ---- 5. rotate, use, revoke (both vendors)
    for vendor in ["anthropic", "openai"] {
        let ws = Uuid::new_v4();
        let k1 = keys.mint(vendor, &format!("{vendor} key before rotation"));
        let id1 = add_bound(&mut db, ws, vendor, &k1, None);
        validate_by_sql(&c, "valid", false);
        let k2 = keys.mint(vendor, &format!("{vendor} key after rotation (literal)"));
        add_literal(&mut db, ws, vendor, &k2);
        validate_by_sql(&c, "valid", false);
        assert_eq!(
            status_of(&mut db, id1),
            "revoked",
            "rotation supersedes the old key"
        );

        let mut backend = c.client_as("backend");
        let used: String = backend
            .query_one(
                "SELECT byok.use_key(workspace_id => $1, vendor => $2)",
                &[&ws, &vendor],
            )
            .unwrap()
            .get(0);
        assert_eq!(used, k2);
        simple(
            &mut backend,
            &format!("SELECT byok.use_key('{ws}', '{vendor}')"),
        )
        .unwrap();
        // The plaintext inside an error message and a warning, never typed by the client.
        simple_fails(
            &mut backend,
            &format!("SELECT byok.use_key('{ws}', '{vendor}')::int"),
            "22P02",
        );
        simple_fails(
            &mut backend,
            &format!("SELECT length(k) / 0 FROM byok.use_key('{ws}', '{vendor}') AS k"),
            "22012",
        );
        simple(
            &mut db,
            &format!(
                "DO $$ BEGIN RAISE WARNING 'using %', byok.use_key('{ws}', '{vendor}'); \
                 RAISE LOG 'detail test' USING DETAIL = byok.use_key('{ws}', '{vendor}'), \
                 HINT = byok.use_key('{ws}', '{vendor}'); END $$"
            ),
        )
        .unwrap();
        simple_fails(
            &mut db,
            &format!(
                "DO $$ BEGIN RAISE EXCEPTION 'boom %', byok.use_key('{ws}', '{vendor}') \
                 USING DETAIL = byok.use_key('{ws}', '{vendor}'); END $$"
            ),
            "P0001",
        );
        // A SQL function whose body fails on the key: CONTEXT quotes the body.
        simple(
            &mut db,
            &format!(
                "CREATE OR REPLACE FUNCTION pg_temp.check_len(k text) RETURNS int LANGUAGE plpgsql AS \
                 $f$ BEGIN RETURN k::int; END $f$"
            ),
        )
        .unwrap();
        simple_fails(
            &mut db,
            &format!("SELECT pg_temp.check_len(byok.use_key('{ws}', '{vendor}'))"),
            "22P02",
        );

        let rk: Uuid = db
            .query_one(
                "SELECT id FROM byok.keys WHERE workspace_id = $1 AND status = 'active'",
                &[&ws],
            )
            .unwrap()
            .get(0);
        db.query_one("SELECT byok.revalidate_key(key_id => $1)", &[&rk])
            .unwrap();
        validate_by_sql(&c, "valid", true);
        db.query_one(
            "SELECT byok.revoke_key(key_id => $1, reason => $2)",
            &[&rk, &format!("leaked? {k2}")],
        )
        .unwrap();
        let k3 = keys.mint(vendor, &format!("{vendor} key revoked with its workspace"));
        add_literal(&mut db, ws, vendor, &k3);
        db.query_one("SELECT byok.revoke_workspace(workspace_id => $1)", &[&ws])
            .unwrap();
        let live: i64 = db
            .query_one(
                "SELECT count(*) FROM byok.keys WHERE workspace_id = $1 AND status <> 'revoked'",
                &[&ws],
            )
            .unwrap()
            .get(0);
        assert_eq!(live, 0, "revoke_workspace revoked every key");
    }

    // ---- 6. pg_stat_activity: a literal key is visible while the session
    // shows that statement (documented; superusers and the same role only),
    // a bound one never is.
    {
        let mut s1 = c.client();
        let pid: i32 = s1.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let lit = keys.mint("anthropic", "anthropic key in pg_stat_activity (literal)");
        add_literal(&mut s1, Uuid::new_v4(), "anthropic", &lit);
        let q: String = db
            .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .unwrap()
            .get(0);
        assert!(
            q.contains(&lit),
            "the documented limitation holds: a literal shows in pg_stat_activity"
        );
        let mut tenant = c.client_as("tenant");
        let tq: Option<String> = tenant
            .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .unwrap()
            .get(0);
        assert!(
            !tq.unwrap_or_default().contains(&lit[20..40]),
            "another role cannot read it"
        );
        let bound = keys.mint("openai", "openai key in pg_stat_activity (bound)");
        add_bound(&mut s1, Uuid::new_v4(), "openai", &bound, None);
        let q: String = db
            .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .unwrap()
            .get(0);
        assert!(
            !q.contains(&bound[20..40]) && q.contains("$3"),
            "bound parameters stay out: {q}"
        );
        validate_by_sql(&c, "valid", false);
    }

    // ---- 7. the controls
    let ctl_table = sample_key("anthropic", keys.seed + 500);
    let ctl_log = sample_key("openai", keys.seed + 501);
    db.batch_execute("CREATE TABLE control_leak(t text)")
        .unwrap();
    db.execute("INSERT INTO control_leak VALUES ($1)", &[&ctl_table])
        .unwrap();
    simple(&mut db, "SET byok.redact_logs = off").unwrap();
    simple(&mut db, &format!("SELECT '{ctl_log}'")).unwrap();
    simple(&mut db, "RESET byok.redact_logs").unwrap();
    // A non-superuser cannot switch redaction off for itself.
    let mut tenant = c.client_as("tenant");
    simple_fails(&mut tenant, "SET byok.redact_logs = off", "42501");
    drop(tenant);

    // ---- 8. collect: pg_stat_statements, dumps, then a clean shutdown
    let pgss: Vec<String> = db
        .query("SELECT query FROM pg_stat_statements", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert!(
        pgss.iter().any(|q| q.contains("byok.add_key")),
        "pg_stat_statements tracked the adds"
    );
    fs::write(artifacts.join("pg_stat_statements.txt"), pgss.join("\n")).unwrap();

    let conn = conn_args(&c);
    let plain = run_pg_tool(
        "pg_dump plain",
        Command::new(pg_bin("pg_dump"))
            .args(&conn)
            .args(["-d", "byok"]),
    );
    fs::write(artifacts.join("pg_dump.sql"), &plain).unwrap();
    let raw_custom = run_pg_tool(
        "pg_dump custom -Z0",
        Command::new(pg_bin("pg_dump"))
            .args(&conn)
            .args(["-d", "byok", "-Fc", "-Z0"]),
    );
    fs::write(artifacts.join("pg_dump-z0.custom"), &raw_custom).unwrap();
    let custom = run_pg_tool(
        "pg_dump custom",
        Command::new(pg_bin("pg_dump"))
            .args(&conn)
            .args(["-d", "byok", "-Fc"]),
    );
    let custom_path = artifacts.join("pg_dump.custom");
    fs::write(&custom_path, &custom).unwrap();
    fs::set_permissions(&custom_path, fs::Permissions::from_mode(0o644)).unwrap();
    let restored = run_pg_tool(
        "pg_restore",
        Command::new(pg_bin("pg_restore"))
            .args(["-f", "-"])
            .arg(&custom_path),
    );
    fs::write(artifacts.join("pg_restore-of-custom.sql"), &restored).unwrap();
    let all = run_pg_tool("pg_dumpall", Command::new(pg_bin("pg_dumpall")).args(&conn));
    fs::write(artifacts.join("pg_dumpall.sql"), &all).unwrap();

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
    c.stop(); // clean shutdown: pg_stat_statements writes its file, a shutdown checkpoint runs

    // pg_waldump of every WAL segment
    let wal_dir = c.data_dir().join("pg_wal");
    let segments = files_with(&wal_dir, |n| {
        n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
    });
    assert!(
        !segments.is_empty(),
        "no WAL segment in {}",
        wal_dir.display()
    );
    let mut records = 0;
    for seg in &segments {
        let out = Cluster::run_as_postgres(Command::new(pg_bin("pg_waldump")).arg(seg));
        // The last (and any recycled) segment ends in an invalid record: pg_waldump
        // then exits non-zero after printing what it read.
        records += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("rmgr:"))
            .count();
        let name = seg.file_name().unwrap().to_string_lossy().into_owned();
        let mut text = out.stdout.clone();
        text.extend_from_slice(&out.stderr);
        fs::write(artifacts.join(format!("pg_waldump-{name}.txt")), text).unwrap();
    }
    assert!(records > 100, "pg_waldump decoded only {records} records");

    // ---- 9. search
    let logs = files_with(&log_dir, |n| {
        n.ends_with(".log") || n.ends_with(".csv") || n.ends_with(".json")
    });
    for ext in ["log", "csv", "json"] {
        assert!(
            logs.iter()
                .any(|f| f.extension().is_some_and(|e| e == ext)
                    && fs::metadata(f).unwrap().len() > 0),
            "no .{ext} server log in {}",
            log_dir.display()
        );
    }
    let controls = [
        Secret {
            what: "control: planted in an ordinary table".into(),
            key: ctl_table.clone(),
        },
        Secret {
            what: "control: logged with byok.redact_logs = off".into(),
            key: ctl_log.clone(),
        },
    ];
    let mut needle_owner: BTreeMap<String, (bool, Secret)> = BTreeMap::new();
    for s in &keys.protected {
        for n in s.needles() {
            needle_owner.insert(n, (true, s.clone()));
        }
    }
    for s in &controls {
        for n in s.needles() {
            needle_owner.insert(n, (false, s.clone()));
        }
    }
    let needles: Vec<String> = needle_owner.keys().cloned().collect();
    let hits = search(&[c.dir(), &artifacts], &needles, scratch.path());

    let mut leaks = std::collections::BTreeSet::new();
    let mut control_found: BTreeMap<(&str, String), bool> = BTreeMap::new();
    for h in &hits {
        // grep -o prints the longest match; map it back to its secret.
        let owner = needle_owner.get(&h.matched).or_else(|| {
            needle_owner
                .iter()
                .find(|(n, _)| h.matched.contains(n.as_str()))
                .map(|(_, o)| o)
        });
        let Some((protected, secret)) = owner else {
            continue;
        };
        if *protected {
            leaks.insert(format!(
                "{} — {:?} found in {}",
                secret.what,
                h.matched,
                h.file.display()
            ));
        } else {
            let where_ = classify(&h.file, c.data_dir(), &artifacts);
            control_found.insert(
                (
                    if secret.key == ctl_table {
                        "table"
                    } else {
                        "log"
                    },
                    where_,
                ),
                true,
            );
        }
    }
    let mut missing = Vec::new();
    for place in [
        "pg_dump plain",
        "pg_dump custom -Z0",
        "pg_restore of pg_dump custom",
        "WAL segment",
        "data file",
    ] {
        if !control_found.contains_key(&("table", place.to_string())) {
            missing.push(format!(
                "the control key planted in a table was NOT found in: {place}"
            ));
        }
    }
    for place in ["stderr log", "csv log", "json log"] {
        if !control_found.contains_key(&("log", place.to_string())) {
            missing.push(format!(
                "the control key logged with redaction off was NOT found in: {place}"
            ));
        }
    }
    // The harness's own search must agree on the planted control.
    if grep_dir(&c.data_dir().join("base"), ctl_table.as_bytes()).is_empty() {
        missing.push("grep_dir did not find the planted control key in data/base".into());
    }
    // The hook wrote the lines (masked), it did not drop them.
    let stderr_logs: String = logs
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
        .map(|f| String::from_utf8_lossy(&fs::read(f).unwrap()).into_owned())
        .collect();
    let first = &keys.protected[0].key;
    if !stderr_logs.contains(&mask(first)) {
        missing.push(format!(
            "the masked form {} of the first key is not in the stderr log",
            mask(first)
        ));
    }
    if !stderr_logs.contains("STATEMENT (redacted):") {
        missing.push("no redacted STATEMENT was logged".into());
    }
    eprintln!(
        "leak suite: {} protected keys ({} needles) searched in {} log files, {} WAL segments, the data \
         directory, pg_stat_statements, 4 dumps and the sidecar output in {:.1?}",
        keys.protected.len(),
        needles.len(),
        logs.len(),
        segments.len(),
        started.elapsed()
    );
    if !missing.is_empty() || !leaks.is_empty() {
        if std::env::var_os("BYOK_KEEP_CLUSTER").is_some() {
            let kept = artifacts_dir.keep();
            eprintln!("artifacts kept in {}", kept.display());
        }
        panic!(
            "\nTHE SEARCH IS NOT PROVEN TO WORK:\n  {}\n\nLEAKS:\n  {}\n",
            if missing.is_empty() {
                "(controls all found)".to_string()
            } else {
                missing.join("\n  ")
            },
            if leaks.is_empty() {
                "(none)".to_string()
            } else {
                leaks.into_iter().collect::<Vec<_>>().join("\n  ")
            }
        );
    }
}

/// Which kind of place a hit is in.
fn classify(file: &Path, data: &Path, artifacts: &Path) -> String {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Ok(rel) = file.strip_prefix(artifacts) {
        let r = rel.to_string_lossy();
        return match r.as_ref() {
            "pg_dump.sql" => "pg_dump plain",
            "pg_dump-z0.custom" => "pg_dump custom -Z0",
            "pg_restore-of-custom.sql" => "pg_restore of pg_dump custom",
            "pg_dumpall.sql" => "pg_dumpall",
            _ => "other artifact",
        }
        .to_string();
    }
    if let Ok(rel) = file.strip_prefix(data) {
        let r = rel.to_string_lossy();
        if r.starts_with("pg_wal/") {
            return "WAL segment".into();
        }
        if r.starts_with("log/") {
            return match file.extension().and_then(|e| e.to_str()) {
                Some("log") => "stderr log",
                Some("csv") => "csv log",
                Some("json") => "json log",
                _ => "other log",
            }
            .into();
        }
        if r.starts_with("base/") || r.starts_with("global/") {
            return "data file".into();
        }
        return format!("data directory: {r}");
    }
    format!("cluster directory: {name}")
}

/// A key broken by whitespace (a wrapped copy-paste) is refused by add_key,
/// and both halves must still be masked in the log: the part after the
/// break does not start with `sk-` (byok-core masks long bare stretches and
/// stretches right after a masked one).
#[test]
fn key_broken_by_whitespace_is_masked_whole() {
    let c = Cluster::start(ClusterOptions {
        extra_conf: vec![
            "log_statement = 'all'".into(),
            "log_min_error_statement = error".into(),
        ],
        ..Default::default()
    });
    let mut db = c.client();
    let k = sample_key("openai", rand::random::<u32>() as u64);
    let (a, b) = k.split_at(k.len() / 2);
    for sep in [" ", "\\n"] {
        simple_fails(
            &mut db,
            &format!(
                "SELECT byok.add_key('{}', 'openai', E'{a}{sep}{b}')",
                Uuid::new_v4()
            ),
            "22023",
        );
    }
    db.batch_execute("SELECT 'flush'").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = c.server_log();
    let tail = &b[b.len() - 24..b.len() - 4];
    assert!(
        !log.contains(tail),
        "the second half of a whitespace-broken key reached the log"
    );
}
